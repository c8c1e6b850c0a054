"""The CLI contract: exit codes, one-line errors, machine-readable output, any bytes in."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PATTERNS, corpus_lines


def run(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "analyzer", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def istio_line(t: float, msg: str, level: str = "error", scope: str = "klog") -> str:
    stamp = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{stamp}\t{level}\t{scope}\t{msg}"


REFUSED = (
    "k8s.io/client-go@v0.21.2/tools/cache/reflector.go:167: Failed to watch *v1.ConfigMap: failed to list "
    '*v1.ConfigMap: Get "https://10.96.0.1:443/api/v1/configmaps?limit=500": dial tcp 10.96.0.1:443: '
    "connect: connection refused"
)


# -- rules ------------------------------------------------------------------------------------------------


def test_rules_check_and_test_pass_on_the_shipped_catalogue() -> None:
    check = run("rules", "check")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(b"ok: ")
    test = run("rules", "test")
    assert test.returncode == 0, test.stdout
    passed, failed = test.stdout.decode().strip().splitlines()[-1].split(", ")
    assert int(passed.split()[0]) > 100 and failed == "0 failed"


def test_rules_check_refuses_a_bad_file_with_file_rule_and_reason(tmp_path: Path) -> None:
    shutil.copytree(PATTERNS, tmp_path / "p")
    (tmp_path / "p" / "zz-bad.yaml").write_text(
        "rules:\n"
        "  - id: bad-lookahead\n    title: t\n    category: cni\n    component: any\n    severity: low\n"
        "    match: 'abc(?=def)'\n    remediation: {en: x, pt-BR: y}\n    examples: {match: [abcdef]}\n"
    )
    result = run("rules", "check", "--patterns", str(tmp_path / "p"))
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "zz-bad.yaml" in err and "bad-lookahead" in err and "not supported" in err


def test_rules_test_reports_failing_examples(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "rules:\n"
        "  - id: wrong-example\n    title: t\n    category: cni\n    component: any\n    severity: low\n"
        "    match: 'install-cni failed'\n    remediation: {en: x, pt-BR: y}\n"
        "    examples: {match: ['install-cni failed', 'this does not match'], no_match: ['install-cni failed!']}\n"
    )
    result = run("rules", "test", "--patterns", str(tmp_path))
    assert result.returncode == 1
    out = result.stdout.decode()
    assert out.strip().splitlines()[-1] == "1 passed, 2 failed"
    assert "should match: 'this does not match'" in out


def test_unknown_field_is_refused(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - id: x-rule\n    title: t\n    category: cni\n    component: any\n    severity: low\n"
        "    match: 'abcdef'\n    remediation: {en: x, pt-BR: y}\n    examples: {match: [abcdef]}\n    colour: red\n"
    )
    result = run("rules", "check", "--patterns", str(tmp_path))
    assert result.returncode == 1
    assert b"x-rule: unknown field(s): colour" in result.stderr


def test_rules_list_json() -> None:
    rows = json.loads(run("rules", "list", "--output", "json").stdout)
    assert {"id", "title", "category", "severity", "component"} == set(rows[0])
    ids = {r["id"] for r in rows}
    assert {"istiod-apiserver-unreachable", "istiod-rbac-forbidden", "app-started-before-proxy"} <= ids


@pytest.mark.skipif(shutil.which("grep") is None, reason="GNU grep not installed")
# -- match ------------------------------------------------------------------------------------------------


def test_match_reports_line_numbers_and_rules() -> None:
    stdin = "\n".join(["healthy line", istio_line(1.7e9, REFUSED), "", "another"]).encode()
    out = [json.loads(line) for line in run("match", "-", stdin=stdin).stdout.splitlines()]
    assert [o["line_no"] for o in out] == [2]
    assert {"id": "istiod-apiserver-unreachable", "category": "apiserver-connectivity", "severity": "high"} in (
        out[0]["rules"]
    )


def test_match_takes_any_bytes() -> None:
    bad = b"\xff\xfe\x00 garbage \x00\r\n" + b"x" * (3 << 20) + b"\r\n" + b"\x00" * 10 + b"\n"
    stdin = bad + istio_line(1.7e9, REFUSED).encode() + b"\r\n" + b'{"log": truncated\n'
    result = run("match", "-", stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["line_no"] for line in result.stdout.splitlines()] == [4]


def test_match_cri_and_fluentbit_envelopes() -> None:
    cri = f"2024-01-01T00:00:00.000000001Z stdout F {istio_line(1.7e9, REFUSED)}"
    fluent = json.dumps({"@timestamp": 1.7e9, "log": istio_line(1.7e9, REFUSED) + "\n", "kubernetes": {}})
    for fmt, line in (("cri", cri), ("fluentbit", fluent), ("auto", cri), ("auto", fluent)):
        result = run("match", "--format", fmt, stdin=line.encode())
        assert [json.loads(x)["line_no"] for x in result.stdout.splitlines()] == [1], (fmt, result.stderr)


@pytest.mark.parametrize(
    "args",
    [("match", "/no/such/file"), ("scan", "/no/such/file"), ("match", "--format", "xml"), ("frobnicate",)],
)
def test_usage_and_input_errors_are_one_line_exit_2(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert len(result.stderr.decode().strip().splitlines()) == 1, result.stderr
    assert b"Traceback" not in result.stderr


def test_start_up_imports_nothing_heavy() -> None:
    probe = (
        "import sys; import analyzer.cli as c; c.build_parser();"
        "heavy = [m for m in ('hyperscan', 'numpy', 'fastapi', 'aiokafka', 'psycopg', 'pydantic') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True)
    assert result.stdout.strip() == b""


# -- scan -------------------------------------------------------------------------------------------------


def seed_log(t0: float, *, minutes: float, every: float) -> str:
    lines = []
    t = t0
    while t <= t0 + minutes * 60:
        lines.append(istio_line(t, REFUSED))
        lines.append(istio_line(t + 1, "ADS: push ok", level="info", scope="ads"))
        t += every
    lines.append(istio_line(t0 + minutes * 60 + 1200, "all quiet", level="info", scope="ads"))
    return "\n".join(lines) + "\n"


def scan_json(text: str, *extra: str) -> list[dict[str, object]]:
    result = run("scan", "--output", "json", *extra, stdin=text.encode())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_scan_api_server_burst_is_suppressed() -> None:
    [incident] = scan_json(seed_log(1.7e9, minutes=1, every=5))
    assert incident["rule"] == "istiod-apiserver-unreachable"
    assert incident["status"] == "suppressed"
    assert incident["count"] == 13
    assert "HA" in str(incident["remediation"]) or "regional" in str(incident["remediation"])


def test_scan_api_server_errors_past_the_window_escalate() -> None:
    text = seed_log(1.7e9, minutes=8, every=20)
    text = text.rsplit("\n", 2)[0] + "\n"  # end right after the errors: still recurring
    [incident] = scan_json(text, "--namespace", "istio-system", "--pod", "istiod-7d4f9c8b6-x2x9k")
    assert incident["status"] == "open"
    assert incident["key"] == {  # type: ignore[comparison-overlap]
        "cluster": "-",
        "namespace": "istio-system",
        "workload": "istiod",
        "pods": ["istiod-7d4f9c8b6-x2x9k"],
    }
    assert incident["first_seen"] == "2023-11-14T22:13:20Z"
    assert len(incident["evidence"]) == 10  # type: ignore[arg-type]


def test_scan_table_is_readable() -> None:
    result = run("scan", stdin=seed_log(1.7e9, minutes=8, every=20).encode())
    out = result.stdout.decode()
    assert result.returncode == 0
    for text in ("istiod-apiserver-unreachable", "RESOLVED", "evidence:", "fix:", "when:", "where:"):
        assert text in out


def test_scan_of_rows_without_times_is_not_resolved_at_the_epoch() -> None:
    """Pasted `kubectl describe` rows carry no times: status at their latest occurrence, no 1970 dates."""
    probe = "Readiness probe failed: HTTP probe failed with statuscode: 503"
    rows = f"  Warning  Unhealthy  3m (x12 over 5m)  kubelet  {probe}\n"
    incidents = scan_json(rows)
    assert incidents and all(i["status"] != "resolved" for i in incidents)
    table = run("scan", stdin=rows.encode()).stdout.decode()
    assert "(no times in the input)" in table and "1970" not in table


def test_scan_corpus_finds_the_seed_problems(tmp_path: Path) -> None:
    path = tmp_path / "corpus.log"
    path.write_text("\n".join(entry["line"] for entry in corpus_lines()) + "\n")
    rules = {i["rule"] for i in scan_json(path.read_text())}
    assert {"istiod-apiserver-unreachable", "istiod-rbac-forbidden", "istio-init-iptables-failure"} <= rules
    assert {"proxy-not-ready", "app-started-before-proxy"} <= rules


_EXCLUDE_RULE = (
    "rules:\n  - id: not-ready\n    title: t\n    category: proxy-readiness\n    component: any\n    severity: low\n"
    "    match: 'Envoy proxy is NOT ready'\n    exclude: [{pattern: 'draining', caseless: true}]\n"
    "    remediation: {en: x, pt-BR: y}\n"
    "    examples: {match: ['Envoy proxy is NOT ready: config not received'],"
    " no_match: ['Envoy proxy is NOT ready: Draining listeners']}\n"
)


def test_exclude_applies_in_rules_test_and_match(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(_EXCLUDE_RULE)
    assert run("rules", "check", "--patterns", str(tmp_path)).returncode == 0
    tested = run("rules", "test", "--patterns", str(tmp_path))
    assert tested.returncode == 0, tested.stdout
    assert b"2 passed, 0 failed" in tested.stdout
    lines = b"Envoy proxy is NOT ready: Draining listeners\nEnvoy proxy is NOT ready: config not received\n"
    matched = run("match", "--patterns", str(tmp_path), "-", stdin=lines)
    assert [json.loads(row)["line_no"] for row in matched.stdout.splitlines()] == [2]


def test_bad_exclude_is_refused_with_file_rule_and_reason(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(_EXCLUDE_RULE.replace("'draining'", "'(unclosed'"))
    result = run("rules", "check", "--patterns", str(tmp_path))
    assert result.returncode == 1
    assert b"r.yaml: rule not-ready: 'exclude' expression '(unclosed' does not compile" in result.stderr


# -- scan: the app-started-before-proxy gate over the proxy's and the app's logs --------------------------

_POD = "shop-5c8b7d9f4-x2x9k"


def _kubectl_ts(t: float, line: str) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z ") + line


def _proxy_lines(t0: float, ready_after: float) -> list[str]:
    lines = [istio_line(t0, "Starting proxy agent", level="info", scope="")]
    lines += [
        istio_line(t0 + s, "Envoy proxy is NOT ready: config not received from XDS server", level="warn", scope="")
        for s in range(2, int(ready_after), 2)
    ]
    lines.append(istio_line(t0 + ready_after, "Envoy proxy is ready", level="info", scope=""))
    return [line.replace("\t\t", "\t") for line in lines]


def _gated_incidents(result: subprocess.CompletedProcess[bytes]) -> list[dict[str, object]]:
    assert result.returncode == 0, result.stderr
    return [i for i in json.loads(result.stdout) if i["rule"] == "app-started-before-proxy"]


def test_scan_gates_app_refusals_with_the_proxy_log(tmp_path: Path) -> None:
    t0 = 1.7e9
    (tmp_path / "proxy.log").write_text("\n".join(_proxy_lines(t0, ready_after=90)) + "\n")
    refused = "java.net.ConnectException: Connection refused"
    # 80 s: past the start window but the proxy is still NOT ready; 400 s: ready long since
    (tmp_path / "app.log").write_text("\n".join(_kubectl_ts(t0 + s, refused) for s in (80, 82, 400)) + "\n")
    args = ("scan", "--output", "json", "--namespace", "shop", "--pod", _POD)
    result = run(*args, str(tmp_path / "app.log"), str(tmp_path / "proxy.log"))
    [incident] = _gated_incidents(result)
    assert incident["count"] == 2 and "note" not in incident
    assert incident["last_seen"] == _iso(t0 + 82)
    assert b"note:" not in result.stderr
    # the same app log alone: the gate cannot apply, every line counts, and scan says so
    alone = run(*args, str(tmp_path / "app.log"))
    [incident] = _gated_incidents(alone)
    assert incident["count"] == 3 and "line rule alone" in str(incident["note"])
    err = alone.stderr.decode()
    assert "note:" in err and f"shop/{_POD}" in err and "--prefix --timestamps" in err
    table = run("scan", "--namespace", "shop", "--pod", _POD, str(tmp_path / "app.log")).stdout.decode()
    assert "note:" in table and "could not be applied to 3 of 3 lines" in table


def test_scan_reads_pod_and_container_from_kubectl_prefix_lines() -> None:
    t0 = 1.7e9
    proxy = [f"[pod/{_POD}/istio-proxy] {line}" for line in _proxy_lines(t0, ready_after=4)]
    app = [f"[pod/{_POD}/shop] {_kubectl_ts(t0 + 600, 'Error: connect ECONNREFUSED 10.96.2.2:80')}"]
    result = run("scan", "--output", "json", "-", stdin=("\n".join(proxy + app) + "\n").encode())
    assert _gated_incidents(result) == []  # ready long before: some other problem, not this one
    assert b"note:" not in result.stderr


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.skipif(shutil.which("grep") is None, reason="GNU grep not installed")
def test_export_finds_a_superset_that_only_excludes_narrow(tmp_path: Path) -> None:
    """grep knows no ``exclude``: it finds every line we find, and the lines only it finds are excluded ones."""
    from analyzer.catalogue import load_catalogue

    lines = [entry["line"] for entry in corpus_lines()]
    corpus = tmp_path / "corpus.log"
    corpus.write_text("\n".join(lines) + "\n")
    exported = tmp_path / "patterns.txt"
    exported.write_bytes(run("rules", "export").stdout)
    grep = subprocess.run(
        ["grep", "-E", "-n", "-f", str(exported), str(corpus)],
        capture_output=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    assert grep.returncode in (0, 1) and not grep.stderr, grep.stderr  # every exported expression is valid ERE
    grep_lines = {int(line.split(b":", 1)[0]) for line in grep.stdout.splitlines()}
    ours = {json.loads(line)["line_no"] for line in run("match", str(corpus)).stdout.splitlines()}
    assert ours and ours <= grep_lines
    excluding = [rule for rule in load_catalogue(PATTERNS).rules if rule.exclude]
    for n in grep_lines - ours:
        line = lines[n - 1]
        assert any(re.search(e.pattern, line) for rule in excluding for e in rule.exclude), line


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, "rules:\n" + "".join(" " * (2 * i) + "- a:\n" for i in range(3000))],
    ids=["flow", "block"],
)
def test_deeply_nested_yaml_is_refused_not_a_crash(tmp_path: Path, text: str) -> None:
    (tmp_path / "nested.yaml").write_text(text)
    result = run("rules", "check", "--patterns", str(tmp_path))
    assert result.returncode == 1, result  # a segfault of a C parser would be -11
    assert b"nested.yaml: invalid YAML: nested too deeply" in result.stderr
