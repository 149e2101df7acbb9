"""The boot's head start, before the daemon proper: the baked defaults'
units started before the user-data is fetched, so that podman sets their
containers up meanwhile (their processes wait at their start gates). Only
those whose image is in local storage already (found from the store's own
files, containers_store.py): the unit of a default not there yet would fail
its `podman run --pull=never`, and systemd's Restart= would then race the
daemon's own start after its pull; the daemon starts it once pulled.

Imports here are only what this step needs (the baked files, the planner,
render, systemd over Gio): the podman client, the supervisor, the HTTP
clients, the TPM bindings and cryptography load after the first StartUnit.

Safe behind the gates: a process is released only after its files are
provisioned, the final plan's image verified for that start and the launch
set measured; a unit the final plan changes or drops is ended at its gate
(nothing of it ran) before the final units go in (unit_install.py). A failure
here only costs the head start; the daemon then starts every unit itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from podvm_bootstrap.common.errors import ConfigError, one_line
from podvm_bootstrap.common.fsutil import write_if_changed
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.settings import Settings, load_settings
from podvm_bootstrap.runtime.stages import Baked, baked_plan, read_baked
from podvm_bootstrap.runtime.state import read_state
from podvm_bootstrap.units.systemd_dbus import Systemd, SystemdError
from podvm_bootstrap.units.unit_decisions import EarlyCandidate, may_start_early

log = get_logger("daemon")


class EarlyStart:
    """A unit started before the user-data: its job's result once systemd
    reports it, handed on to whoever takes the start over."""

    def __init__(self, unit: str, gate_key: str) -> None:
        self.unit = unit
        self.gate_key = gate_key   # its container's gate FIFO (gate.py): where it is ended if replaced
        self.result: str | None = None
        self._then: Callable[[str], None] | None = None

    def finished(self, result: str) -> None:
        self.result = result
        if self._then is not None:
            self._then(result)

    def then(self, on_done: Callable[[str], None]) -> None:
        """on_done(result) now if the job is over, else when it is."""
        if self.result is not None:
            on_done(self.result)
        else:
            self._then = on_done


@dataclass
class HeadStart:
    """What the boot's first step read and did, handed to the daemon."""

    previous_state: dict[str, Any]
    settings: Settings
    baked: Baked
    systemd: Systemd | None = None
    started: dict[str, EarlyStart] = field(default_factory=dict)   # component -> its early start


def in_store(references: list[str]) -> set[str]:
    """Those of the references (repo@digest) that name an image in podman's
    store, from the store's own files (containers_store.py: a few stats and
    its image index, no podman); none when the store cannot be told without
    podman."""
    from podvm_bootstrap.images.containers_store import StoreError, find_all_in_store, locate_store

    store = locate_store()
    if store is None:
        log.info("podman's store cannot be told from its files: no early start")
        return set()
    try:
        return {r for r, where in find_all_in_store(store, references).items() if where is not None}
    except (StoreError, OSError) as exc:   # an unreadable index costs only the head start
        log.info("no early start: %s", one_line(exc))
        return set()


def head_start(paths: Paths, systemd_factory: Callable[[], Systemd] = Systemd) -> HeadStart:
    """Read the baked files and, on the boot's first daemon run, start the
    baked defaults' units. ConfigError for a baked file that does not load
    (nothing started then)."""
    from podvm_bootstrap.units.gate import gate_dir, prepare_fifo, unit_gate_dir
    from podvm_bootstrap.units.render import render_units, unit_gate_key, volume_host_dirs

    previous = read_state(paths.state_dir) or {}
    settings = load_settings(paths.bootstrap_yaml)
    head = HeadStart(previous, settings, read_baked(paths, settings))
    first_run = not previous
    plan = baked_plan(head.baked) if first_run else None
    if plan is None:
        return head
    try:
        units = render_units(plan, source=str(paths.components_yaml),
                             gate_dir=unit_gate_dir(paths.root, paths.state_dir))
    except ConfigError:
        return head   # reported when the final plan's units are rendered
    stored = in_store([p.image.pinned for p in plan.components if p.digest is not None])
    absent = [p.name for p in plan.components if p.digest is not None and p.image.pinned not in stored]
    if absent:
        log.info("not in local storage yet, started once the daemon has pulled and verified it: %s",
                 ", ".join(absent))
    if not stored:
        return head
    fresh = {p.unit: not (paths.unit_dir / p.unit).exists() for p in plan.components}
    try:
        head.systemd = systemd_factory()
        held = head.systemd.unit_loads([p.unit for p in plan.components])
    except SystemdError as exc:
        log.info("no early start: %s", exc)
        return head
    early = []
    for p in plan.components:
        loaded, active = held.get(p.unit, (None, None))
        candidate = EarlyCandidate(p.name, p.unit, p.digest is not None, tuple(volume_host_dirs(p)), fresh[p.unit],
                                   loaded, active, in_store=p.digest is not None and p.image.pinned in stored)
        if may_start_early(candidate, settings.provision.allowed_paths, first_run):
            early.append(p)
    if not early:
        return head
    # In start order: systemd loads and runs the first layer's jobs first, and
    # podman begins with the containers the others wait for.
    layer = {name: i for i, names in enumerate(plan.start_order) for name in names}
    early.sort(key=lambda p: layer.get(p.name, len(layer)))
    gates = gate_dir(paths.state_dir)
    paths.unit_dir.mkdir(parents=True, exist_ok=True)
    keys = {planned.name: unit_gate_key(planned) for planned in early}
    for planned in early:
        prepare_fifo(gates, planned.name, keys[planned.name])   # a container needs its FIFO to bind-mount
        write_if_changed(paths.unit_dir / planned.unit, units[planned.unit].encode(), 0o644)
    for planned in early:
        head.started[planned.name] = EarlyStart(planned.unit, keys[planned.name])
    by_unit = {start.unit: start for start in head.started.values()}
    # ignore-dependencies: every container at once (the gates order the processes)
    head.systemd.start_all(list(by_unit), lambda unit, result: by_unit[unit].finished(result))
    log.info("baked defaults' units started before the user-data (held at their gates): %s",
             ", ".join(p.name for p in early))
    return head
