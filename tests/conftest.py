from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ROOT / "patterns"
# A copy of ../shared/corpus/istio_real_lines.jsonl (real public Istio lines, each with its source).
CORPUS = ROOT / "tests" / "data" / "istio_real_lines.jsonl"


def corpus_lines() -> list[dict[str, str]]:
    """The real public Istio lines; tests that need them skip visibly without them."""
    if not CORPUS.exists():
        pytest.skip(f"corpus not found at {CORPUS}")
    return [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _isolated_hs_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Compiled databases are cached under $XDG_CACHE_HOME; keep tests off the developer's cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
