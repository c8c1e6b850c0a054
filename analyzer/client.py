"""The HTTP side of `mesh-analyzer incidents`: a small client for a running service's /v1 API.

Standard library only (urllib): the CLI must not pull an HTTP stack into a plain `pip install`. The service
validates everything it is sent (a bad filter or duration comes back as its own 422 message), so the client
passes values through and turns each failure into one :class:`ClientError` line: the service refused the
request (4xx: exit 2) or could not be reached or failed (exit 3). Redirects are refused rather than followed,
so a bearer token is never sent to a host the user did not name.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from analyzer.errors import AnalyzerError

if TYPE_CHECKING:
    from analyzer.offline import Incident

SERVER_ENV = "ANALYZER_URL"
DEFAULT_SERVER = "http://localhost:8080"
TOKEN_ENV = "ANALYZER_API_TOKEN"
READ_TOKEN_ENV = "ANALYZER_API_READ_TOKEN"
TIMEOUT = 30.0  # seconds for one request
PAGE = 500  # the API's largest page
MAX_PAGES = 200  # pages followed for one listing
STREAM_KEEPALIVE = 10.0  # seconds: asked of the stream, so a silent connection is a dead one
STREAM_READ_TIMEOUT = 3 * STREAM_KEEPALIVE
MAX_BACKOFF = 30.0  # seconds between reconnects, at most

REFUSED = 2  # exit code: the service refused the request (bad token, unknown id, invalid parameter)
UNREACHABLE = 3  # exit code: no answer, or not a usable one (connection refused, timeout, 5xx)


class ClientError(AnalyzerError):
    """A request that did not succeed; ``exit_code`` says whose side the problem is on."""

    def __init__(self, message: str, *, exit_code: int = REFUSED, status: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status
        self.retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Tokens:
    """What to send: the write token for writes; for reads the read token, else the write token (the service
    accepts either for reads when ANALYZER_API_READ_TOKEN is set, and needs none otherwise)."""

    write: str | None = None
    read: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Tokens:
        return cls(write=environ.get(TOKEN_ENV) or None, read=environ.get(READ_TOKEN_ENV) or None)

    def for_reads(self) -> str | None:
        return self.read or self.write


def server_url(arg: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The service's base URL: --server, else $ANALYZER_URL, else localhost:8080 (http:// when no scheme)."""
    url = (arg or environ.get(SERVER_ENV) or DEFAULT_SERVER).strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (reading it validates it)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"--server {url!r}: give the service's http(s) URL, e.g. {DEFAULT_SERVER}")
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError for the 3xx, which _failure explains


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: its type (``incident``, ``merged``, ``error``), data and the id to resume from."""

    event: str
    data: str
    id: str | None


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """Server-sent events from the stream's lines (without their line ends), as the EventSource spec reads
    them: fields until a blank line; ``data`` lines joined; comments (``: keepalive``) skipped; the last ``id``
    carries over to later events."""
    kind, last_id = "", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield Event(kind or "message", "\n".join(data), last_id)
            kind, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\x00" not in value:
            last_id = value


class Client:
    def __init__(self, base: str, tokens: Tokens, timeout: float = TIMEOUT) -> None:
        self.base = base
        self.tokens = tokens
        self.timeout = timeout

    # -- one request ------------------------------------------------------------------------------------

    def _open(
        self,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        body: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> http.client.HTTPResponse:
        url = f"{self.base}{path}" + (f"?{urlencode(params)}" if params else "")
        token = self.tokens.write if method != "GET" else self.tokens.for_reads()
        request = urllib.request.Request(url, method=method, headers={"Accept": "application/json", **(headers or {})})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if body is not None:
            request.data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        try:
            response: http.client.HTTPResponse = _OPENER.open(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                raise _failure(exc, method, path, self.tokens) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _unreachable(self.base, exc) from None
        except ValueError:  # a header http.client will not send; its message would quote the token: not shown
            raise ClientError(
                f"cannot send the request: a header value no HTTP request can carry (newline, non-Latin-1); "
                f"check {TOKEN_ENV} / {READ_TOKEN_ENV}"
            ) from None
        return response

    def _json(
        self,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        body: Mapping[str, object] | None = None,
    ) -> dict[str, Any]:
        """The JSON object the API answers (every endpoint used here answers one)."""
        problem: object
        with self._open(method, path, params, body) as response:
            try:
                parsed = json.loads(response.read())
            except (ValueError, OSError, http.client.HTTPException) as exc:
                problem = exc
            else:
                if isinstance(parsed, dict):
                    return parsed
                problem = f"a JSON {type(parsed).__name__}, not an object"
        raise ClientError(
            f"{self.base}{path} did not answer with the analyzer's JSON ({problem}): is --server the analyzer?",
            exit_code=UNREACHABLE,
        )

    # -- the API ----------------------------------------------------------------------------------------

    def incidents(self, params: Sequence[tuple[str, str]], limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` incidents matching ``params``, newest first, following the API's cursors."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        # A grouped view may answer short (even empty) pages with a cursor to go on from: follow it, boundedly.
        for _ in range(MAX_PAGES):
            page_params = [*params, ("limit", str(min(PAGE, limit - len(items))))]
            if cursor:
                page_params.append(("cursor", cursor))
            page = self._json("GET", "/v1/incidents", page_params)
            items.extend(i for i in page.get("items") or [] if isinstance(i, dict))
            cursor = page.get("next_cursor")
            if not cursor or len(items) >= limit:
                break
        return items[:limit]

    def incident(self, incident_id: str, lang: str | None = None) -> dict[str, Any]:
        return self._json("GET", _incident_path(incident_id), [("lang", lang)] if lang else [])

    def ack(self, incident_id: str, by: str | None, comment: str | None) -> dict[str, Any]:
        body = {k: v for k, v in (("by", by), ("comment", comment)) if v is not None}
        return self._json("POST", f"{_incident_path(incident_id)}/ack", body=body)

    def silence(self, body: Mapping[str, object]) -> dict[str, Any]:
        return self._json("POST", "/v1/silences", body=body)

    def stream(self, params: Sequence[tuple[str, str]], last_event_id: str | None) -> http.client.HTTPResponse:
        """Opens the incident stream (GET /v1/incidents/stream); read it with :func:`read_events`."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        params = [*params, ("keepalive", str(STREAM_KEEPALIVE))]
        return self._open("GET", "/v1/incidents/stream", params, headers=headers, timeout=STREAM_READ_TIMEOUT)


def read_events(response: IO[bytes]) -> Iterator[Event]:
    """Events until the server or the network ends the stream (OSError when it is cut or falls silent)."""
    return parse_events(_lines(response))


def _incident_path(incident_id: str) -> str:
    if not incident_id.strip():
        raise ClientError("an incident id is needed (the id column of `mesh-analyzer incidents list`)")
    return f"/v1/incidents/{quote(incident_id, safe='')}"


def _lines(response: IO[bytes]) -> Iterator[str]:
    while True:
        raw = response.readline()
        if not raw:
            return
        yield raw.decode("utf-8", "replace").rstrip("\r\n")


def _detail(body: bytes) -> str:
    """The service's own words: ``message`` of a 422, ``detail`` of anything else."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:200]
    if isinstance(parsed, dict):
        for key in ("message", "detail"):
            if isinstance(parsed.get(key), str):
                return str(parsed[key])
    return str(parsed)[:200]


def _failure(exc: urllib.error.HTTPError, method: str, path: str, tokens: Tokens) -> ClientError:
    code = exc.code
    try:
        said = _detail(exc.read())
    except (OSError, http.client.HTTPException):
        said = exc.reason if isinstance(exc.reason, str) else ""
    said = said or str(exc.reason)
    writing = method != "GET"
    if code == 401:
        variable = TOKEN_ENV if writing else f"{READ_TOKEN_ENV} (or {TOKEN_ENV})"
        hint = f"set {variable} to the service's token"
        error = ClientError(f"401 unauthorized: {said}; {hint}", status=code)
    elif code == 403:
        if writing:
            hint = f"check {TOKEN_ENV}" if tokens.write else f"{TOKEN_ENV} is not set"
        else:
            hint = f"check {READ_TOKEN_ENV} / {TOKEN_ENV}"
        error = ClientError(f"403 forbidden: {said} ({hint})", status=code)
    elif code == 404:
        error = ClientError(f"404 not found: {said}", status=code)
    elif 300 <= code < 400:
        where = exc.headers.get("Location", "elsewhere")
        error = ClientError(f"{method} {path}: the server redirects to {where}; pass that URL as --server", status=code)
    elif code < 500:
        error = ClientError(f"{code}: {said}", status=code)
    else:
        error = ClientError(f"the analyzer answered {code}: {said}", exit_code=UNREACHABLE, status=code)
    retry = exc.headers.get("Retry-After") if exc.headers else None
    if retry and retry.isdigit():
        error.retry_after = float(retry)
    return error


def _unreachable(base: str, exc: BaseException) -> ClientError:
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(reason, socket.gaierror):
        text = f"unknown host ({reason.strerror})"
    elif isinstance(reason, TimeoutError | socket.timeout):
        text = "timed out"
    else:
        text = str(reason) or type(reason).__name__
    return ClientError(
        f"cannot reach the analyzer at {base}: {text} "
        f"(is `mesh-analyzer serve` running? set --server or ${SERVER_ENV})",
        exit_code=UNREACHABLE,
    )


# -- watch ---------------------------------------------------------------------------------------------------


def watch(
    client: Client,
    params: Sequence[tuple[str, str]],
    on_event: Callable[[Event], None],
    note: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Follow the stream until interrupted, reconnecting with the last event's id so that nothing is missed
    and the current incidents are not sent again. The first connection's failure is the caller's error (a
    wrong URL or token); later drops (a restart, a network cut) are retried with back-off."""
    last_id: str | None = None
    connected_once = False
    backoff = 1.0
    while True:
        try:
            response = client.stream(params, last_id)
        except ClientError as exc:
            retryable = exc.exit_code == UNREACHABLE or exc.status == 503
            if not connected_once or not retryable:
                raise
            problem = str(exc)
            if exc.retry_after is not None:
                backoff = max(backoff, exc.retry_after)
        else:
            connected_once = True
            backoff = 1.0
            with response:
                events = read_events(response)
                while True:
                    # Only reading is guarded: an error of on_event (a closed stdout) is the caller's.
                    try:
                        event = next(events, None)
                    except (OSError, http.client.HTTPException) as exc:  # cut, or silent past the keep-alive
                        problem = f"the stream was cut ({exc or type(exc).__name__})"
                        break
                    if event is None:
                        problem = "the stream ended"
                        break
                    if event.id is not None:
                        last_id = event.id
                    on_event(event)
        resume = " (resuming after the last event)" if last_id else ""
        note(f"{problem}; reconnecting in {backoff:.0f}s{resume}")
        sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)


# -- API JSON -> the scan table's incidents -------------------------------------------------------------------


def epoch(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def as_incident(detail: Mapping[str, Any], *, symptoms: bool = True) -> Incident:
    """An incident detail from the API as the scan table's :class:`~analyzer.offline.Incident`, so that
    `incidents` and `scan` print through one renderer (a root cause with its ``symptoms`` under it, unless
    told not to). The rule is the detail's view of it (no expressions: the table shows none). A listed item
    (no evidence, no remediation) reads too: a symptom line needs no more."""
    from analyzer.causes import Affected
    from analyzer.offline import Incident
    from analyzer.types import (
        Category,
        Component,
        Evidence,
        IncidentKey,
        Interval,
        Rule,
        Scope,
        Severity,
        Status,
    )

    try:
        key = detail["key"]
        evidence = tuple(
            Evidence(epoch(e["time"]), str(e["line"]), e.get("pod"), e.get("container"))
            for e in detail.get("evidence", [])
        )
        interval = Interval(
            rule_id=str(detail["rule"]),
            key=IncidentKey(str(key["cluster"]), str(key["namespace"]), str(key["workload"])),
            first_seen=epoch(detail["first_seen"]),
            last_seen=epoch(detail["last_seen"]),
            count=int(detail["count"]),
            head=evidence,
            tail=(),
            pods=tuple(str(p) for p in key.get("pods", [])),
        )
        rule = Rule(
            id=str(detail["rule"]),
            title=str(detail["title"]),
            category=Category(detail["category"]),
            component=Component.ANY,
            severity=Severity(detail["severity"]),
            expressions=(),
            scope=Scope(),
            transient=detail.get("transient_seconds"),
            resolve_after=float(detail.get("resolve_after_seconds") or 0.0),
            # The table prints the English text; the detail's is in the language asked (--lang).
            remediation={"en": str(detail.get("remediation") or "")},
            references=tuple(str(r) for r in detail.get("references", [])),
            examples_match=(),
            examples_no_match=(),
            source="api",
        )
        affected = detail.get("affected")
        return Incident(
            str(detail["id"]),
            interval,
            rule,
            Status(detail["status"]),
            caused_by=detail.get("caused_by"),
            symptoms=tuple(as_incident(s, symptoms=False) for s in detail.get("symptoms", [])) if symptoms else (),
            affected=Affected(**affected) if isinstance(affected, dict) else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ClientError(f"an incident this CLI cannot read ({exc!r}): is the analyzer newer?") from None


def state_lines(item: Mapping[str, Any]) -> list[str]:
    """What the API adds to a scan incident: its id (for show/ack/silence), ack and silence."""
    lines = [f"id:       {item.get('id')}"]
    marks: list[str] = []
    if item.get("acked"):
        ack = f"acked by {item.get('acked_by') or '?'}"
        if item.get("acked_at"):
            ack += f" at {_short_time(str(item['acked_at']))}"
        if item.get("ack_comment"):
            ack += f" ({item['ack_comment']})"
        marks.append(ack)
    if item.get("silenced"):
        marks.append("silenced")
    if marks:
        lines.append(f"state:    {'; '.join(marks)}")
    if item.get("caused_by"):  # (a symptom listed under its root prints no block of its own)
        lines.append(f"cause:    a symptom of {item['caused_by']} (its root cause)")
    return lines


def _short_time(value: str) -> str:
    try:
        return dt.datetime.fromtimestamp(epoch(value), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return value


def _event_data(event: Event) -> dict[str, Any]:
    try:
        data = json.loads(event.data)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class RootsOnly:
    """``--view roots`` over the stream, which sends every incident: symptoms are left out, and a ``symptom``
    event is passed on only for an incident shown before (it was standalone, now it is grouped under a root)."""

    def __init__(self) -> None:
        self._shown: set[str] = set()

    def admits(self, event: Event) -> bool:
        data = _event_data(event)
        if event.event == "incident":
            if data.get("caused_by"):
                return False
            self._shown.add(str(data.get("id")))
        elif event.event == "symptom":
            return str(data.get("id")) in self._shown
        return True


def event_line(event: Event) -> str:
    """One line per stream event for --watch (table output): what changed, where, how much."""
    try:
        data = json.loads(event.data)
    except ValueError:
        return f"{event.event}: {event.data}"
    if event.event == "merged" and isinstance(data, dict):
        return f"MERGED     {data.get('id')} into {data.get('merged_into')}"
    if event.event == "symptom" and isinstance(data, dict):
        return f"SYMPTOM    {data.get('id')} of {data.get('caused_by')}"
    if event.event != "incident" or not isinstance(data, dict):
        return f"{event.event.upper():<10} {event.data}"
    return item_line(data)


def item_line(item: Mapping[str, Any]) -> str:
    """An incident on one line: status, severity, rule, where, how much, id, and what marks it."""
    key = item.get("key") or {}
    flags = "".join(f" {flag}" for flag in ("acked", "silenced") if item.get(flag))
    if item.get("caused_by"):
        flags += f" symptom-of={item['caused_by']}"
    affected = item.get("affected")
    if isinstance(affected, dict) and affected.get("incidents"):
        flags += f" affects={affected.get('incidents')}/{affected.get('workloads')}/{affected.get('pods')}"
    return (
        f"{str(item.get('status', '')).upper():<10} {item.get('severity', ''):<8} {item.get('rule')}  "
        f"{key.get('cluster')}/{key.get('namespace')}/{key.get('workload')}  "
        f"count={item.get('count')} last={_short_time(str(item.get('last_seen')))}  id={item.get('id')}{flags}"
    )
