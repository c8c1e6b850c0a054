"""Fixtures for the API tests (builders in tests/api/support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api.support import Harness, make_settings, running


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(make_settings(tmp_path)) as harness:
        yield harness
