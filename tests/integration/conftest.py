"""Real components for the service tests: a Tansu broker, librdkafka producers, the service as a subprocess.

Nothing is mocked: records go through confluent-kafka (the library inside Fluent Bit's kafka output) into
the bundled Tansu broker, the real ``mesh-analyzer serve`` consumes them, and the tests read the incidents
back from the store the service wrote (an SQLite file or a fresh PostgreSQL schema).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from analyzer.broker import LocalBroker
from tests.conftest import pg_schema
from tests.integration.support import Services, StoreView


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """One Tansu broker for the session (memory only). A test that freezes a broker starts its own."""
    b = LocalBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log").start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty stores of one kind: SQLite files, or PostgreSQL schemas (dropped at the end)."""
    kind = request.param
    dsn = request.getfixturevalue("pg_dsn") if kind == "postgres" else None
    with contextlib.ExitStack() as stack:

        def make() -> str:
            if dsn is None:
                return f"sqlite:///{tmp_path / f'store-{uuid.uuid4().hex[:8]}.db'}"  # sqlite:////tmp/...
            return stack.enter_context(pg_schema(dsn))

        yield make


@pytest.fixture
def store_url(new_store: Callable[[], str]) -> str:
    """The store a test's services share (every test using it runs on SQLite and on PostgreSQL)."""
    return new_store()


@pytest.fixture
def pg_store_url(pg_dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL schema: the shared store several replicas write to."""
    with pg_schema(pg_dsn) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def open_view() -> Iterator[Callable[[str], StoreView]]:
    """Opens StoreViews on store URLs; all closed at the end of the test."""
    views: list[StoreView] = []

    def factory(url: str) -> StoreView:
        view = StoreView(url)
        views.append(view)
        return view

    yield factory
    for view in views:
        view.close()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Starts services for one test; any still running at the end is killed."""
    s = Services(tmp_path)
    yield s
    for service in s.started:
        service.cleanup()


@pytest.fixture
def group() -> str:
    return f"it-group-{uuid.uuid4().hex[:12]}"
