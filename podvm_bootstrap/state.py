"""<state-dir>/state.json: what the daemon knows, for `status` and for the
next daemon (adoption after a restart). Written atomically, 0644."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from podvm_bootstrap.fsutil import atomic_write

STATE_FILE = "state.json"
FORMAT_VERSION = 1


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"version": FORMAT_VERSION, **state}, indent=2) + "\n"
    atomic_write(state_dir / STATE_FILE, data.encode(), 0o644)


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The last state written, or None when there is none (or it is unreadable)."""
    try:
        with open(state_dir / STATE_FILE, "rb") as f:
            data = json.loads(f.read(16 * 1024 * 1024))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("components"), dict):
        return None
    return data
