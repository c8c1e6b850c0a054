from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from analyzer.decode import Decoder, Format
from analyzer.types import LogRecord, Rejected

T1 = "2016-10-06T00:17:09.669794202Z"
T2 = "2016-10-06T00:17:09.669794203Z"
T3 = "2016-10-06T00:17:10.000000001Z"


def utc(text: str) -> float:
    """Oracle for RFC3339 with up to 9 fractional digits (datetime keeps 6; the rest is added back)."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp() + (float(f"0.{frac}") if frac else 0.0)


def record(value: LogRecord | Rejected | None) -> LogRecord:
    assert isinstance(value, LogRecord), value
    return value


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.CRI])
def test_kubelet_documented_lines(fmt: Format) -> None:
    decode = Decoder(fmt)
    assert decode(f"{T1} stdout P log content 1".encode()) is None
    rec = record(decode(f"{T2} stderr F log content 2".encode()))
    assert (rec.line, rec.stream) == (b"log content 2", "stderr")
    assert rec.time == pytest.approx(utc(T2), abs=1e-6)
    assert [(r.line, r.stream) for r in decode.flush()] == [(b"log content 1", "stdout")]
    assert decode.flush() == []


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.CRI])
def test_every_corpus_line_in_a_cri_envelope(fmt: Format, corpus_lines: list[str]) -> None:
    decode = Decoder(fmt)
    plain = Decoder(Format.PLAIN)
    for line in corpus_lines:
        rec = record(decode(f"{T1} stdout F {line}".encode()))
        assert rec.line == line.encode()
        assert rec.stream == "stdout"
        own = record(plain(line.encode()))
        assert (rec.level, rec.scope) == (own.level, own.scope)
        assert rec.time == (own.time if own.time is not None else pytest.approx(utc(T1), abs=1e-6))


def test_partials_join_per_stream_interleaved() -> None:
    istio = "2021-04-02T07:57:13.179374Z\tinfo\tads\tCDS: PUSH "
    decode = Decoder()
    assert decode(f"{T1} stdout P {istio}".encode()) is None
    assert decode(f"{T1} stderr P x ".encode()) is None
    assert decode(f"{T2} stdout P for node:a ".encode()) is None
    err = record(decode(f"{T2} stderr F y".encode()))
    assert (err.line, err.stream) == (b"x y", "stderr")
    assert err.time == pytest.approx(utc(T1), abs=1e-6)  # the time of the first chunk
    out = record(decode(f"{T3} stdout F resources:23".encode()))
    assert out.line == (istio + "for node:a resources:23").encode()
    assert (out.stream, out.level, out.scope) == ("stdout", "info", "ads")
    assert out.time == pytest.approx(utc("2021-04-02T07:57:13.179374Z"), abs=1e-6)  # the line's own time
    assert decode.flush() == []


def test_flush_returns_unfinished_partials_per_stream() -> None:
    decode = Decoder(Format.CRI)
    for raw in (f"{T1} stdout P a", f"{T1} stderr P r", f"{T2} stdout P b"):
        assert decode(raw.encode()) is None
    flushed = decode.flush()
    assert sorted((r.stream, r.line) for r in flushed) == [("stderr", b"r"), ("stdout", b"ab")]
    assert all(r.time == pytest.approx(utc(T1), abs=1e-6) for r in flushed)
    assert decode.flush() == []
    # after a flush a new line starts from scratch
    assert record(decode(f"{T3} stdout F c".encode())).line == b"c"


def test_cri_o_offset_timestamps(corpus_line: Callable[[str], str]) -> None:
    raw = corpus_line("2021-06-19T15:28:18.485439385+07:00 stdout F ")
    rec = record(Decoder()(raw.encode()))
    assert (
        rec.line == b"2021-06-19 15:28:18,485 [main] INFO  o.a.k.c.admin.AdminClientConfig - AdminClientConfig values: "
    )
    # the message's own zone-less time is not trusted; the runtime's offset time is used
    expected = datetime(2021, 6, 19, 8, 28, 18, tzinfo=UTC).timestamp() + 0.485439385
    assert rec.time == pytest.approx(expected, abs=1e-6)


def test_corpus_partial_line(corpus_line: Callable[[str], str]) -> None:
    decode = Decoder()
    assert decode(corpus_line("2019-05-07T18:57:50.904275087+00:00 stdout P ").encode()) is None
    rec = record(decode(b"2019-05-07T18:57:50.904275088+00:00 stdout F 1b. more"))
    assert rec.line == b"1a. some 1b. more"


def test_tags_with_flags_and_empty_messages() -> None:
    decode = Decoder()
    assert decode(f"{T1} stdout P:x a".encode()) is None
    assert record(decode(f"{T1} stdout F:x b".encode())).line == b"ab"
    assert record(decode(f"{T1} stdout F".encode())).line == b""
    assert record(decode(f"{T1} stdout F ".encode())).line == b""


def test_crlf_and_tabs_inside_the_message() -> None:
    rec = record(Decoder()(f"{T1} stdout F 2021-07-15T18:53:14.067992Z\twarning\tenvoy config\tclosed\r".encode()))
    assert rec.line == b"2021-07-15T18:53:14.067992Z\twarning\tenvoy config\tclosed"
    assert (rec.level, rec.scope) == ("warn", "envoy config")


def test_oversized_partial_line_is_rejected_once_and_forgotten() -> None:
    decode = Decoder(Format.CRI, max_line_bytes=100)
    chunk = "x" * 60
    assert decode(f"{T1} stdout P {chunk}".encode()) is None
    assert decode(f"{T1} stdout P {chunk}".encode()) is None
    assert decode(f"{T1} stderr F ok".encode()) == record(decode(f"{T1} stderr F ok".encode()))
    rejected = decode(f"{T1} stdout F end".encode())
    assert isinstance(rejected, Rejected) and rejected.reason == "too-large"
    assert record(decode(f"{T1} stdout F next".encode())).line == b"next"
    assert decode.flush() == []


@pytest.mark.parametrize(
    ("raw", "auto_line"),
    [
        ("2016-10-06 00:17:09.669794202Z stdout F space instead of T", None),
        ("2016-10-06T00:17:09.669794202 stdout F no zone", None),
        ("2016-10-06T00:17:09Z\tstdout F tab", None),
        # not CRI, but the `kubectl logs --timestamps` shape: AUTO strips the prefix
        ("2016-10-06T00:17:09.669794202Z stdin F not a stream", "stdin F not a stream"),
        ("2016-10-06T00:17:09.669794202Z stdout  empty tag", "stdout  empty tag"),
    ],
)
def test_near_misses(raw: str, auto_line: str | None) -> None:
    rec = record(Decoder(Format.CRI)(raw.encode()))
    assert rec.line == raw.encode() and rec.stream is None
    rec = record(Decoder(Format.AUTO)(raw.encode()))
    assert rec.line == (auto_line or raw).encode() and rec.stream is None


def test_kubectl_timestamps(corpus_line: Callable[[str], str]) -> None:
    raw = corpus_line("2020-11-22T20:04:54.223002528Z [2020-11-22T20:04:32.765Z]")
    rec = record(Decoder()(raw.encode()))
    assert rec.line == raw.encode()[len("2020-11-22T20:04:54.223002528Z ") :]
    assert rec.scope == "access"
    assert rec.time == pytest.approx(utc("2020-11-22T20:04:32.765Z"), abs=1e-6)
    raw = corpus_line("2020-11-22T19:32:17.857583542Z 2020-11-22T19:32:17.857430Z\tinfo")
    rec = record(Decoder()(raw.encode()))
    assert rec.line == b'2020-11-22T19:32:17.857430Z\tinfo\tFLAG: --concurrency="2"'
    assert rec.level == "info"
    # the prefix time is the envelope time when the line has none of its own
    rec = record(Decoder()(b"2020-11-22T20:04:54.223002528Z iptables: Chain already exists."))
    assert rec.line == b"iptables: Chain already exists."
    assert rec.time == pytest.approx(utc("2020-11-22T20:04:54.223002528Z"), abs=1e-6)
    # explicit plain keeps the prefix
    assert record(Decoder(Format.PLAIN)(raw.encode())).line == raw.encode()


def test_zap_line_with_one_space_is_not_a_kubectl_prefix(corpus_line: Callable[[str], str]) -> None:
    raw = corpus_line("2018-09-14T19:02:31.916960Z info    model")
    rec = record(Decoder()(raw.encode()))
    assert rec.line == raw.encode()
    assert (rec.level, rec.scope) == ("info", "model")
