"""Event times from a node clock running ahead are clamped to the record's Kafka time (pipeline + real store)."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from analyzer.config import Settings
from analyzer.correlation import SIGNALS
from analyzer.incidents import MAX_FUTURE, StreamClock
from analyzer.ingest.kafka import KafkaIngest
from analyzer.match import CompiledCatalogue, compile_catalogue
from analyzer.metrics import Metrics
from analyzer.pipeline import Pipeline
from analyzer.store import IncidentQuery, IncidentRow, open_store
from analyzer.types import Catalogue, Changes, Status
from tests.store.test_pipeline_store import make_rule

KAFKA = 1_700_000_000.0  # when the records reached Kafka
RULE = make_rule("clock-skew-probe", "SKEWPROBE-FAILED", transient=None, resolve_after=60)
CATALOGUE = Catalogue((RULE,), digest="future-times")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> CompiledCatalogue:
    return compile_catalogue(CATALOGUE, SIGNALS, cache_dir=tmp_path_factory.mktemp("hs-future"))


def record(workload: str, event_time: float) -> bytes:
    kubernetes = {"namespace_name": "shop", "container_name": "app", "labels": {"app": workload}}
    return orjson.dumps({"log": "SKEWPROBE-FAILED upstream", "@timestamp": event_time, "kubernetes": kubernetes})


@pytest.mark.parametrize("store_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
async def test_a_future_event_time_is_clamped_to_the_kafka_time(
    store_kind: str, compiled: CompiledCatalogue, tmp_path: object, request: pytest.FixtureRequest
) -> None:
    if store_kind == "sqlite":
        url = f"sqlite:///{tmp_path}/s.db"
        schema = None
    else:
        from tests.conftest import pg_schema

        schema = pg_schema(request.getfixturevalue("pg_dsn"))
        url = schema.__enter__()
    store = open_store(url)
    await store.open()
    try:
        pipeline = Pipeline(CATALOGUE, compiled, default_cluster="c1")
        values = [
            record("skewed", KAFKA + 86_400),  # a node clock a day ahead
            record("slightly", KAFKA + MAX_FUTURE - 1),  # within the allowance: kept as written
            record("normal", KAFKA - 2),
        ]
        result = pipeline(values, [KAFKA] * len(values))
        assert result.clamped == 1 and sum(result.matches.values()) == 3
        assert result.max_event_time == KAFKA + MAX_FUTURE - 1  # stream time is not dragged a day ahead
        await store.commit_batch("g", Changes(tuple(result.intervals), KAFKA), [], CATALOGUE.by_id())

        def last_seen(rows: list[IncidentRow], workload: str) -> float:
            return next(r.last_seen for r in rows if r.key.workload == workload)

        rows = (await store.list_incidents(IncidentQuery(stream_time=KAFKA))).items
        assert last_seen(rows, "skewed") == KAFKA
        assert last_seen(rows, "slightly") == KAFKA + MAX_FUTURE - 1
        assert last_seen(rows, "normal") == KAFKA - 2
        # The clamped incident resolves like any other once quiet for resolve_after, and does not sort first.
        assert rows[0].key.workload == "slightly"
        later = (await store.list_incidents(IncidentQuery(stream_time=KAFKA + RULE.resolve_after + 1))).items
        assert {r.key.workload: r.status for r in later}["skewed"] is Status.RESOLVED
        row = await store.get_incident(next(r.id for r in rows if r.key.workload == "skewed"), KAFKA)
        assert row is not None and row.head[0].time == KAFKA  # the evidence carries the clamped time too
    finally:
        await store.close()
        if schema is not None:
            schema.__exit__(None, None, None)


def test_without_a_kafka_time_the_line_time_is_kept(compiled: CompiledCatalogue) -> None:
    """Records with no broker time (0: files, tools) keep their own times."""
    pipeline = Pipeline(CATALOGUE, compiled, default_cluster="c1")
    result = pipeline([record("w", KAFKA + 86_400)], [0.0])
    assert result.clamped == 0 and result.intervals[0].last_seen == KAFKA + 86_400


def test_clamped_records_are_counted_in_the_metric(compiled: CompiledCatalogue, tmp_path: object) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    pipeline = Pipeline(CATALOGUE, compiled, default_cluster="c1")
    ingest = KafkaIngest(
        Settings(),
        lambda: pipeline,
        open_store(f"sqlite:///{tmp_path}/m.db"),
        metrics,
        StreamClock(lambda: KAFKA),
    )
    assert registry.get_sample_value("analyzer_event_time_clamped_total") == 0
    result = pipeline([record("a", KAFKA + 3600), record("b", KAFKA + 7200), record("c", KAFKA)], [KAFKA] * 3)
    ingest._count(result, pipeline.rules)  # what the consumer does after storing a batch
    assert registry.get_sample_value("analyzer_event_time_clamped_total") == 2
