"""The benchmark's pure helpers: summaries of repeated measurements, ratios,
verdicts against targets, and the results table. No I/O."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Summary:
    """Median and range of n measurements (seconds, bytes, ... as measured)."""

    n: int
    median: float
    low: float
    high: float

    def to_json(self) -> dict:
        return {"n": self.n, "median": self.median, "min": self.low, "max": self.high}


def summarize(values: Iterable[float]) -> Summary | None:
    """None for no values; NaN and infinities are refused (a bug upstream)."""
    data = [float(v) for v in values]
    if not data:
        return None
    if any(not math.isfinite(v) for v in data):
        raise ValueError(f"not a finite measurement in {data}")
    return Summary(len(data), statistics.median(data), min(data), max(data))


def ratio(measured: Summary | None, baseline: Summary | None) -> float | None:
    """measured / baseline of the medians; None when either is missing or the
    baseline is zero."""
    if measured is None or baseline is None or baseline.median == 0:
        return None
    return measured.median / baseline.median


@dataclass(frozen=True)
class Target:
    """value <= limit (or < limit when strict) is met."""

    limit: float
    strict: bool = False
    text: str = ""        # how the target reads in the table, e.g. "< 150 ms"

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value < self.limit if self.strict else value <= self.limit


def verdict(value: float | None, target: Target | None) -> str:
    if target is None:
        return ""
    met = target.met(value)
    return "n/a" if met is None else ("ok" if met else "MISSED")


# --- formatting ---------------------------------------------------------

UNITS = {"s": 1.0, "ms": 1e-3, "MiB": float(1 << 20), "%": 1.0, "x": 1.0, "": 1.0}


def fmt(value: float | None, unit: str) -> str:
    """A value (in base units: seconds, bytes, percent) shown in `unit`."""
    if value is None:
        return "-"
    shown = value / UNITS[unit]
    digits = 3 if abs(shown) < 10 else (2 if abs(shown) < 100 else 1)
    if unit == "x":
        digits = 2
    text = f"{shown:.{digits}f}"
    return f"{text} {unit}".rstrip() if unit not in ("%", "x") else f"{text}{unit}"


def fmt_summary(s: Summary | None, unit: str) -> tuple[str, str]:
    """(median, "min–max (n=N)") as table cells."""
    if s is None:
        return "-", "-"
    return fmt(s.median, unit), f"{fmt(s.low, unit)} – {fmt(s.high, unit)} (n={s.n})"


@dataclass
class Row:
    """One line of the results table. `measured` is the subject (the daemon),
    `baseline` what it is compared with (the ideal, skopeo), `value` what the
    target applies to (the ratio, or the measured median)."""

    metric: str
    unit: str
    measured: Summary | None = None
    baseline: Summary | None = None
    baseline_name: str = ""
    value: float | None = None
    value_unit: str = ""
    target: Target | None = None
    note: str = ""
    error: str = ""
    missed: str = ""      # the target was missed without a value (e.g. never detected): why
    extra: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        if self.missed:
            return "MISSED"
        return verdict(self.value, self.target)

    def to_json(self) -> dict:
        return {
            "metric": self.metric, "unit": self.unit,
            "measured": self.measured.to_json() if self.measured else None,
            "baseline": self.baseline.to_json() if self.baseline else None,
            "baseline_name": self.baseline_name,
            "value": self.value, "value_unit": self.value_unit,
            "target": None if self.target is None else {"limit": self.target.limit, "strict": self.target.strict,
                                                        "text": self.target.text},
            "verdict": self.verdict,
            "note": self.note, "error": self.error, "missed": self.missed, **self.extra,
        }


HEADER = ("metric", "median", "min – max (n)", "baseline median", "ratio / value", "target", "verdict")


def row_cells(row: Row) -> list[str]:
    if row.error:
        return [row.metric, "-", "-", "-", "-", row.target.text if row.target else "", f"ERROR: {row.error}"]
    median, spread = fmt_summary(row.measured, row.unit)
    base = "-"
    if row.baseline is not None:
        base = f"{fmt(row.baseline.median, row.unit)} ({row.baseline_name})" if row.baseline_name \
            else fmt(row.baseline.median, row.unit)
    value = fmt(row.value, row.value_unit) if row.value is not None else (row.missed or "-")
    return [row.metric, median, spread, base, value, row.target.text if row.target else "", row.verdict]


def markdown_table(sections: Sequence[tuple[str, Sequence[Row]]]) -> str:
    """One markdown table, a bold line per section, notes as footnotes."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(" --- " for _ in HEADER) + "|"]
    notes: list[str] = []
    for title, rows in sections:
        lines.append(f"| **{title}** |" + " |" * (len(HEADER) - 1))
        for row in rows:
            cells = row_cells(row)
            if row.note:
                notes.append(row.note)
                cells[0] += f" [{len(notes)}]"
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if notes:
        lines.append("")
        lines += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"
