"""What the operators' commands print: aligned tables and field lists for people, coloured only
on a terminal without NO_COLOR, and JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

_COLOURS = {
    "RUNNING": "34", "COMPLETED": "32", "FAILED": "31", "TERMINATED": "35",
    "SUSPENDED": "33", "PENDING": "2", "CANCELED": "35", "CONTINUED_AS_NEW": "36",
}


class Output:
    def __init__(self, stream: TextIO | None = None, *, as_json: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.as_json = as_json
        self.colour = (
            not as_json and self.stream.isatty() and not os.environ.get("NO_COLOR")
        )

    def status(self, name: str) -> str:
        return self._paint(name, _COLOURS.get(name))

    def bold(self, text: str) -> str:
        return self._paint(text, "1")

    def _paint(self, text: str, code: str | None) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def line(self, text: str = "") -> None:
        print(text, file=self.stream)

    def json(self, value: Any) -> None:
        json.dump(value, self.stream, indent=2, ensure_ascii=False)
        self.stream.write("\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]],
              status_column: int | None = None) -> None:
        """Columns padded to their widest cell; the last column is not padded."""
        widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
        self.line(self.bold("  ".join(
            h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()))
        for row in rows:
            cells = []
            for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
                padded = cell.ljust(width) if i < len(row) - 1 else cell
                cells.append(self.status(cell) + padded[len(cell):]
                             if i == status_column else padded)
            self.line("  ".join(cells).rstrip())

    def fields(self, pairs: Sequence[tuple[str, str]]) -> None:
        """`name: value` lines with the values aligned; multi-line values are indented."""
        width = max(len(name) for name, _ in pairs) + 1
        for name, value in pairs:
            first, *rest = value.splitlines() or [""]
            self.line(f"{self.bold((name + ':').ljust(width))} {first}".rstrip())
            for more in rest:
                self.line(" " * (width + 1) + more)


def cell(text: str | None, limit: int = 60) -> str:
    """One line of at most `limit` characters for a table cell."""
    if text is None:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
