"""The suite's result table: one row per scenario, printed as Markdown (readable in a
terminal, pasteable into the README)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HEADER = ("scenario", "published", "delivered", "lost", "duplicated", "time to recover", "result")


@dataclass
class Row:
    """`published`/`delivered` count messages (or, for hostile input, inputs sent and
    answers checked); `recovered_s` is seconds from the fault (or from its end, said in
    `note`) until every client had everything again."""

    scenario: str
    published: int | None = None
    delivered: int | None = None
    lost: int | None = None
    duplicated: int | None = None
    recovered_s: float | None = None
    passed: bool = True
    note: str = ""

    def cells(self) -> tuple[str, ...]:
        recovered = "-" if self.recovered_s is None else f"{self.recovered_s:.2f} s"
        result = "pass" if self.passed else "FAIL"
        if self.note:
            result = f"{result}: {self.note}"
        return (
            self.scenario,
            _count(self.published),
            _count(self.delivered),
            _count(self.lost),
            _count(self.duplicated),
            recovered,
            result,
        )


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def render(rows: Sequence[Row]) -> str:
    lines = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    numeric = {1, 2, 3, 4, 5}

    def fmt(line: Sequence[str]) -> str:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "| " + " | ".join(cells) + " |"

    rule = (
        "| "
        + " | ".join("-" * (w - 1) + ":" if i in numeric else "-" * w for i, w in enumerate(widths))
        + " |"
    )
    return "\n".join([fmt(HEADER), rule, *(fmt(line) for line in lines[1:])])
