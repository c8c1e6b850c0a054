from __future__ import annotations

import orjson
import pytest

from analyzer.decode import Decoder, Format
from analyzer.decode.events import record_from_row
from analyzer.types import LogRecord, Rejected

ALL_FORMATS = list(Format)


def record(value: LogRecord | Rejected | None) -> LogRecord:
    assert isinstance(value, LogRecord), value
    return value


def rejected(value: LogRecord | Rejected | None) -> str:
    assert isinstance(value, Rejected), value
    return value.reason


def test_format_values() -> None:
    assert [f.value for f in Format] == ["auto", "plain", "cri", "docker", "fluentbit"]
    assert Decoder("cri").format is Format.CRI


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("raw", [b"", b" ", b"\t \r", b"\r", b"\n"])
def test_empty(fmt: Format, raw: bytes) -> None:
    assert rejected(Decoder(fmt)(raw)) == "empty"


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_too_large(fmt: Format) -> None:
    decode = Decoder(fmt, max_line_bytes=64)
    assert rejected(decode(b"x" * 65)) == "too-large"
    assert rejected(decode(b'{"log":"' + b"x" * 60 + b'"}')) == "too-large"


def test_five_megabyte_lines() -> None:
    big = b"2021-04-02T07:57:13.179374Z\terror\tads\t" + b"\xff\x00 connection refused " * 250_000
    assert len(big) > 5_000_000
    assert rejected(Decoder()(big)) == "too-large"  # default limit 1 MiB
    for fmt in (Format.AUTO, Format.PLAIN, Format.CRI):
        rec = record(Decoder(fmt, max_line_bytes=8 << 20)(big))
        assert rec.line == big
        assert (rec.level, rec.scope) == ("error", "ads")
    rec = record(Decoder(max_line_bytes=8 << 20)(b"2021-04-02T07:57:13.179374912Z stdout F " + big))
    assert rec.line == big


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.PLAIN, Format.CRI])
@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe invalid utf-8 \xc3\x28",
        b"nul \x00 inside\x00",
        b"\x00",
        b"{\xff not json",
        b'{"log": "unterminated',
        b'[2020-11-25T21:26:18.409Z] "GET /\xff HTTP/1.1" 503 UH',
        b"2021-04-02T07:57:13.179374Z\tinfo\t\xff\xfe\tmsg",
        b"\x1b[31mcolour\x1b[0m",
    ],
)
def test_plain_bytes_are_kept(fmt: Format, raw: bytes) -> None:
    assert record(Decoder(fmt)(raw)).line == raw


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.PLAIN, Format.CRI])
def test_crlf(fmt: Format) -> None:
    decode = Decoder(fmt)
    rec = record(decode(b"2019-09-28T15:47:21.548349Z\tinfo\tEnvoy proxy is ready\r"))
    assert rec.line == b"2019-09-28T15:47:21.548349Z\tinfo\tEnvoy proxy is ready"
    assert rec.level == "info"
    assert record(decode(b"a\r\r")).line == b"a\r"  # only one CR (the file's line end) goes


def test_auto_plain_json_lines_keep_their_text(corpus_lines: list[str]) -> None:
    # Istio --log_as_json lines and Envoy JSON access logs are log lines, not envelopes.
    json_lines = [line for line in corpus_lines if line.startswith("{") and '"log"' not in line]
    assert len(json_lines) >= 6
    for line in json_lines:
        rec = record(Decoder()(line.encode()))
        assert rec.line == line.encode()
        assert rec.stream is None and rec.pod is None


def test_auto_every_corpus_line(corpus: list[dict[str, str]]) -> None:
    # Plain lines stay as they are, except the runtime-prefixed ones (CRI, kubectl --timestamps).
    decode = Decoder()
    for entry in corpus:
        line, category = entry["line"], entry["category"]
        got = decode(line.encode())
        if category == "cri-log-line":
            assert got is None or record(got).line == line.split(" ", 3)[3].encode()
        elif line.startswith("2020-11-22T") and line[30] == " ":  # kubectl logs --timestamps (#29109)
            assert record(got).line == line[31:].encode()
        elif category.startswith("docker-json-file"):
            assert record(got).line == orjson.loads(line)["log"].rstrip("\n").encode()
        elif record_from_row(line.encode()) is not None:  # a pasted kubectl events row: canonical event text
            event_type, _, _, message = record(got).text.split("\t", 3)
            assert event_type in ("Warning", "Normal") and line.endswith(message), category
        else:
            assert record(got).line == line.encode(), category
    decode.flush()


@pytest.mark.parametrize("fmt", [Format.PLAIN])
def test_explicit_plain_keeps_every_corpus_line(fmt: Format, corpus_lines: list[str]) -> None:
    decode = Decoder(fmt)
    for line in corpus_lines:
        assert record(decode(line.encode())).line == line.encode()


@pytest.mark.parametrize(
    ("raw", "line", "stream", "pod"),
    [
        (b'{"log":"a\\n","stream":"stdout","time":"2020-08-12T07:14:40.750523315Z"}', b"a", "stdout", None),
        (b'{"log":"a","kubernetes":{"pod_name":"p"}}', b"a", None, "p"),
        (b'{"message":"a","logtag":"F","stream":"stderr"}', b"a", "stderr", None),
        (b'{"msg":"a","level":"info"}', b'{"msg":"a","level":"info"}', None, None),
        (b'{"log":5,"msg":"a"}', b'{"log":5,"msg":"a"}', None, None),
        (b"[1,2]", b"[1,2]", None, None),
        (b'{"a":', b'{"a":', None, None),
    ],
)
def test_auto_detection(raw: bytes, line: bytes, stream: str | None, pod: str | None) -> None:
    rec = record(Decoder()(raw))
    assert (rec.line, rec.stream, rec.pod) == (line, stream, pod)


def test_auto_envelope_and_json_lines_get_fields() -> None:
    rec = record(Decoder()(b'{"level":"warn","time":"2023-03-08T18:08:49.264118Z","scope":"ca","msg":"retry"}'))
    assert (rec.level, rec.scope) == ("warn", "ca")
    assert rec.time == pytest.approx(1678298929.264118, abs=1e-6)


def test_envelope_time_fallback_with_absurd_line_time() -> None:
    rec = record(Decoder()(b"2016-10-06T00:17:09.669794202Z stdout F 1970-01-01T00:00:00.000000Z\terror\tx\ty"))
    assert rec.time == pytest.approx(1475713029.669794202, abs=1e-6)
    assert rec.level == "error"
    rec = record(Decoder()(b"1970-01-01T00:00:00.000000Z stdout F 1970-01-01T00:00:00.000000Z\terror\tx\ty"))
    assert rec.time is None


def test_explicit_envelope_formats_do_not_guess() -> None:
    line = b"2019-09-28T15:47:21.548349Z\tinfo\tEnvoy proxy is ready"
    assert rejected(Decoder(Format.FLUENTBIT)(line)) == "invalid-json"
    assert rejected(Decoder(Format.DOCKER)(line)) == "invalid-json"
    assert rejected(Decoder(Format.FLUENTBIT)(b'{"log":"x"} trailing')) == "invalid-json"


def test_never_raises_on_odd_input() -> None:
    samples = [
        bytes(range(256)),
        b"{" * 10_000,
        b"[" * 10_000,
        b"2" * 10_000,
        b'{"log":"' + b"\\" * 9_999 + b'"}',
        b"2016-10-06T00:17:09.669794202Z stdout P " + b"\x00" * 100,
        b"2016-10-06T00:17:09.669794202Z ",
        b"2016-10-06T00:17:09.669794202Z stdout",
        b"2016-10-06T00:17:09.669794202Z stdout ",
    ]
    for fmt in ALL_FORMATS:
        decode = Decoder(fmt)
        for raw in samples:
            got = decode(raw)
            assert got is None or isinstance(got, LogRecord | Rejected)
        assert all(isinstance(r, LogRecord) for r in decode.flush())
