"""The plan's units on disk and known to systemd, before anything starts:
rendered for the whole plan, the runnable components' written (with their
gate FIFOs ready), the head start's units the final plan changed or dropped
ended at their gates, units no longer planned stopped and removed, and each
unit's start decided (start, restart, adopt as it runs; unit_decisions.py)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from podvm_bootstrap.common.errors import one_line
from podvm_bootstrap.common.fsutil import write_if_changed
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.config.model import Plan
from podvm_bootstrap.runtime.context import RunContext, for_component
from podvm_bootstrap.runtime.supervisor import FAILED
from podvm_bootstrap.units.systemd_dbus import SystemdError, UnitState
from podvm_bootstrap.units.unit_decisions import (
    ADOPT,
    RESTART,
    Live,
    UnitFacts,
    needs_reload,
    stale_units,
    start_mode,
    to_end_early,
)

log = get_logger("daemon")

UnitEvent = Callable[[str, UnitState], None]   # (component, its unit's state)


def unit_hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def end_early(ctx: RunContext, name: str, why: str = "the final plan changed or dropped it") -> None:
    """An early start the final plan does not keep: its container is
    ended at its gate (an empty release: the gate exits 75, nothing of the
    image ran; or the stop's SIGTERM, which the gate traps: exit 143)
    under a stop job, so that systemd's Restart= does not bring it back."""
    from podvm_bootstrap.units.gate import fifo_path, gate_dir, open_waiting_gate

    assert ctx.systemd is not None
    start = ctx.early.pop(name)
    bound = ctx.settings.runtime.job_timeout
    ctx.systemd.wait_jobs(lambda: start.result is None, bound)
    stopped: list[str] = []
    try:
        ctx.systemd.stop(start.unit, stopped.append)
    except SystemdError as exc:
        log.error("%s", exc, **for_component(name))
        return
    if start.result == "done":
        fifo = Path(fifo_path(gate_dir(ctx.paths.state_dir), name, start.gate_key))
        fd = open_waiting_gate(fifo, time.monotonic() + bound)
        if fd is not None:
            os.close(fd)
    if not ctx.systemd.wait_jobs(lambda: not stopped, bound):
        log.error("stopping %s did not finish within %gs", start.unit, bound, **for_component(name))
    # The gate's exit 75 under the stop leaves the unit failed: the early
    # start is undone, as if it had never been made.
    ctx.systemd.reset_failed(start.unit)
    log.info("early start of %s ended at its gate (%s): %s", start.unit, why,
             stopped[0] if stopped else "stop pending", **for_component(name))


def abandon_early(ctx: RunContext) -> None:
    """Start-up failed (configuration, policy, measurement): the early
    starts end at their gates, as if never made."""
    for name in list(ctx.early):
        try:
            end_early(ctx, name, "start-up failed")
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.error("cannot end the early start: %s", one_line(exc), **for_component(name))


def install_units(ctx: RunContext, start_order: tuple[tuple[str, ...], ...], *,
                  on_unit: UnitEvent, observe: UnitEvent) -> None:
    """Write and load the units and decide each start (ctx.restart_on_start,
    the supervisor's adoptions). Every runnable unit is watched: on_unit gets
    its changes from now on, observe its state now."""
    from podvm_bootstrap.units.gate import GATE_BUSYBOX, gate_dir, prepare_fifo, remove_other_fifos, unit_gate_dir
    from podvm_bootstrap.units.render import render_units, unit_gate_key

    assert ctx.supervisor is not None and ctx.systemd is not None
    runnable = [p for p in ctx.planned.values() if ctx.supervisor.get(p.name).state != FAILED]
    gates = gate_dir(ctx.paths.state_dir)
    # Rendered for the whole plan (a dependent's After= may name a failed
    # component); only the runnable ones are written.
    units = render_units(Plan(tuple(ctx.planned.values()), start_order),
                         source=str(ctx.paths.components_yaml),
                         gate_dir=unit_gate_dir(ctx.paths.root, ctx.paths.state_dir))
    ctx.gate_keys = {p.name: unit_gate_key(p) for p in runnable}
    for name, key in ctx.gate_keys.items():  # before any unit can start: a container needs its FIFO to bind-mount
        prepare_fifo(gates, name, key)
    if runnable and not ctx.paths.rooted(GATE_BUSYBOX).is_file():
        log.error("%s is missing (Debian's busybox-static): no container can start its gate", GATE_BUSYBOX)
    ctx.paths.unit_dir.mkdir(parents=True, exist_ok=True)
    old_components = ctx.previous_state.get("components") or {}
    written: set[str] = set()
    for planned in runnable:
        text = units[planned.unit]
        if write_if_changed(ctx.paths.unit_dir / planned.unit, text.encode(), 0o644):
            written.add(planned.unit)
        ctx.unit_hashes[planned.name] = unit_hash(text)
    ctx.units_written = [p.unit for p in runnable]
    rewritten = {p.name for p in runnable if p.unit in written}
    for name in to_end_early(ctx.early, [p.name for p in runnable], rewritten):
        end_early(ctx, name)
    # Other definitions' FIFOs go (after the early starts were ended at
    # theirs): a container of another definition is never released.
    for name in ctx.planned:
        if remove_other_fifos(gates, name, ctx.gate_keys.get(name)):
            log.info("gate FIFOs of its replaced containers removed", **for_component(name))
    leftovers = [p.unit for p in ctx.planned.values() if (ctx.paths.unit_dir / p.unit).exists()]
    stale = stale_units(ctx.previous_state.get("units") or [], ctx.units_written, leftovers)
    for unit in stale:
        remove_unit(ctx, unit)
    live: dict[str, UnitState] = {}
    for planned in runnable:
        name = planned.name
        try:
            live[name] = ctx.systemd.watch(planned.unit, partial(on_unit, name))
        except SystemdError as exc:
            log.error("%s", exc, **for_component(name))
    facts = [UnitFacts(p.name, p.unit, p.unit in written, ctx.unit_hashes[p.name],
                       (old_components.get(p.name) or {}).get("unit_hash"),
                       Live(live[p.name].active, live[p.name].loaded, live[p.name].need_reload)
                       if p.name in live else None, early=p.name in ctx.early)
             for p in runnable]
    if needs_reload(facts, bool(stale)):
        ctx.systemd.reload()
    for fact in facts:
        name = fact.name
        if name in live:
            observe(name, live[name])
        mode = start_mode(fact)
        if mode == RESTART:
            log.info("unit %s changed: restarting it", fact.unit, **for_component(name))
            ctx.restart_on_start.add(name)
        elif mode == ADOPT:
            restarts = (old_components.get(name) or {}).get("restarts", 0)
            log.info("unit %s unchanged and %s: adopting it", fact.unit, live[name].active, **for_component(name))
            ctx.supervisor.adopt(name, restarts=restarts if isinstance(restarts, int) else 0)


def remove_unit(ctx: RunContext, unit: str) -> None:
    """Stop a unit no longer planned (bounded wait) and delete its file."""
    assert ctx.systemd is not None
    done: list[str] = []
    try:
        if ctx.systemd.state(unit).active not in ("inactive", "failed"):
            ctx.systemd.stop(unit, done.append)
            if not ctx.systemd.wait_jobs(lambda: not done, ctx.settings.runtime.job_timeout):
                log.error("stopping %s did not finish within %gs", unit, ctx.settings.runtime.job_timeout)
    except SystemdError as exc:
        log.error("%s", exc)
    ctx.systemd.forget(unit)
    path = ctx.paths.unit_dir / unit
    if path.exists() or path.is_symlink():
        path.unlink()
    log.info("unit %s is no longer planned: stopped and removed (%s)", unit, done[0] if done else "not running")
