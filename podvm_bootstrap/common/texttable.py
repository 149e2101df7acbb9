"""The plain-text tables of `plan` and `status`. Pure."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """One line per row, cells two spaces apart, each column but the last
    padded to its widest cell; the last column (free text: an image
    reference, an error) is left as it is, so it never pads a line."""
    if not rows:
        return []
    columns = len(rows[0])
    widths = [max(len(row[i]) for row in rows) for i in range(columns - 1)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]]) for row in rows]
