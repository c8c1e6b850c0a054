from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import pytest

from analyzer.decode import Decoder, Format
from analyzer.types import LogRecord, Rejected

# reference §3.2, quoted from istio/istio#26413 byte for byte (TABs JSON-escaped as \u0009)
DOCKER_LINE = (
    rb'{"log":"2020-08-12T07:14:40.750383Z\u0009error\u0009citadelclient\u0009Failed to create certificate:'
    rb' rpc error: code = Unauthenticated desc= request authenticate failure\n","stream":"stdout",'
    rb'"time":"2020-08-12T07:14:40.750523315Z"}'
)
TIME = "2019-05-29T15:32:47.807691662Z"


def utc(text: str) -> float:
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp() + (float(f"0.{frac}") if frac else 0.0)


def record(value: LogRecord | Rejected | None) -> LogRecord:
    assert isinstance(value, LogRecord), value
    return value


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.DOCKER])
def test_escaped_tabs(fmt: Format) -> None:
    rec = record(Decoder(fmt)(DOCKER_LINE))
    assert rec.line == (
        b"2020-08-12T07:14:40.750383Z\terror\tcitadelclient\tFailed to create certificate:"
        b" rpc error: code = Unauthenticated desc= request authenticate failure"
    )
    assert (rec.stream, rec.level, rec.scope) == ("stdout", "error", "citadelclient")
    assert rec.time == pytest.approx(utc("2020-08-12T07:14:40.750383Z"), abs=1e-6)  # the line's, not docker's


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.DOCKER])
def test_corpus_docker_line(fmt: Format, corpus_line: Callable[[str], str]) -> None:
    rec = record(Decoder(fmt)(corpus_line('{"log":"[2019-05-29 15:32:47.807]').encode()))
    assert rec.line == (
        b"[2019-05-29 15:32:47.807][182][debug][http] [external/envoy/source/common/http/async_client_impl.cc:94]"
        b" async http request response headers (end_stream=false):"
    )
    assert (rec.stream, rec.level, rec.scope) == ("stderr", "debug", "envoy http")


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.DOCKER])
def test_every_corpus_line_in_a_docker_envelope(fmt: Format, corpus_lines: list[str]) -> None:
    decode = Decoder(fmt)
    plain = Decoder(Format.PLAIN)
    for line in corpus_lines:
        raw = orjson.dumps({"log": line + "\n", "stream": "stderr", "time": TIME})
        rec = record(decode(raw))
        assert rec.line == line.encode()
        assert rec.stream == "stderr"
        own = record(plain(line.encode()))
        assert (rec.level, rec.scope) == (own.level, own.scope)
        assert rec.time == (own.time if own.time is not None else pytest.approx(utc(TIME), abs=1e-6))


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.DOCKER])
def test_split_long_line_each_object_is_a_record(fmt: Format) -> None:
    # Docker splits lines over 16 KiB into several objects; only the last carries the newline.
    line = "2021-04-02T07:57:13.179374Z\tinfo\tads\tCDS: PUSH " + "é\t" * 20_000 + "end"
    pieces = [line[i : i + 16384] for i in range(0, len(line), 16384)]
    assert len(pieces) == 3
    decode = Decoder(fmt)
    records = []
    for i, piece in enumerate(pieces):
        text = piece + ("\n" if i == len(pieces) - 1 else "")
        records.append(record(decode(orjson.dumps({"log": text, "stream": "stdout", "time": TIME}))))
    assert [r.line for r in records] == [p.encode() for p in pieces]
    assert b"".join(r.line for r in records) == line.encode()
    assert (records[0].level, records[0].scope) == ("info", "ads")
    assert records[1].time == pytest.approx(utc(TIME), abs=1e-6)
    assert decode.flush() == []


def test_crlf_and_escapes() -> None:
    decode = Decoder(Format.DOCKER)
    raw = rb'{"log":"a\"b\\c\u0000d\u00e9\ud83d\ude00\r\n","stream":"stdout","time":"' + TIME.encode() + b'"}'
    assert record(decode(raw)).line == 'a"b\\c\x00dé😀'.encode()
    raw = rb'{"log":"only one newline is stripped\n\n","stream":"stdout","time":"' + TIME.encode() + b'"}'
    assert record(decode(raw)).line == b"only one newline is stripped\n"


def test_docker_shape_is_only_log_stream_time() -> None:
    # With AUTO, more keys than log/stream/time make it a Fluent Bit record (its metadata is read).
    raw = orjson.dumps({"log": "x\n", "stream": "stdout", "time": TIME, "kubernetes": {"pod_name": "p"}})
    rec = record(Decoder()(raw))
    assert (rec.line, rec.pod, rec.stream) == (b"x", "p", "stdout")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"log":"x","stream":"stdout"', "invalid-json"),
        (b'{"log":"\xff\xfe","stream":"stdout"}', "invalid-utf8"),
        (b'["log"]', "not-an-object"),
        (b"42", "not-an-object"),
        (b'{"stream":"stdout","time":"2019-05-29T15:32:47.807691662Z"}', "missing-log"),
        (b'{"log":null}', "missing-log"),
        (b'{"message":"classic cri parser key is not docker"}', "missing-log"),
    ],
)
def test_rejections(raw: bytes, reason: str) -> None:
    got = Decoder(Format.DOCKER)(raw)
    assert isinstance(got, Rejected) and got.reason == reason
