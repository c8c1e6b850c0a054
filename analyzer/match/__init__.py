"""Catalogue -> Hyperscan databases; batch scanning of decoded lines and raw records."""

from analyzer.match.compiler import CompiledCatalogue, compile_catalogue, lint
from analyzer.match.scanner import Matcher, RecordPrefilter

__all__ = ["CompiledCatalogue", "Matcher", "RecordPrefilter", "compile_catalogue", "lint"]
