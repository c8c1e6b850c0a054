"""The service's JSON log lines: library records and asyncio callback failures carry real tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import asyncio, logging
from analyzer.logging import configure
configure("info", "json")
try:
    1 / 0
except ZeroDivisionError as exc:
    logging.getLogger("aiokafka").exception("library failure")
    asyncio.new_event_loop().call_exception_handler({"message": "Exception in callback", "exception": exc})
"""


def test_library_and_asyncio_errors_log_their_traceback_as_text() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True)
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert [r["event"] for r in records] == ["library failure", "Exception in callback"]
    for record in records:
        assert "Traceback (most recent call last)" in record["exception"]
        assert "ZeroDivisionError: division by zero" in record["exception"]
        assert "<traceback object" not in json.dumps(record)
