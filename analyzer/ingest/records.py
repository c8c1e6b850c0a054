"""Kafka records as the ingest needs them: whole decoded batches, without Python work per record.

aiokafka hands out records one at a time: a generator step, an offset check, a ``ConsumerRecord`` (an
11-field dataclass built in Python) and a list append per record. On 5000 lz4 records of 600 B that is
~1.7 µs a record, decompression included; taking each decoded batch whole (``list(batch)``, in C) ~0.85 µs.
The ingest reads only a record's offset, value and timestamp, which aiokafka's C record already has. So a
consumer created with ``value_deserializer=RAW`` gets those C records, a batch at a time, and leaves the
positions aiokafka's own path leaves. Any other consumer in the process gets aiokafka's own classes (decided
once per fetched partition), so it pays nothing per record.

Relies on aiokafka's fetcher internals (``PartitionRecords``, ``FetchResult``), pinned to the version in
pyproject.toml; tests/integration/test_raw_records.py compares both paths record for record, and the
integration tests drain a real broker through this one."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, overload

import aiokafka.consumer.fetcher as _fetcher
import aiokafka.errors as _errors


def RAW(value: bytes | None) -> bytes | None:  # a marker, named like the constant it is
    """The value deserializer that asks for raw records (never called on the raw path)."""
    return value


_AIOKAFKA_PARTITION_RECORDS = _fetcher.PartitionRecords


class _PartitionRecords(_fetcher.PartitionRecords):  # type: ignore[misc]  # aiokafka is untyped
    """One partition's fetched data for a RAW consumer, handed out a decoded batch at a time (``take``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[Any] = []  # the current batch's records not handed out yet, from _at
        self._at = 0
        self._batch_end: int | None = None  # the current batch's next offset, applied once it is handed out

    def __next__(self) -> Any:  # getone(): one record through the same buffer
        got = self.take(1)
        if not got:
            raise StopIteration
        return got[0]

    def take(self, limit: int | None) -> list[Any]:
        """Up to ``limit`` records (all if None), moving ``next_fetch_offset`` as aiokafka's generator does."""
        want = sys.maxsize if limit is None else limit
        out: list[Any] = []
        while len(out) < want:
            if self._at < len(self._pending):
                chunk = self._pending[self._at : self._at + want - len(out)]
                self._at += len(chunk)
                out += chunk
                self.next_fetch_offset = chunk[-1].offset + 1
                continue
            if self._batch_end is not None:
                # A batch's last offset survives compaction of its last record: fetch from after the batch.
                self.next_fetch_offset, self._batch_end = self._batch_end, None
            batch = self._next_batch()
            if batch is None:
                break
            records = list(batch)  # decoded in C, no Python per record
            if records and records[0].offset < self.next_fetch_offset:
                records = [r for r in records if r.offset >= self.next_fetch_offset]  # a batch fetched mid-way
            self._pending, self._at, self._batch_end = records, 0, batch.next_offset
        return out

    def _next_batch(self) -> Any:
        records = self._records
        while records.has_next():
            batch = records.next_batch()
            if self._check_crcs and not batch.validate_crc():
                raise _errors.CorruptRecordException(f"Invalid CRC - {self._tp}")
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                continue
            return batch
        return None


class _FetchResult(_fetcher.FetchResult):  # type: ignore[misc]
    def getall(self, max_records: int | None = None) -> list[Any]:
        records = self._partition_records
        if type(records) is not _PartitionRecords:
            return super().getall(max_records)  # type: ignore[no-any-return]
        if not self.check_assignment(self._topic_partition) or not self.has_more():
            return []
        got = records.take(max_records)
        self._update_position()
        if max_records is None or len(got) < max_records:
            self._partition_records: Any = None  # drained: the fetcher asks for more
        return got


def _partition_records(
    tp: Any,
    records: Any,
    aborted_transactions: Any,
    fetch_offset: int,
    key_deserializer: Any,
    value_deserializer: Any,
    check_crcs: bool,
    isolation_level: int,
) -> Any:
    """What aiokafka's fetcher builds for a partition's fetched data: ours for a RAW consumer (transactions,
    read_committed, keep aiokafka's per-record path); for any other consumer aiokafka's own class itself, so a
    consumer that did not ask pays nothing per record."""
    raw = value_deserializer is RAW and key_deserializer is None and isolation_level != _fetcher.READ_COMMITTED
    cls = _PartitionRecords if raw else _AIOKAFKA_PARTITION_RECORDS
    args = (aborted_transactions, fetch_offset, key_deserializer, value_deserializer, check_crcs, isolation_level)
    return cls(tp, records, *args)


def install() -> None:
    """Make aiokafka's fetcher build our partition records and results (idempotent; consumers without RAW get
    aiokafka's own records; the result's ``getall`` costs them one type check a call)."""
    _fetcher.PartitionRecords = _partition_records
    _fetcher.FetchResult = _FetchResult


class KafkaTimes(Sequence[float]):
    """Record times in seconds, converted only where read (the pipeline reads those of decoded records only).

    Kafka times are milliseconds; a time of 0 or less (none known) reads as the time the batch arrived.
    """

    __slots__ = ("_ms", "_now")

    def __init__(self, ms: list[int], now: float | None = None) -> None:
        self._ms = ms
        self._now = time.time() if now is None else now

    def __len__(self) -> int:
        return len(self._ms)

    @overload
    def __getitem__(self, i: int) -> float: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[float]: ...
    def __getitem__(self, i: int | slice) -> float | Sequence[float]:
        if isinstance(i, slice):
            return [self._time(ms) for ms in self._ms[i]]
        return self._time(self._ms[i])

    def _time(self, ms: int | None) -> float:
        return ms / 1000.0 if ms and ms > 0 else self._now
