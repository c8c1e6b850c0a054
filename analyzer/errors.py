"""The one error tree. Library errors are translated into these at the boundary."""

from __future__ import annotations

from dataclasses import dataclass


class AnalyzerError(Exception):
    """Base of every error this package raises on purpose."""


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """One thing wrong with one rule (or with a whole file when ``rule_id`` is None)."""

    file: str
    rule_id: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: rule {self.rule_id}" if self.rule_id else self.file
        return f"{where}: {self.reason}"


class CatalogueError(AnalyzerError):
    """The signature catalogue cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConfigError(AnalyzerError):
    """Settings are missing or inconsistent."""


class InputError(AnalyzerError):
    """An input file or stream cannot be read at all (per-record problems are data, not errors)."""


class StoreError(AnalyzerError):
    """The incident store failed or is unreachable."""


class StaleOffsetError(StoreError):
    """The stored offset moved under us: another consumer owns the partition now (zombie fencing)."""


class IngestError(AnalyzerError):
    """The broker is unreachable or refused us."""
