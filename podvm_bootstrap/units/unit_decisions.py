"""The daemon's pure decisions about its units: which baked defaults' units
may start before the user-data is fetched, and, once the final plan's units
are rendered and written, which units are stale (to stop and delete), which
early starts must be ended at their gates, whether systemd needs a
daemon-reload, and what to do with each planned unit (start it, restart it,
adopt it as it runs). No I/O: the daemon gathers the facts (what it wrote,
what the previous daemon recorded, what systemd says) and carries these out.
Which gates to open, and when, is the supervisor's (supervisor.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

UP_STATES = ("active", "activating", "reloading")

START = "start"       # not running: the supervisor starts it (all at once; its gate holds the process)
RESTART = "restart"   # running an older definition: restarted (its new start goes through its gate)
ADOPT = "adopt"       # running this very definition: left alone, its gate released only if one waits


@dataclass(frozen=True)
class Live:
    """What systemd says about a unit (systemd_dbus.UnitState's fields used here)."""
    active: str
    loaded: str = "loaded"
    need_reload: bool = False


@dataclass(frozen=True)
class UnitFacts:
    name: str
    unit: str
    written: bool                # its file was (re)written now: the text on disk changed
    hash_now: str                # of the text just rendered
    hash_before: str | None      # recorded by the previous daemon (None: no record)
    live: Live | None            # None: systemd could not be asked about it
    early: bool = False          # this daemon started it before the user-data, with this very text

    @property
    def changed(self) -> bool:
        """Its definition differs from what runs: rewritten now, or rewritten
        by a previous daemon that died before it restarted the unit."""
        return self.written or (self.hash_before is not None and self.hash_before != self.hash_now)


@dataclass(frozen=True)
class EarlyCandidate:
    """A baked default's unit, rendered before the user-data is fetched."""
    name: str
    unit: str
    pinned: bool                  # its image is pinned by digest
    host_paths: tuple[str, ...]   # host paths of its bind mounts
    fresh_file: bool              # its unit file did not exist before this daemon wrote it
    loaded: str | None            # LoadState systemd holds for it (None: not in memory)
    active: str | None            # ActiveState (None: not in memory)
    in_store: bool = True         # its image is in local storage already


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def may_start_early(c: EarlyCandidate, provisioned: Iterable[str], first_run: bool) -> bool:
    """Start this unit before the user-data is fetched (its container set up
    now, its process held at its gate until the final plan is verified and
    measured)? Only on the boot's first daemon run (a restarted daemon adopts
    what runs), for a digest-pinned image already in local storage, a unit
    file new to systemd (so it cannot start an older text systemd holds), and
    no bind mount of a path the user-data may provision: a missing host path
    is made a directory at start, and a file could then not be provisioned
    there. An image not in storage yet would fail its `podman run
    --pull=never` ("image not known") and leave systemd's Restart= racing the
    daemon's own start once the daemon has pulled it: that unit waits for
    the daemon."""
    if not first_run or not c.pinned or not c.in_store or not c.fresh_file:
        return False
    if c.loaded not in (None, "not-found") and not (c.loaded == "loaded" and c.active in ("inactive", None)):
        return False
    if c.active not in (None, "inactive"):
        return False
    return not any(under(host, p) for host in c.host_paths for p in provisioned)


def to_end_early(early: Iterable[str], runnable: Iterable[str], written: Iterable[str]) -> list[str]:
    """Early starts to end at their gates (nothing of them ran) before the
    final units go in: a component that will not run, or whose unit the
    final plan rewrote (an override changed its image)."""
    keep = set(runnable) - set(written)
    return sorted(set(early) - keep)


def stale_units(previous_units: Iterable[str], runnable_units: Iterable[str],
                leftover_files: Iterable[str]) -> list[str]:
    """Units to stop and delete: those the previous daemon ran that are no
    longer runnable, and files of planned units that get none now (an image
    that failed)."""
    runnable = set(runnable_units)
    return sorted((set(previous_units) - runnable) | (set(leftover_files) - runnable))


def needs_reload(facts: Iterable[UnitFacts], removed_any: bool) -> bool:
    """A daemon-reload only when systemd may hold an older version: a unit was
    removed, or one written now is unknown to it, not loaded, or flagged
    NeedDaemonReload. A file systemd has not loaded yet is read as it is
    looked up: no reload for a first boot."""
    return removed_any or any(f.live is None or f.live.need_reload or f.live.loaded != "loaded"
                              for f in facts if f.written)


def start_mode(fact: UnitFacts) -> str | None:
    """START, RESTART or ADOPT; None when systemd could not be asked (the
    unit is left to the supervisor's job timeout and the next event)."""
    if fact.live is None:
        return None
    if fact.early and not fact.changed:
        return START   # this daemon's own start, its job under way: its gate opens as a start's
    if fact.live.active not in UP_STATES:
        return START
    return RESTART if fact.changed else ADOPT
