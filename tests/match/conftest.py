"""Fixtures shared by the matching tests: the shipped catalogue compiled with the service's signals, and the
benchmark corpus module (the corpus and the adversarial mixes)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

from analyzer.catalogue import load_catalogue
from analyzer.correlation import SIGNALS
from analyzer.match import CompiledCatalogue, compile_catalogue
from tests.conftest import PATTERNS

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> CompiledCatalogue:
    return compile_catalogue(load_catalogue(PATTERNS), SIGNALS, cache_dir=tmp_path_factory.mktemp("hs"))


@pytest.fixture(scope="module")
def corpus_module() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import corpus  # benchmarks/corpus.py: the benchmark corpus and the adversarial mixes
    finally:
        sys.path.remove(str(BENCHMARKS))
    return corpus
