"""Truncate-and-confirm: the raw-record prefilter looks for a rare 8-byte window of each long literal.

Hyperscan's literal matcher slows with how common the literals' bytes are in the text, not with how many
literals there are: the catalogue's 575 forms (problem phrases in everyday English: "failed to ", "timeout ")
scanned the benchmark corpus at half the speed of 575 random literals. So the prefilter database holds, for
each literal longer than ``WINDOW`` bytes, the substring of that length whose bytes are rarest in ordinary
traffic (``analyzer.match.ordinary``); where a window is found, the record is a candidate only if a full
literal it was cut from lies around it (compared in place: the window's position fixes where the literal would
start). The candidates are exactly those of the full literals; only the scan is cheaper.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzer.match.literal_db import literal_database
from analyzer.match.ordinary import ordinary_records, record_shares

# Measured on the corpus and the adversarial mixes: 8 scans fastest; 6-7 multiply the window hits (up to 10x
# on long stack-trace lines), 10 scans slower on most mixes.
WINDOW = 8


@dataclass(frozen=True, slots=True)
class Windowed:
    """A literal database over windows. ``confirm[id]``: where window ``id`` was found (match end ``e``),
    the full forms it was cut from, each with how far before ``e`` it would start ``(form, back)``, one pair
    per place of the window in the form; None if the window is a full form itself (a hit is a candidate)."""

    db: Any
    confirm: tuple[tuple[tuple[bytes, int], ...] | None, ...]
    needs: npt.NDArray[np.bool_]  # confirm[id] is not None, as an array (indexed by the match ids)


def _trigram_counts() -> dict[int, int]:
    """How often each 3-byte sequence (as b0 << 16 | b1 << 8 | b2) occurs in the ordinary sample."""
    buf = np.frombuffer(b"\n".join(ordinary_records()), dtype=np.uint8).astype(np.int64)
    codes = buf[:-2] << 16 | buf[1:-1] << 8 | buf[2:]
    values, counts = np.unique(codes, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def choose_windows(forms: Iterable[tuple[bytes, bool]]) -> dict[tuple[bytes, bool], bytes]:
    """(form, caseless) -> the window the prefilter database holds for it (the form itself if it is short or
    caseless). Among a form's windows: the one in the fewest ordinary records, then the one whose 3-byte
    sequences are rarest there (sum of log counts), then the first. Deterministic for a given sample."""
    forms = sorted(set(forms))
    options = {
        (form, caseless): [form[i : i + WINDOW] for i in range(len(form) - WINDOW + 1)]
        for form, caseless in forms
        if not caseless and len(form) > WINDOW
    }
    if not options:
        return {key: key[0] for key in forms}
    every = sorted({w for ws in options.values() for w in ws})
    share = dict(zip(every, record_shares([(i, lit, False) for i, lit in enumerate(every)], len(every)), strict=True))
    trigrams = _trigram_counts()

    def cost(window: bytes) -> tuple[float, float]:
        common = sum(
            math.log1p(trigrams.get(window[i] << 16 | window[i + 1] << 8 | window[i + 2], 0))
            for i in range(len(window) - 2)
        )
        return share[window], common

    return {key: min(options[key], key=cost) if key in options else key[0] for key in forms}


def compile_windows(entries: Sequence[tuple[bytes, bool, bytes]], db: Any | None = None) -> Windowed:
    """A literal database over the windows of (form, caseless, window) entries, with what confirms a hit.
    A window must be a substring of its form (exactly: a caseless form is its own window), and no form may
    hold a newline (a batch joins records with one). ``db``: the database this built before for the same
    entries (a cached copy), else it is compiled."""
    by_window: dict[tuple[bytes, bool], set[tuple[bytes, int]]] = {}
    exact: set[tuple[bytes, bool]] = set()
    for form, caseless, window in entries:
        if b"\n" in form or window not in form or (caseless and window != form):
            raise ValueError(f"{window!r} cannot stand for {form!r} in a windowed prefilter")
        places = [i for i in range(len(form) - len(window) + 1) if form.startswith(window, i)]
        by_window.setdefault((window, caseless), set()).update((form, i + len(window)) for i in places)
        if form == window:
            exact.add((window, caseless))
    keys = sorted(by_window)
    confirm = tuple(None if key in exact else tuple(sorted(by_window[key])) for key in keys)
    if db is None:
        db = literal_database(keys)
    return Windowed(db, confirm, np.array([c is not None for c in confirm], dtype=np.bool_))
