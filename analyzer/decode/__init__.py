"""Record decoders: Fluent Bit JSON, CRI, docker json-file and plain lines; Istio/Envoy line fields."""

from analyzer.decode.detect import Decoder, Format
from analyzer.decode.fields import LineFields, parse_line_fields
from analyzer.decode.fluentbit import record_from_mapping
from analyzer.decode.timeparse import parse_time

__all__ = ["Decoder", "Format", "LineFields", "parse_line_fields", "parse_time", "record_from_mapping"]
