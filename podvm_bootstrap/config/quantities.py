"""Parsing of the durations ("180s", "1m30s", "250ms") and sizes ("256KiB")
used in the baked YAML files. Errors raise ValueError; callers turn them into
ConfigError with the file and the key."""

from __future__ import annotations

import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|min|s|m|h)")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
}
_SIZE = re.compile(r"(\d+)\s*([a-z]*)")


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string like "5s", "1m30s", "250ms"."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '10s', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(f"expected a duration like '10s', '2m' or '500ms', got {value!r}")
    else:
        raise ValueError(f"expected a duration like '10s', got {type(value).__name__}")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"duration out of range: {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like "256KiB", "1MiB", "64k"."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '256KiB', got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if not match or match.group(2) not in _SIZE_UNITS:
            raise ValueError(f"expected a size like '256KiB' or '1MiB', got {value!r}")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a size like '256KiB', got {type(value).__name__}")
    if size <= 0:
        raise ValueError(f"size must be positive: {value!r}")
    return size

