"""Truncate-and-confirm: a prefilter over windows of the literals flags exactly the records the full literals do."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.match import CompiledCatalogue, RecordPrefilter, compile_catalogue
from analyzer.match import scanner as scanner_module
from analyzer.match.levels import LEVEL_LITERALS, CombinedPrefilter
from analyzer.match.scanner import scan_batches, screen_and_scan
from analyzer.match.windows import WINDOW, Windowed, choose_windows, compile_windows
from tests.match.helpers import catalogue, rule


def full(entries: list[tuple[bytes, bool, bytes]]) -> Windowed:
    """The reference: a database of the full forms, every hit a candidate."""
    return compile_windows([(form, caseless, form) for form, caseless, _ in entries])


def test_long_forms_get_a_window_of_themselves_short_and_caseless_ones_stay_whole() -> None:
    forms = [(b"upstream connect error or disconnect/reset", False), (b"DC,", False), (b"Not Ready Yet", True)]
    chosen = choose_windows(forms)
    window = chosen[forms[0]]
    assert len(window) == WINDOW and window in forms[0][0]
    assert chosen[forms[1]] == b"DC," and chosen[forms[2]] == b"Not Ready Yet"


def test_the_window_avoids_what_ordinary_traffic_is_full_of() -> None:
    # "response_code" is in every JSON access log of the ordinary sample; the other end of the literal is not.
    form = (b'response_code":503,"upstream_cluster":"outbound|9080||zz-qq-xx', False)
    assert b"response" not in choose_windows([form])[form]


def test_a_window_hit_without_its_full_literal_is_no_candidate() -> None:
    entries = [(b"connection refused by the upstream", False, b"refused "), (b"DC,", False, b"DC,")]
    windowed = compile_windows(entries)
    records = [
        b"dial: connection refused by the upstream",  # the full literal
        b"request refused by policy",  # only the window
        b"flags DC,URX",  # a short literal: its own window
        b"nothing here",
        b"refused by the upstream",  # the window and the literal's tail, not its head
    ]
    assert scan_batches(windowed, records).tolist() == [0, 2]
    assert scan_batches(full(entries), records).tolist() == [0, 2]


def test_forms_sharing_a_window_are_each_confirmed() -> None:
    entries = [(b"aaa connect error", False, b"connect "), (b"bbb connect error", False, b"connect ")]
    records = [b"x bbb connect error", b"x ccc connect error", b"aaa connect error"]
    assert scan_batches(compile_windows(entries), records).tolist() == [0, 2]


def test_a_window_that_is_also_a_whole_literal_needs_no_confirmation() -> None:
    entries = [(b"rate limited by the quota", False, b"rate lim"), (b"rate lim", False, b"rate lim")]
    windowed = compile_windows(entries)
    assert windowed.confirm == (None,)
    assert scan_batches(windowed, [b"rate limited", b"x"]).tolist() == [0]


LITERALS = [b"connection refused", b"no healthy upstream", b'\\"DC\\"', b"DC,", b"upstream_reset_before"]
records = st.lists(
    st.lists(
        st.sampled_from([b"x", b" ", b"\n", b"connection ", b"refused", b"upstream", b"no healthy ", b"DC", b","])
        | st.sampled_from(LITERALS)
        | st.binary(max_size=6),
        max_size=8,
    ).map(b"".join),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(values=records, cut=st.integers(min_value=1, max_value=20))
def test_windows_flag_exactly_what_the_full_literals_flag(values: list[bytes], cut: int) -> None:
    # Any substring of a literal will do as its window (the choice only changes the speed); each at ``cut``.
    entries = [(lit, False, lit[min(cut, len(lit) - 3) : min(cut, len(lit) - 3) + 8]) for lit in LITERALS]
    windowed, reference = compile_windows(entries), full(entries)
    assert scan_batches(windowed, values).tolist() == scan_batches(reference, values).tolist()
    got, reference_suspects = screen_and_scan(windowed, values, 40), screen_and_scan(reference, values, 40)
    assert got[0].tolist() == reference_suspects[0].tolist() and got[1].tolist() == reference_suspects[1].tolist()


def test_small_chunks_give_the_same_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [(b"connection refused by the upstream", False, b"refused ")]
    values = [b"connection refused by the upstream" if i % 5 == 0 else b"refused by x" for i in range(400)]
    expected = [i for i in range(400) if i % 5 == 0]
    assert scan_batches(compile_windows(entries), values).tolist() == expected
    monkeypatch.setattr(scanner_module, "BATCH_LINES", 3)
    monkeypatch.setattr(scanner_module, "BATCH_BYTES", 50)
    assert scan_batches(compile_windows(entries), values).tolist() == expected


def test_the_windows_come_back_from_the_cache(tmp_path: Path) -> None:
    cat = catalogue(rule("refused", r"dial tcp [0-9.:]+: connect: connection refused"), rule("dc", r"[ ,]DC,"))
    first = compile_catalogue(cat, cache_dir=tmp_path)
    again = compile_catalogue(cat, cache_dir=tmp_path)
    assert again.from_cache and not first.from_cache
    assert again.windows == first.windows and again.windowed.confirm == first.windowed.confirm
    assert any(window != form for form, _, window in first.windows)
    values = [b'{"log":"x: connect: connection refused"}', b'{"log":"connection refused"}', b"a DC,URX"]
    assert RecordPrefilter(again)(values).tolist() == RecordPrefilter(first)(values).tolist() == [0, 2]


@pytest.mark.parametrize("mix", ["corpus", "control-plane", "long-lines", "codes-flags"])
def test_the_shipped_catalogue_flags_the_same_records_as_its_full_literals(
    shipped: CompiledCatalogue, corpus_module: ModuleType, mix: str
) -> None:
    sample = corpus_module.generate(20_000) if mix == "corpus" else corpus_module.generate_mix(mix, 20_000)
    reference = full(list(shipped.windows))
    for values in (sample.records, sample.lines):
        got = scan_batches(shipped.windowed, values)
        assert len(got) and got.tolist() == scan_batches(reference, values).tolist()
    combined = CombinedPrefilter(shipped)
    merged = full(list(shipped.windows) + [(lit, False, lit) for lit in LEVEL_LITERALS])
    assert combined(sample.records).tolist() == scan_batches(merged, sample.records).tolist()


def test_the_shipped_prefilter_holds_fewer_long_literals_than_forms(shipped: CompiledCatalogue) -> None:
    forms = {(form, caseless) for form, caseless, _ in shipped.windows}
    assert set(shipped.prefilter_forms) == forms
    assert all(window in form for form, _, window in shipped.windows)
    assert max(len(w) for w, c in {(w, c) for _, c, w in shipped.windows} if not c) == WINDOW
