"""The ingest's raw record path hands out what aiokafka's own path does: the same records (offset, value,
timestamp) and the same positions, batch for batch, on real record batches (lz4, offset gaps as compaction
leaves them, a fetch that starts inside a batch)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from analyzer.ingest import records as raw

TP = TopicPartition("t", 0)
ORIGINAL = raw._AIOKAFKA_PARTITION_RECORDS  # aiokafka's own, whatever install() has done in this process


def _fetch_data() -> bytes:
    """Four lz4 batches of 50 records; the third starts 7 offsets after the second ends (compaction)."""
    data = b""
    base = 0
    for n in range(4):
        builder = DefaultRecordBatchBuilder(
            magic=2,
            compression_type=3,
            is_transactional=False,
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=-1,
            batch_size=1 << 24,
        )
        for i in range(50):
            value = None if (n, i) == (1, 3) else f"record {n}/{i} ".encode() * 20  # one tombstone
            builder.append(i, timestamp=1_700_000_000_000 + 1000 * n + i, key=b"pod", value=value, headers=[])
        batch = bytearray(builder.build())
        struct.pack_into(">q", batch, 0, base)  # the base offset, as the broker assigns it
        data += bytes(batch)
        base += 50 + (7 if n == 1 else 0)
    return data


class _Assignment:
    """Stands in for aiokafka's subscription state: one active, unpaused partition at a position."""

    active = True
    paused = False

    def __init__(self, position: int) -> None:
        self.position = position

    def state_value(self, _tp: TopicPartition) -> _Assignment:
        return self

    def consumed_to(self, offset: int) -> None:
        self.position = offset


def _drain(make: Any, deserializer: Any, start: int, limit: int | None) -> tuple[list[Any], list[int]]:
    partition = make(TP, MemoryRecords(_fetch_data()), [], start, None, deserializer, True, 0)
    assignment = _Assignment(start)
    result = raw._FetchResult(TP, assignment=assignment, partition_records=partition, backoff=0)
    got, positions = [], []
    while result.has_more():
        batch = result.getall(limit)
        got += [(r.offset, r.value, r.timestamp) for r in batch]
        positions.append(assignment.position)
    return got, positions


@pytest.mark.parametrize("start", [0, 1, 49])  # a fetch answers from the batch that holds its offset
@pytest.mark.parametrize("limit", [None, 1, 7, 50, 64, 5000])
def test_raw_batches_match_aiokafka_record_for_record(start: int, limit: int | None) -> None:
    expected = _drain(ORIGINAL, None, start, limit)
    got = _drain(raw._partition_records, raw.RAW, start, limit)
    assert got == expected
    offsets = [offset for offset, _, _ in got[0]]
    assert offsets == [*range(start, 100), *range(107, 207)]  # the compaction gap skipped, nothing invented
    assert {offset: value for offset, value, _ in got[0]}[53] is None  # a tombstone (the ingest: an empty value)


def test_a_consumer_without_raw_gets_aiokafkas_own_records() -> None:
    partition = raw._partition_records(TP, MemoryRecords(_fetch_data()), [], 0, None, None, True, 0)
    assert type(partition) is ORIGINAL  # not even a subclass: nothing added per record
    assert type(next(partition)).__name__ == "ConsumerRecord"
    got, _ = _drain(raw._partition_records, None, 0, None)
    assert len(got) == 200


def test_kafka_times_convert_on_read_and_fall_back_for_none() -> None:
    times = raw.KafkaTimes([1_700_000_000_123, 0, -1], now=42.0)
    assert (len(times), times[0], times[1], times[2]) == (3, 1_700_000_000.123, 42.0, 42.0)
    assert list(times[1:]) == [42.0, 42.0]
