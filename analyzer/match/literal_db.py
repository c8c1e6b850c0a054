"""Hyperscan block-mode databases of plain literals (the prefilter's windows, rate counts, level words)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hyperscan


def literal_database(
    literals: Sequence[tuple[bytes, bool]], ids: Sequence[int] | None = None, *, single_match: bool = False
) -> Any:
    """A database matching each (literal, caseless) under its id (default: its position), scratch attached.
    ``single_match``: one event per literal per scan, all a presence test needs."""
    single = hyperscan.HS_FLAG_SINGLEMATCH if single_match else 0
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(
        expressions=[literal for literal, _ in literals],
        ids=list(range(len(literals))) if ids is None else list(ids),
        elements=len(literals),
        flags=[single | (hyperscan.HS_FLAG_CASELESS if caseless else 0) for _, caseless in literals],
        literal=True,
    )
    db.scratch = hyperscan.Scratch(db)
    return db
