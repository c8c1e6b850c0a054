"""aiokafka consumer: batches via getmany, offsets from the store, store-first commits.

Delivery: a batch's intervals and its next offsets are written in one store transaction; the offset write
checks the previous value, so a zombie consumer after a rebalance cannot apply a batch twice. On any
assignment, and after any failed or refused write, the consumer seeks to the offsets in the store. Kafka
commits are advisory (for lag tooling) and bounded by a timeout, as is every call that can hang in an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import operator
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from analyzer.config import Settings
from analyzer.errors import StaleOffsetError, StoreError
from analyzer.incidents import StreamClock
from analyzer.ingest.records import RAW, KafkaTimes, install
from analyzer.metrics import Metrics
from analyzer.pipeline import Pipeline
from analyzer.store import Store
from analyzer.types import Changes, OffsetUpdate, Rule
from analyzer.unclassified import with_rules

T = TypeVar("T")

log = structlog.get_logger("analyzer.ingest")
install()  # raw records for consumers that ask for them (RAW below); aiokafka's own path for any other

_VALUE = operator.attrgetter("value")
_TIMESTAMP = operator.attrgetter("timestamp")
PROBE_INTERVAL = 5.0  # seconds between broker probes (end offsets: lag and readiness)
IDLE_STREAM_WRITE = 2.0  # seconds between stream-time writes while the topic is quiet
COMMIT_TIMEOUT = 5.0
STORE_BACKOFF_MIN = 0.5  # pause after a failed store write, doubling per failure up to the max
STORE_BACKOFF_MAX = 2.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, ingest: KafkaIngest) -> None:
        self._ingest = ingest

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._ingest.forget(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._ingest.seek_stored(assigned)


class KafkaIngest:
    def __init__(
        self,
        settings: Settings,
        pipeline: Callable[[], Pipeline],
        store: Store,
        metrics: Metrics,
        clock: StreamClock,
    ) -> None:
        self.settings = settings
        self._pipeline = pipeline  # a getter: SIGHUP swaps the catalogue between batches
        # The pipeline's state (per-pod readiness, live keys, templates) is touched on this one thread only:
        # each batch, each eviction and each read of its sizes. The HTTP API shares the event loop, so matching
        # must not run on it; one dedicated thread keeps batches and evictions in order, never concurrent.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._book: dict[TopicPartition, int] = {}  # next offsets as we believe the store holds them
        self._consumer: AIOKafkaConsumer | None = None
        self.broker_up = False
        self.last_batch_at: float | None = None
        self._batches = 0
        self._last_stream_write = 0.0
        self._last_probe = 0.0
        self._store_backoff = 0.0  # seconds slept after the last failed write; 0 while writes succeed
        self._frozen_with: Pipeline | None = None  # the pipeline (catalogue) in place when the heap was frozen
        self._advising: asyncio.Task[None] | None = None  # the advisory Kafka commit in flight
        self._advice: dict[TopicPartition, int] = {}  # positions stored but not yet sent to Kafka

    # -- readiness ------------------------------------------------------------------------------------------

    @property
    def consuming(self) -> bool:
        return self._consumer is not None and self.broker_up

    # -- rebalance ------------------------------------------------------------------------------------------

    def forget(self, partitions: Any) -> None:
        for tp in partitions:
            self._book.pop(tp, None)
            self._advice.pop(tp, None)
        # A revoked partition's lag is no longer ours to report: a frozen series would sum with the new owner's.
        self.metrics.drop_partitions((tp.topic, tp.partition) for tp in partitions)

    async def seek_stored(self, partitions: Any, fallback: Mapping[TopicPartition, int] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        topics = {tp.topic for tp in partitions}
        stored: dict[str, dict[int, int]] = {}
        for topic in topics:
            stored[topic] = await asyncio.wait_for(
                self.store.load_offsets(self.settings.kafka_group, topic), self.settings.store_timeout
            )
        beginning = []
        for tp in partitions:
            offset = stored[tp.topic].get(tp.partition)
            if offset is not None:
                self._book[tp] = offset
                consumer.seek(tp, offset)
            else:
                self._book.pop(tp, None)
                if fallback and tp in fallback:
                    consumer.seek(tp, fallback[tp])
                else:
                    # Nothing stored: the store is the truth, so start at the beginning. Kafka's committed
                    # offsets are advisory; trusting them would skip data with a new store and an old group.
                    beginning.append(tp)
        if beginning:
            # One request for all: each call waits for the fetcher's offset reset (~0.4 s each on Tansu), and a
            # call per partition made a first start with 4 partitions 1.5 s slower.
            await consumer.seek_to_beginning(*beginning)
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in partitions))

    # -- main loop ------------------------------------------------------------------------------------------

    def _consumer_options(self) -> dict[str, Any]:
        s = self.settings
        options: dict[str, Any] = {
            "bootstrap_servers": s.kafka_bootstrap,
            "group_id": s.kafka_group,
            "client_id": s.kafka_client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "request_timeout_ms": int(s.kafka_request_timeout * 1000),
            "max_poll_records": s.kafka_max_records,
            "security_protocol": s.kafka_security_protocol,
            # Batches hand out aiokafka's C records (offset, value, timestamp), not a ConsumerRecord each.
            "value_deserializer": RAW,
        }
        # How long the group waits for a consumer that died without leaving (SIGKILL, OOM, node loss) before
        # its partitions move on: a restart waits about that long. aiokafka's default (10 s) when unset.
        session = s.kafka_session_timeout
        if session is not None:
            options["session_timeout_ms"] = int(session * 1000)
            options["heartbeat_interval_ms"] = max(100, int(session * 1000 / 3))
        if s.kafka_sasl_mechanism:
            options.update(
                sasl_mechanism=s.kafka_sasl_mechanism,
                sasl_plain_username=s.kafka_sasl_username,
                sasl_plain_password=s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None,
            )
        return options

    async def run(self, stop: asyncio.Event) -> None:
        # What exists before consuming (modules, the compiled catalogue, the app) lives as long as the ingest:
        # out of the cyclic collector's sight, a full collection stops walking it. The batches' records made
        # 6-7 full collections of ~50 ms per 300k records (~1.2 µs a record, more than the store); 17 ms frozen.
        gc.freeze()
        self._frozen_with = self._pipeline()
        try:
            await self._consume(stop)
        finally:
            self._thread.shutdown(wait=False)  # idle between batches by now: a batch always finishes first
            gc.unfreeze()

    async def _consume(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            consumer = AIOKafkaConsumer(**self._consumer_options())
            try:
                await asyncio.wait_for(consumer.start(), self.settings.kafka_request_timeout)
            except (KafkaError, TimeoutError, OSError) as exc:
                self.broker_up = False
                log.warning("broker unreachable", error=str(exc) or type(exc).__name__, retry_in=backoff)
                await _close(consumer)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            self._consumer = consumer
            self.broker_up = True
            consumer.subscribe(list(self.settings.kafka_topics), listener=_Rebalance(self))
            log.info("consuming", topics=list(self.settings.kafka_topics), group=self.settings.kafka_group)
            try:
                await self._loop(consumer, stop)
            finally:
                await self._last_advice(consumer)
                self._consumer = None
                self.forget(list(self._book))  # and their lag series: this consumer owns nothing now
                await _close(consumer)

    async def _loop(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        s = self.settings
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                fetch = asyncio.create_task(
                    consumer.getmany(timeout_ms=int(s.kafka_fetch_timeout * 1000), max_records=s.kafka_max_records)
                )
                done, _ = await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if fetch not in done:
                    fetch.cancel()
                    break
                try:
                    batch = fetch.result()
                except KafkaError as exc:
                    log.warning("fetch failed", error=str(exc))
                    await _sleep_or_stop(stop, 1.0)
                    continue
                if batch:
                    # Finish the batch even when asked to stop: SIGTERM means "store what you have, then go".
                    await self._process(consumer, batch)
                else:
                    await self._idle()
                await self._probe(consumer)
        finally:
            stopping.cancel()

    async def _process(self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, list[Any]]) -> None:
        self._batches += 1
        partitions = sorted(f"{tp.topic}/{tp.partition}" for tp, records in batch.items() if records)
        # Every line logged while this batch is handled (ours and the store's) says which batch and partitions.
        with structlog.contextvars.bound_contextvars(batch=self._batches, partitions=partitions):
            await self._process_batch(consumer, batch)

    async def _process_batch(self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, list[Any]]) -> None:
        started = time.perf_counter()
        values: list[bytes] = []
        times: list[int] = []  # Kafka times (ms); converted only for the records the pipeline decodes
        offsets: list[OffsetUpdate] = []
        first: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            floor = self._book.get(tp)
            if records and floor is not None and records[0].offset < floor:
                # Already stored. A rebalance can run while a batch is in flight: the assignment reads the
                # store's offset before that batch's write lands and seeks back, then the write succeeds and
                # moves the book forward; the re-fetched records would pass the offset check and count twice.
                records = [r for r in records if r.offset >= floor]
            if not records:
                continue
            first[tp] = records[0].offset
            # C loops (map over attrgetter), not Python ones: this is the one per-record step on the event loop.
            chunk = list(map(_VALUE, records))
            if None in chunk:  # a tombstone (null value): an empty record
                chunk = [v or b"" for v in chunk]
            values += chunk
            times += map(_TIMESTAMP, records)
            self.metrics.records.labels(tp.topic).inc(len(records))
            self.metrics.bytes.labels(tp.topic).inc(sum(map(len, chunk)))
            offsets.append(OffsetUpdate(tp.topic, tp.partition, self._book.get(tp), records[-1].offset + 1))
        if not offsets:
            return  # every record of the batch was stored already

        pipeline = self._pipeline()
        if pipeline is not self._frozen_with:
            # A reload swapped the catalogue: the old one was frozen, so its cycles would never be collected.
            # Once per reload: thaw, collect (tens of ms), freeze what lives now, the new catalogue with it.
            self._frozen_with = pipeline
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        with self.metrics.stage.labels("match").time():
            # On the pipeline's own thread (see __init__), never on the event loop the HTTP API shares.
            result = await self._on_pipeline_thread(pipeline, values, KafkaTimes(times))
        if result.max_event_time is not None:
            self.clock.observe(result.max_event_time)
        stream_time = self.clock.now()
        changes = Changes(merges=tuple(result.intervals), stream_time=stream_time)
        rules = pipeline.rules  # the catalogue the batch was matched with, even if a reload swapped it since
        rules = with_rules(rules, result.unclassified_rules)  # and the templates of errors no rule knows
        try:
            with self.metrics.stage.labels("store").time():
                await asyncio.wait_for(
                    self.store.commit_batch(self.settings.kafka_group, changes, offsets, rules),
                    self.settings.store_timeout,
                )
        except StaleOffsetError as exc:
            log.warning("batch refused: another consumer owns a partition now; re-reading offsets", error=str(exc))
            await self._resync(first)
            return
        except (StoreError, TimeoutError) as exc:
            # Logged once per streak (the store logs the streak as an error, and its end); bounded back-off between
            # tries. Re-reading offsets from a store that just failed fails alike: not logged again.
            first_failure = self._store_backoff == 0.0
            (log.warning if first_failure else log.debug)(
                "store write failed; batch will be re-read", error=(str(exc) or type(exc).__name__)[:300]
            )
            self._store_backoff = min(max(self._store_backoff * 2, STORE_BACKOFF_MIN), STORE_BACKOFF_MAX)
            await self._resync(first, quiet=True)
            await asyncio.sleep(self._store_backoff)
            return
        self._store_backoff = 0.0
        for update in offsets:
            self._book[TopicPartition(update.topic, update.partition)] = update.next
        self._last_stream_write = time.monotonic()
        self.last_batch_at = time.time()
        self._count(result, rules)
        await self._evict(pipeline, stream_time)
        self.metrics.stage.labels("total").observe(time.perf_counter() - started)
        log.debug(
            "batch stored",
            records=len(values),
            candidates=result.candidates,
            intervals=len(result.intervals),
            partitions=len(offsets),
        )
        self._advise(consumer, {TopicPartition(u.topic, u.partition): u.next for u in offsets})

    def _advise(self, consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> None:
        """Kafka's committed offsets, for lag tooling only (the store holds the truth): sent in the background,
        one at a time, so the next batch does not wait a broker round trip. Positions not sent yet are merged
        into the next commit; a commit that fails is not retried (the next batch's carries newer offsets)."""
        self._advice.update(positions)
        if self._advising is not None and not self._advising.done():
            return
        advice, self._advice = self._advice, {}

        async def commit() -> None:
            try:
                await asyncio.wait_for(consumer.commit(advice), COMMIT_TIMEOUT)
            except (KafkaError, TimeoutError) as exc:
                log.debug("advisory kafka commit failed", error=str(exc) or type(exc).__name__)

        self._advising = asyncio.get_running_loop().create_task(commit())

    async def _last_advice(self, consumer: AIOKafkaConsumer) -> None:
        """Before leaving the group: the commit in flight finished, and the positions not sent yet sent."""
        if self._advising is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._advising  # bounded by COMMIT_TIMEOUT, never raises KafkaError
            self._advising = None
        if self._advice:
            self._advise(consumer, {})
            await self._last_advice(consumer)

    def _count(self, result: Any, rules: Mapping[str, Rule]) -> None:
        for reason, n in result.rejected.items():
            self.metrics.rejected.labels(reason).inc(n)
        for rule_id, n in result.matches.items():
            rule = rules.get(rule_id)
            if rule is not None:
                self.metrics.matches.labels(rule_id, rule.category.value, rule.severity.value).inc(n)
        for rule_id, n in result.overflowed.items():
            self.metrics.overflow.labels(rule_id).inc(n)
        for component, n in result.unclassified.items():
            self.metrics.unclassified.labels(component).inc(n)
        for component, n in result.unclassified_overflow.items():
            self.metrics.unclassified_overflow.labels(component).inc(n)
        if result.clamped:
            self.metrics.clamped.inc(result.clamped)

    async def _resync(self, fallback: Mapping[TopicPartition, int], quiet: bool = False) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        try:
            await self.seek_stored(consumer.assignment(), fallback)
        except (StoreError, TimeoutError) as exc:
            # Cannot read offsets: rewind to where the failed batch began; the next write re-checks.
            (log.debug if quiet else log.error)("cannot re-read offsets", error=(str(exc) or type(exc).__name__)[:300])
            for tp, offset in fallback.items():
                if tp in consumer.assignment():
                    consumer.seek(tp, offset)

    async def _idle(self) -> None:
        """A quiet topic: stream time follows the wall clock, so incidents settle in a quiet cluster too."""
        if time.monotonic() - self._last_stream_write < IDLE_STREAM_WRITE:
            return
        self._last_stream_write = time.monotonic()
        stream_time = self.clock.now()
        failing = self.store.write_failure() is not None  # then the store has logged it: once per streak
        try:
            await asyncio.wait_for(
                self.store.commit_batch(self.settings.kafka_group, Changes(stream_time=stream_time), [], {}),
                self.settings.store_timeout,
            )
        except (StoreError, TimeoutError) as exc:
            (log.debug if failing else log.warning)(
                "cannot record stream time", error=(str(exc) or type(exc).__name__)[:300]
            )
        await self._evict(self._pipeline(), stream_time)

    async def _on_pipeline_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _evict(self, pipeline: Pipeline, stream_time: float) -> None:
        """Settled state out, then the sizes gauged: on the pipeline's own thread, between batches."""

        def evict() -> tuple[int, int]:
            pipeline.evict(stream_time)
            return pipeline.sizes()

        live_keys, templates = await self._on_pipeline_thread(evict)
        self.metrics.live_intervals.set(live_keys)
        self.metrics.unclassified_templates.set(templates)

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """Every few seconds: ask the broker for end offsets. Gives lag, and notices an outage."""
        if time.monotonic() - self._last_probe < PROBE_INTERVAL:
            return
        self._last_probe = time.monotonic()
        assigned = list(consumer.assignment())
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(assigned), 3.0) if assigned else {}
            if not assigned:
                await asyncio.wait_for(consumer.topics(), 3.0)
        except (KafkaError, TimeoutError, OSError) as exc:
            if self.broker_up:
                log.warning("broker not answering", error=str(exc) or type(exc).__name__)
            self.broker_up = False
            return
        if not self.broker_up:
            log.info("broker back")
        self.broker_up = True
        for tp, end in ends.items():
            position = self._book.get(tp)
            if position is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - position))


async def _close(consumer: AIOKafkaConsumer) -> None:
    with contextlib.suppress(KafkaError, TimeoutError, OSError):
        await asyncio.wait_for(consumer.stop(), 10.0)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
