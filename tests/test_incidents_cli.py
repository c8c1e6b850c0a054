"""`mesh-analyzer incidents list|show|ack|silence [--watch]` as a subprocess against the real app served by
uvicorn over a socket, on a real SQLite store (tests/api/support.py): acks and silences must change what the
API returns, JSON output is parsed, --watch follows the stream (and resumes it after a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from analyzer.broker import free_port
from analyzer.client import Event, parse_events
from tests.api.support import (
    OUTAGE_NOT_READY,
    OUTAGE_ROOT,
    OUTAGE_UPSTREAM,
    STREAM_TIME,
    TOKEN,
    Harness,
    interval,
    make_settings,
    running,
)

GUARD = 60.0  # only against a hang; nothing depends on how fast things happen

A = interval("access-upstream-connect-failure", namespace="shop", workload="checkout", first_seen=STREAM_TIME - 300)
B = interval("proxy-not-ready", namespace="shop", workload="cart", first_seen=STREAM_TIME - 200)
C = interval("istiod-rbac-forbidden", namespace="istio-system", workload="istiod", first_seen=STREAM_TIME - 100)


class _Server(uvicorn.Server):
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()  # leave pytest's signal handlers alone


@contextlib.asynccontextmanager
async def serving(app: FastAPI, port: int = 0) -> AsyncIterator[str]:
    """The app on a real socket. Open streams are cut at shutdown (as a restart cuts them)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(GUARD):
            while not server.started:
                if task.done():
                    task.result()  # the server failed to start: raise its error
                await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{bound}"
    finally:
        server.should_exit = True
        await task


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYZER_")}
    return {**env, **extra}


async def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`mesh-analyzer incidents ...` in a subprocess (off the event loop, which serves the API meanwhile)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "analyzer", "incidents", *args],
        capture_output=True,
        text=True,
        timeout=GUARD,
        env=_env(**env),
        check=False,
    )


def clean_error(result: subprocess.CompletedProcess[str]) -> str:
    """A failure is one line on stderr, never a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("mesh-analyzer: error: "), result.stderr
    return result.stderr


async def items(api: Harness) -> dict[str, dict[str, object]]:
    page = (await api.client.get("/v1/incidents")).json()
    return {str(i["id"]): i for i in page["items"]}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(make_settings(tmp_path)) as harness:
        yield harness


@pytest.fixture
async def api_url(api: Harness) -> AsyncIterator[str]:
    await api.commit(A, B, C)
    async with serving(api.app) as url:
        yield url


# -- list and show ----------------------------------------------------------------------------------------


async def test_list_prints_the_scan_table_with_ids_newest_first(api: Harness, api_url: str) -> None:
    result = await cli("list", "--server", api_url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    listed = await items(api)
    assert out.startswith("3 incidents: 1 open, 2 suppressed\n")  # the two proxy rules have a transient window
    headers = re.findall(r"^(OPEN|PENDING|SUPPRESSED|RESOLVED) +(\w+) +([a-z0-9-]+)  \[([a-z-]+)\]$", out, re.M)
    assert [h[2] for h in headers] == [C.rule_id, B.rule_id, A.rule_id]  # the API's order: newest first
    for status, severity, _, category in headers:
        assert (status.lower(), severity, category) in {
            (i["status"], i["severity"], i["category"]) for i in listed.values()
        }
    ids = re.findall(r"^  id: +(\w+)$", out, re.M)
    assert ids == [C.id, B.id, A.id]
    # The scan table's lines for each incident, from the detail: where, when, evidence, fix.
    assert "  where:    cluster=prod namespace=shop workload=checkout pods=checkout-7d9f8b6c5d-x2x4q\n" in out
    assert re.search(r"^  when: +\S+Z → \S+Z \(\S+\), 3 lines$", out, re.M)
    assert out.count("  evidence:\n") == 3 and "upstream connect error or disconnect/reset before headers #0" in out
    assert out.count("  fix:      ") == 3
    assert "state:" not in out  # nothing acked or silenced yet


async def test_list_json_and_filters_mirror_the_api(api_url: str) -> None:
    result = await cli("list", "--server", api_url, "--output", "json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [i["id"] for i in listed] == [C.id, B.id, A.id]
    assert {"rule", "title", "status", "key", "count", "acked", "silenced"} <= listed[0].keys()

    async def ids(*filters: str) -> list[str]:
        found = await cli("list", "--server", api_url, "--output", "json", *filters)
        assert found.returncode == 0, found.stderr
        return [i["id"] for i in json.loads(found.stdout)]

    assert await ids("--namespace", "shop") == [B.id, A.id]
    assert await ids("--rule", A.rule_id) == [A.id]
    assert await ids("--workload", "istiod", "--status", "open") == [C.id]
    assert await ids("--status", "resolved", "--status", "suppressed") == [B.id, A.id]  # repeatable
    assert await ids("--status", "resolved") == []
    assert await ids("--category", "rbac-permissions") == [C.id]
    assert await ids("--limit", "2") == [C.id, B.id]
    empty = await cli("list", "--server", api_url, "--status", "resolved")
    assert empty.returncode == 0 and empty.stdout.startswith("no incidents match")


async def test_show_prints_evidence_remediation_and_commands(api: Harness, api_url: str) -> None:
    result = await cli("show", A.id, "--server", api_url)
    assert result.returncode == 0, result.stderr
    detail = (await api.client.get(f"/v1/incidents/{A.id}")).json()
    out = result.stdout
    status = str(detail["status"]).upper()
    assert out.startswith(f"{status:<10} {detail['severity']:<8} {A.rule_id}  [{detail['category']}]\n")
    assert f"  id:       {A.id}\n" in out
    for evidence in detail["evidence"]:
        assert evidence["line"] in out
    assert detail["remediation"].split()[0] in out
    assert "  look:\n" in out and detail["commands"][0] in out

    as_json = await cli("show", A.id, "--server", api_url, "--output", "json")
    assert json.loads(as_json.stdout) == detail


async def test_an_unknown_id_is_a_clean_404(api_url: str) -> None:
    result = await cli("show", "0123456789abcdef0123", "--server", api_url)
    assert result.returncode == 2
    assert "404" in clean_error(result) and "no incident with id" in result.stderr


async def test_an_unreachable_service_is_a_clean_error() -> None:
    port = free_port()  # nothing listens there
    result = await cli("list", "--server", f"http://127.0.0.1:{port}")
    assert result.returncode == 3
    assert "connection refused" in clean_error(result) and f"127.0.0.1:{port}" in result.stderr


class _NotTheAnalyzer(http.server.BaseHTTPRequestHandler):
    """Something else on the port: a login redirect for the list, an HTML page for anything else."""

    def do_GET(self) -> None:
        if self.path.startswith("/v1/incidents?"):
            self.send_response(302)
            self.send_header("Location", "https://sso.example/login")
            self.end_headers()
            return
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def test_a_server_that_is_not_the_analyzer_is_a_clean_error() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotTheAnalyzer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        redirected = await cli("list", "--server", url, **_token())
        assert redirected.returncode == 2
        assert "redirects to https://sso.example/login" in clean_error(redirected)  # not followed, token kept
        html = await cli("show", "abc", "--server", url)
        assert html.returncode == 3
        assert "did not answer with the analyzer's JSON" in clean_error(html)
        scheme = await cli("list", "--server", "ftp://127.0.0.1:21")
        assert scheme.returncode == 2 and "http(s) URL" in clean_error(scheme)
    finally:
        server.shutdown()
        server.server_close()


# -- ack and silence ---------------------------------------------------------------------------------------


async def test_ack_changes_what_the_api_returns(api: Harness, api_url: str) -> None:
    result = await cli("ack", A.id, "--by", "alice", "--comment", "fix rolling out", "--server", api_url, **_token())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"acknowledged {A.id} ({A.rule_id}, prod/shop/checkout) by alice")
    after = await items(api)
    assert (after[A.id]["acked"], after[A.id]["acked_by"], after[A.id]["ack_comment"]) == (
        True,
        "alice",
        "fix rolling out",
    )
    assert after[B.id]["acked"] is False
    listed = await cli("list", "--server", api_url, "--rule", A.rule_id)
    assert re.search(r"^  state: +acked by alice at \S+Z \(fix rolling out\)$", listed.stdout, re.M)

    as_json = await cli("ack", B.id, "--output", "json", "--server", api_url, **_token())
    assert json.loads(as_json.stdout)["acked"] is True  # --by defaults to the user (or the API's caller label)


async def test_writes_without_the_right_token_are_refused_and_change_nothing(api: Harness, api_url: str) -> None:
    missing = await cli("ack", A.id, "--server", api_url)
    assert missing.returncode == 2
    assert "401" in clean_error(missing) and "ANALYZER_API_TOKEN" in missing.stderr
    wrong = await cli("silence", A.id, "--duration", "1h", "--server", api_url, ANALYZER_API_TOKEN="nope")
    assert wrong.returncode == 2
    assert "403" in clean_error(wrong)
    after = await items(api)
    assert not after[A.id]["acked"] and not after[A.id]["silenced"]
    assert (await api.client.get("/v1/silences")).json()["items"] == []


async def test_silence_an_incident_or_matchers(api: Harness, api_url: str) -> None:
    by_id = await cli("silence", A.id, "--duration", "2h", "--comment", "rollout", "--server", api_url, **_token())
    assert by_id.returncode == 0, by_id.stderr
    assert by_id.stdout.startswith(f"silenced rule={A.rule_id} cluster=prod namespace=shop workload=checkout until ")
    after = await items(api)
    assert [i for i, item in after.items() if item["silenced"]] == [A.id]  # B: same namespace, other workload

    matchers = await cli(
        "silence",
        "--namespace",
        "istio-system",
        "--duration",
        "1h",
        "--output",
        "json",
        "--server",
        api_url,
        **_token(),
    )
    assert matchers.returncode == 0, matchers.stderr
    made = json.loads(matchers.stdout)
    assert made["namespace"] == "istio-system" and made["rule"] is None
    after = await items(api)
    assert {i for i, item in after.items() if item["silenced"]} == {A.id, C.id}
    listed = await cli("list", "--server", api_url, "--rule", C.rule_id)
    assert re.search(r"^  state: +silenced$", listed.stdout, re.M)


async def test_bad_silences_are_refused_with_the_services_reason(api_url: str) -> None:
    bad = await cli("silence", A.id, "--duration", "forever", "--server", api_url, **_token())
    assert bad.returncode == 2
    assert "422" in clean_error(bad) and "duration" in bad.stderr
    nothing = await cli("silence", "--duration", "1h", "--server", api_url, **_token())
    assert nothing.returncode == 2 and "say what to silence" in clean_error(nothing)
    both = await cli("silence", A.id, "--rule", "x", "--duration", "1h", "--server", api_url, **_token())
    assert both.returncode == 2 and "not both" in clean_error(both)


async def test_a_read_token_is_sent_when_the_service_wants_one(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, api_read_token="r3ad")) as api:
        await api.commit(A)
        async with serving(api.app) as url:
            refused = await cli("list", "--server", url)
            assert refused.returncode == 2
            assert "401" in clean_error(refused) and "ANALYZER_API_READ_TOKEN" in refused.stderr
            wrong = await cli("list", "--server", url, ANALYZER_API_READ_TOKEN="nope")
            assert wrong.returncode == 2 and "403" in clean_error(wrong)
            unsendable = await cli("list", "--server", url, ANALYZER_API_READ_TOKEN="s3cret\nx")
            assert unsendable.returncode == 2 and "s3cret" not in clean_error(unsendable)  # never echoed
            for env in ({"ANALYZER_API_READ_TOKEN": "r3ad"}, _token()):  # the write token reads too
                allowed = await cli("list", "--server", url, "--output", "json", **env)
                assert allowed.returncode == 0, allowed.stderr
                assert [i["id"] for i in json.loads(allowed.stdout)] == [A.id]


# -- one incident per cause ---------------------------------------------------------------------------------

ROOT, NOT_READY, UPSTREAM = OUTAGE_ROOT, OUTAGE_NOT_READY, OUTAGE_UPSTREAM


@pytest.fixture
async def outage_url(api: Harness) -> AsyncIterator[str]:
    await api.commit(ROOT, NOT_READY, UPSTREAM, C)
    async with serving(api.app) as url:
        yield url


async def test_view_roots_lists_one_incident_per_cause(outage_url: str) -> None:
    roots = await cli("list", "--view", "roots", "--output", "json", "--server", outage_url)
    assert roots.returncode == 0, roots.stderr
    listed = {i["id"]: i for i in json.loads(roots.stdout)}
    assert set(listed) == {ROOT.id, C.id}  # the symptoms are under their root
    assert listed[ROOT.id]["affected"] == {"incidents": 2, "workloads": 2, "pods": 3}

    # The table: the root's block with its symptoms under it (as `scan` prints them), whichever the view.
    for view in ("all", "roots"):
        table = await cli("list", "--view", view, "--server", outage_url)
        assert table.returncode == 0, table.stderr
        out = table.stdout
        summary = "4 incidents: 4 open; 2 of them shown under their root cause" if view == "all" else "2 incidents"
        assert out.startswith(summary), out[:200]
        blocks = re.findall(r"^(?:OPEN|PENDING|SUPPRESSED|RESOLVED) +\w+ +([a-z0-9-]+)  \[", out, re.M)
        assert blocks == [ROOT.rule_id, C.rule_id], view  # no block of their own for the symptoms
        under = out[out.index(f"{ROOT.rule_id}  [") : out.index(f"{C.rule_id}  [")]
        assert "2 workload(s), 3 pod(s)" in under
        assert f"{NOT_READY.rule_id}  [" in under and f"{UPSTREAM.rule_id}  [" in under

    # Listed without its root (another namespace's filter), a symptom says whose it is.
    alone = await cli("list", "--namespace", "shop", "--server", outage_url)
    assert f"  cause:    a symptom of {ROOT.id} (its root cause)\n" in alone.stdout


async def test_show_a_root_lists_its_symptoms(outage_url: str) -> None:
    result = await cli("show", ROOT.id, "--server", outage_url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    head = "  symptoms: 2 incident(s) caused by this, 2 workload(s), 3 pod(s) affected; earliest first:\n"
    assert head in out
    lines = out[out.index(head) + len(head) :].splitlines()
    assert [line.split("id=")[1].split()[0] for line in lines] == [UPSTREAM.id, NOT_READY.id]
    assert all(f"symptom-of={ROOT.id}" in line for line in lines)


async def test_watch_roots_leaves_symptoms_out(outage_url: str) -> None:
    async with watching(outage_url, "--view", "roots") as watcher:
        first = [await watcher.next() for _ in range(2)]
        assert {e["data"]["id"] for e in first} == {ROOT.id, C.id}  # type: ignore[index]
        acked = await cli("ack", NOT_READY.id, "--server", outage_url, **_token())  # a symptom changes: not shown
        assert acked.returncode == 0, acked.stderr
        acked = await cli("ack", C.id, "--server", outage_url, **_token())
        assert acked.returncode == 0, acked.stderr
        event = await watcher.next()
        assert (event["event"], event["data"]["id"]) == ("incident", C.id)  # type: ignore[index]


async def test_watch_says_when_a_shown_incident_becomes_a_symptom(api: Harness) -> None:
    await api.commit(NOT_READY)
    async with serving(api.app) as url, watching(url, "--view", "roots") as watcher:
        assert (await watcher.next())["data"]["id"] == NOT_READY.id  # type: ignore[index]  # standalone so far
        await api.commit(ROOT)  # istiod's outage arrives: the proxy's trouble is its symptom now
        seen = [await watcher.next() for _ in range(2)]
        assert [(e["event"], e["data"]["id"]) for e in seen] == [("incident", ROOT.id), ("symptom", NOT_READY.id)]  # type: ignore[index]
        assert seen[1]["data"] == {"id": NOT_READY.id, "caused_by": ROOT.id}


# -- watch -------------------------------------------------------------------------------------------------


class Watcher:
    """`incidents list --watch --output json` running; its lines read one at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def next(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(GUARD):
            line = await self.proc.stdout.readline()
        assert line, "the watch ended"
        return dict(json.loads(line))

    async def until(self, wanted: str, predicate: object = None) -> dict[str, object]:
        while True:
            event = await self.next()
            data = event["data"]
            assert isinstance(data, dict)
            if event["event"] == wanted and (predicate is None or (callable(predicate) and predicate(data))):
                return event


@contextlib.asynccontextmanager
async def watching(url: str, *args: str) -> AsyncIterator[Watcher]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "analyzer",
        "incidents",
        "list",
        "--watch",
        "--output",
        "json",
        "--server",
        url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    try:
        yield Watcher(proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def test_watch_receives_the_current_incidents_then_each_change(api: Harness, api_url: str) -> None:
    async with watching(api_url, "--namespace", "shop") as watcher:
        first = [await watcher.next() for _ in range(2)]
        assert [(e["event"], e["data"]["id"]) for e in first] == [("incident", A.id), ("incident", B.id)]  # type: ignore[index]
        assert all(e["id"] for e in first)  # each carries its resume point

        acked = await cli("ack", A.id, "--by", "bob", "--server", api_url, **_token())
        assert acked.returncode == 0, acked.stderr
        event = await watcher.until("incident", lambda d: d["id"] == A.id)
        assert event["data"]["acked_by"] == "bob"  # type: ignore[index]

        await api.commit(replace(B, first_seen=B.first_seen + 30, last_seen=B.first_seen + 40, count=4))
        grown = await watcher.until("incident", lambda d: d["id"] == B.id)
        assert grown["data"]["count"] == B.count + 4  # type: ignore[index]


async def test_watch_ends_when_its_reader_goes(api_url: str) -> None:
    """`... --watch | head -1`: once the reader has gone, the next event ends the watch (no reconnect loop)."""
    argv = [sys.executable, "-m", "analyzer", "incidents", "list", "--watch", "--server", api_url]
    # A plain Popen (its stdout a file we can close), started off the event loop that serves the API.
    proc = await asyncio.to_thread(subprocess.Popen, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        assert proc.stdout is not None
        first = await asyncio.to_thread(proc.stdout.readline)
        assert first.startswith(b"SUPPRESSED") or first.startswith(b"OPEN"), first
        proc.stdout.close()  # the reader goes, as head does after its line
        acked = await cli("ack", A.id, "--server", api_url, **_token())  # news for the watch, no one to read it
        assert acked.returncode == 0, acked.stderr
        assert await asyncio.to_thread(proc.wait, GUARD) == 0
        assert proc.stderr is not None
        assert b"reconnecting" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_watch_table_prints_one_line_per_event(api_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "analyzer",
        "incidents",
        "list",
        "--watch",
        "--rule",
        C.rule_id,
        "--server",
        api_url,
        stdout=asyncio.subprocess.PIPE,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(GUARD):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith(f"OPEN       high     {C.rule_id}  prod/istio-system/istiod  count=3 ")
        assert line.rstrip().endswith(f"id={C.id}")
    finally:
        proc.terminate()
        await proc.wait()


async def test_watch_reports_merges_and_resumes_after_a_restart(api: Harness) -> None:
    """A bridged incident is announced as merged; when the service restarts, the watch reconnects by itself with
    the last event's id. The proof that it sent the id: a resumed stream repeats the merges made since that point
    (a fresh one never starts with a merge)."""
    gap = api.service.holder.catalogue.by_id()[A.rule_id].resolve_after
    older = replace(A, first_seen=STREAM_TIME - 3 * gap, last_seen=STREAM_TIME - 3 * gap)
    newer = replace(interval(A.rule_id, first_seen=STREAM_TIME - gap), key=A.key, pods=A.pods)
    await api.commit(older, newer)
    port = free_port()
    async with contextlib.AsyncExitStack() as first_run:
        url = await first_run.enter_async_context(serving(api.app, port))
        async with watching(url) as watcher:
            assert {(await watcher.next())["data"]["id"] for _ in range(2)} == {older.id, newer.id}  # type: ignore[index]
            bridge = replace(interval(A.rule_id, first_seen=STREAM_TIME - 2 * gap, count=1), key=A.key, pods=A.pods)
            await api.commit(bridge)
            merged = await watcher.until("merged")
            assert merged["data"] == {"id": newer.id, "merged_into": older.id}

            await first_run.aclose()  # the service stops: the stream is cut
            await api.commit(B)  # something happens meanwhile
            async with serving(api.app, port):  # back on the same port
                seen: list[dict[str, object]] = []
                while not any(e["event"] == "merged" for e in seen):
                    seen.append(await watcher.next())
                assert {e["data"]["id"] for e in seen if e["event"] == "incident"} >= {B.id}  # type: ignore[index]
                assert seen[-1]["data"] == {"id": newer.id, "merged_into": older.id}
            watcher.proc.terminate()
            assert watcher.proc.stderr is not None
            notes = (await watcher.proc.stderr.read()).decode()
            assert "reconnecting" in notes and "resuming after the last event" in notes
            assert "Traceback" not in notes


def _token() -> dict[str, str]:
    return {"ANALYZER_API_TOKEN": TOKEN}


# -- the stream parser -------------------------------------------------------------------------------------


def test_parse_events_follows_the_event_source_rules() -> None:
    lines = [
        ": keepalive",
        "",
        "event: incident",
        'data: {"id": "a"}',
        "id: p1",
        "",
        "event: merged",
        "data: {",
        'data: "id": "b"}',
        "",
        "data:plain",
        "",
    ]
    assert list(parse_events(lines)) == [
        Event("incident", '{"id": "a"}', "p1"),
        Event("merged", '{\n"id": "b"}', "p1"),  # data lines joined; the last id carries over
        Event("message", "plain", "p1"),
    ]
