from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from analyzer.decode import LineFields, parse_line_fields

LEVELS = {None, "debug", "info", "warn", "error", "fatal"}


def utc(text: str) -> float:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


# Written by hand from reference/istio_log_formats.md §1-2: (corpus line prefix, time, level, scope).
# Lines with tabs pasted as spaces keep their scope only when a wide gap follows it (§1.1).
EXPECTED: list[tuple[str, str | None, str | None, str | None]] = [
    ("2021-04-02T07:57:13.179374Z\tinfo\tads\tCDS", "2021-04-02T07:57:13.179374Z", "info", "ads"),
    ("2019-09-28T15:47:21.548349Z\tinfo\tEnvoy proxy is ready", "2019-09-28T15:47:21.548349Z", "info", None),
    ("2021-05-12T13:02:56.308675Z     error   xdsproxy ", "2021-05-12T13:02:56.308675Z", "error", "xdsproxy"),
    ("2021-05-12T13:02:56.308949Z     warning envoy config ", "2021-05-12T13:02:56.308949Z", "warn", "envoy config"),
    ("2021-10-26T15:20:05.983310Z\twarning\tenvoy config\t", "2021-10-26T15:20:05.983310Z", "warn", "envoy config"),
    ('{"level":"error","time":"2023-03-05T16:33:05.966311Z"', "2023-03-05T16:33:05.966311Z", "error", "klog"),
    ('{"time":"2025-10-30T15:37:29.343092Z","level":"trace"', "2025-10-30T15:37:29.343092Z", "debug", "envoy misc"),
    ('{"level":"info","time":"2023-05-10T17:43:55.356647Z"', "2023-05-10T17:43:55.356647Z", "info", None),
    (
        "[2019-07-19 16:14:31.920][36][warning][config] [bazel-out/k8-opt/bin/external/envoy/source/common/config/"
        "_virtual_includes/grpc_stream_lib/common/config/grpc_stream.h:86]",
        "2019-07-19 16:14:31.920",
        "warn",
        "envoy config",
    ),
    ("[Envoy (Epoch 0)] [2020-03-06 16:49:26.908]", "2020-03-06 16:49:26.908", "warn", "envoy config"),
    ('[2020-11-25T21:26:18.409Z] "GET /status/418', "2020-11-25T21:26:18.409Z", None, "access"),
    ('[2021-03-26T00:01:25.979Z] "GET /.env', "2021-03-26T00:01:25.979Z", None, "access"),
    ('{"path":"/","response_code":503', "2022-12-15T03:49:38.504Z", None, "access"),
    ('{"bytes_sent":"31"', "2019-11-19T03:27:35.402Z", None, "access"),
    ("E0506 16:00:34.429026", None, "error", None),
    ("W0420 10:11:30.838973", None, "warn", None),
    ("2026-06-04T07:03:51Z    ERROR   controller-runtime", "2026-06-04T07:03:51Z", "error", None),
    ("istio-validation 2025-01-20T15:31:22.062880Z", "2025-01-20T15:31:22.062880Z", "error", None),
    ("istio-cni-node-tf8bz 2024-11-10T13:54:13.762966Z", "2024-11-10T13:54:13.762966Z", "error", "cni-agent"),
    ("2020-08-11T04:09:52.229323Z\tdebug\tenvoy pool\t", "2020-08-11T04:09:52.229323Z", "debug", "envoy pool"),
    (
        "2026-01-01T00:00:00.000000Z\twarning\tenvoy config external/",
        "2026-01-01T00:00:00.000000Z",
        "warn",
        "envoy config",
    ),
    ("2022-01-03T13:27:29.428368Z     error   klog    k8s.io", "2022-01-03T13:27:29.428368Z", "error", "klog"),
    ("2019-12-10T00:45:02.327604Z     error   k8s.io/client-go", "2019-12-10T00:45:02.327604Z", "error", None),
    ("2021-07-12T19:57:33.687386Z     error   validation timeout", "2021-07-12T19:57:33.687386Z", "error", None),
    ("2019-12-16T22:21:40.052199Z\twarn\tvalidation\t", "2019-12-16T22:21:40.052199Z", "warn", "validation"),
    ("2018-09-14T19:02:31.916960Z info    model   skipping", "2018-09-14T19:02:31.916960Z", "info", "model"),
    ("2025-02-05T09:29:16.132688Z\terror\tcitadelclient\t", "2025-02-05T09:29:16.132688Z", "error", "citadelclient"),
    ("[2022/03/02 10:06:25] [ info]", "2022-03-02T10:06:25Z", "info", None),
    ("iptables-restore: line 2 failed", None, None, None),
    ("-A ISTIO_OUTPUT", None, None, None),
    ("Warning  FailedCreate  33m", None, None, None),
    ('"GET /v1/status HTTP/1.1" 503 UC', None, None, None),
    ("Readiness Probe failed", None, None, None),
]


@pytest.mark.parametrize(("prefix", "time", "level", "scope"), EXPECTED, ids=[e[0][:40] for e in EXPECTED])
def test_hand_table(
    corpus_line: Callable[[str], str], prefix: str, time: str | None, level: str | None, scope: str | None
) -> None:
    fields = parse_line_fields(corpus_line(prefix).encode())
    assert (fields.level, fields.scope) == (level, scope)
    if time is None:
        assert fields.time is None
    else:
        assert fields.time == pytest.approx(utc(time), abs=1e-6)


def test_every_corpus_line(corpus_lines: list[str]) -> None:
    for line in corpus_lines:
        fields = parse_line_fields(line.encode())
        assert isinstance(fields, LineFields)
        assert fields.level in LEVELS, line
        assert fields.scope is None or ("\t" not in fields.scope and fields.scope.strip() == fields.scope), line
        assert fields.time is None or 946684800 <= fields.time < 4102444800, line


def test_tabs_pasted_as_spaces_keep_the_fields(corpus_lines: list[str]) -> None:
    # A scope of 8k+7 characters would be followed by a single space after tab expansion, which reads as
    # message text; no corpus scope has such a length.
    tabbed = [line for line in corpus_lines if line[:1].isdigit() and line.count("\t") >= 2]
    assert len(tabbed) >= 15
    for line in tabbed:
        assert parse_line_fields(line.expandtabs(8).encode()) == parse_line_fields(line.encode()), line


def test_levels_are_normalised() -> None:
    base = "2023-10-12T08:08:15.271052Z\t{}\tenvoy client external/envoy/source/common/http/codec_client.cc:156\tx"
    expected = {
        "trace": "debug",
        "debug": "debug",
        "info": "info",
        "warning": "warn",
        "warn": "warn",
        "error": "error",
        "critical": "fatal",
        "fatal": "fatal",
        "WARN": "warn",
        "Error": "error",
        "DPANIC": "fatal",
    }
    for raw, norm in expected.items():
        fields = parse_line_fields(base.format(raw).encode())
        assert (fields.level, fields.scope) == (norm, "envoy client"), raw


def test_labels_and_caller_after_the_message() -> None:
    line = b"2024-11-10T13:54:13.762966Z\terror\tcni-agent\tfailed to handle add event: x\tns=default name=pod-1"
    assert parse_line_fields(line) == LineFields(utc("2024-11-10T13:54:13.762966Z"), "error", "cni-agent")
    # default scope with labels: the third field is message text, not a scope
    line = b"2024-11-10T13:54:13.762966Z\tinfo\tReady to go: done\tns=default"
    assert parse_line_fields(line).scope is None


def test_kubectl_prefixes() -> None:
    inner = "2020-11-22T19:32:17.857430Z\tinfo\tads\tFLAG"
    for prefixed in (f"2020-11-22T19:32:17.857583542Z {inner}", f"[pod/istiod-5f4b/discovery] {inner}"):
        assert parse_line_fields(prefixed.encode()) == LineFields(utc("2020-11-22T19:32:17.857430Z"), "info", "ads")


def test_zone_less_line_time_is_ignored() -> None:
    # A Java/Python logger's local time cannot be placed on the UTC axis.
    assert parse_line_fields(b"2021-06-19 15:28:18,485 [main] INFO  o.a.k.c.admin - values: ").time is None


def test_absurd_line_time_is_none_but_level_kept() -> None:
    fields = parse_line_fields(b"1970-01-01T00:00:00.000000Z\terror\tads\tboom")
    assert fields == LineFields(None, "error", "ads")
    assert parse_line_fields(b"2020-02-30T00:00:00.000000Z\terror\tads\tboom").time is None


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\x00\x00\x00",
        b"\xff\xfe\xfd",
        b"2020",
        b"2020-06-29T23:37:27.335928Z",
        b"2020-06-29T23:37:27.335928Z\t",
        b"2020-06-29T23:37:27.335928Z\tinfo",
        b"2020-06-29T23:37:27.335928Z\t\xff\xfe\t\x00",
        b"[",
        b"[2020-06-29",
        b"[Envoy (Epoch 0)] ",
        b"[Envoy (Epoch 0)] [2",
        b"[pod/x",
        b"{",
        b'{"level": 5, "time": [1], "scope": {}}',
        b'{"level":"info"',
        b"E",
        b"E0506",
        b"a",
        b"istio-validation ",
        b"2020-06-29T23:37:27.335928Z " * 1000,
        b"a" * 100_000,
        b"[" * 10_000,
    ],
)
def test_garbage_never_raises(line: bytes) -> None:
    fields = parse_line_fields(line)
    assert fields.level in LEVELS
    assert fields.time is None or fields.time > 946684800
