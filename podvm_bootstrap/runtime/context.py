"""What the steps of `run` share: one RunContext, made by the daemon
(daemon.py) and handed to each step (image_step.py, unit_install.py,
actions.py), so that every piece of a run's state has one home and each step
shows, by what it is given, what it reads and changes. It also writes
state.json from that state (for `status` and the next daemon of the boot)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.model import PlannedComponent
from podvm_bootstrap.images.storage import PodmanImages
from podvm_bootstrap.runtime.notify import Notifier
from podvm_bootstrap.runtime.state import now_iso, state_record, write_state
from podvm_bootstrap.runtime.supervisor import Supervisor
from podvm_bootstrap.units.systemd_dbus import Systemd

if TYPE_CHECKING:
    from podvm_bootstrap.config.settings import Settings
    from podvm_bootstrap.runtime.early_start import EarlyStart


def for_component(name: str) -> dict[str, Any]:
    """A log call's keyword arguments that put the component's name before
    its message (common/log.py)."""
    return {"extra": {"component": name}}


@dataclass(eq=False)
class RunContext:
    paths: Paths
    settings: Settings
    notifier: Notifier
    previous_state: dict[str, Any]   # the previous daemon's state.json in this boot ({} if none)
    early: dict[str, EarlyStart]     # units started before the user-data, until taken over
    systemd: Systemd | None          # None until the connection made in the background is there
    supervisor: Supervisor | None = None   # made once the plan is known
    planned: dict[str, PlannedComponent] = field(default_factory=dict)
    resolved_from: dict[str, str] = field(default_factory=dict)
    unit_hashes: dict[str, str] = field(default_factory=dict)
    gate_keys: dict[str, str] = field(default_factory=dict)   # component -> its unit's gate FIFO key (gate.py)
    live: dict[str, tuple[str, str]] = field(default_factory=dict)
    restart_on_start: set[str] = field(default_factory=set)
    units_written: list[str] = field(default_factory=list)
    images: PodmanImages | None = None
    # The podman client, shared by gate releases and start-up.
    images_lock: threading.Lock = field(default_factory=threading.Lock)
    started: str = field(default_factory=now_iso)
    boot: dict[str, Any] = field(default_factory=dict)
    phase: str = "starting"
    _written_key: tuple | None = field(default=None, init=False, repr=False)   # what the last write showed

    def write_state(self, force: bool = False) -> None:
        sup = self.supervisor
        # Everything state.json shows beside the supervisor's own record.
        key = (sup.version if sup is not None else None, self.phase, self.notifier.ready_sent,
               tuple(sorted(self.live.items())))
        if sup is not None and not force and key == self._written_key:
            return
        write_state(self.paths.state_dir, state_record(
            daemon={"pid": os.getpid(), "started": self.started, "updated": now_iso(), "phase": self.phase,
                    "ready": self.notifier.ready_sent,
                    "status": sup.status_line() if sup is not None else self.phase},
            boot=self.boot, units=self.units_written, planned=self.planned,
            snapshot=sup.snapshot() if sup is not None else {}, resolved_from=self.resolved_from,
            unit_hashes=self.unit_hashes, live=self.live))
        self._written_key = key
