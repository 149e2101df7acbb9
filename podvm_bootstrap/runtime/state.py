"""<state-dir>/state.json: what the daemon knows, for `status` and for the
next daemon (adoption after a restart). Written atomically, 0644."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from podvm_bootstrap.common.fsutil import atomic_write, read_json

STATE_FILE = "state.json"
FORMAT_VERSION = 1
MAX_STATE_JSON = 16 * 1024 * 1024  # also plan.json's bound (status reads it)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def state_record(*, daemon: dict[str, Any], boot: dict[str, Any], units: list[str], planned: Mapping[str, Any],
                 snapshot: Mapping[str, dict], resolved_from: Mapping[str, str], unit_hashes: Mapping[str, str],
                 live: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """What state.json holds (pure): per planned component (model.PlannedComponent)
    the supervisor's snapshot, what runs (unit, image, digest, source, the
    override decision) and systemd's last word on its unit."""
    components: dict[str, Any] = {}
    for name, pc in planned.items():
        entry = dict(snapshot.get(name, {}))
        info = pc.to_json()
        active, sub = live.get(name, (None, None))
        entry.update({
            "unit": pc.unit, "image": info["image"], "digest": info["digest"], "source": info["source"],
            "override": info["override"], "container": info["container"], "resolved_from": resolved_from.get(name),
            "unit_hash": unit_hashes.get(name),
            "signature": None if pc.signature is None else {"key": pc.signature},
            "active_state": active, "sub_state": sub,
        })
        components[name] = entry
    return {"daemon": daemon, "boot": boot, "units": units, "components": components}


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"version": FORMAT_VERSION, **state}, indent=2) + "\n"
    atomic_write(state_dir / STATE_FILE, data.encode(), 0o644)


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The last state written, or None when there is none (or it is unreadable)."""
    data = read_json(state_dir / STATE_FILE, MAX_STATE_JSON)
    if not isinstance(data, dict) or not isinstance(data.get("components"), dict):
        return None
    return data
