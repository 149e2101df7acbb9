"""`podvm-bootstrap run`: the daemon's orchestration.

fetch user-data → provision files → plan → ensure images (verified) → render
and write units → start by dependencies → READY=1 → supervise, in a GLib main
loop driven by events (JobRemoved, the units' PropertiesChanged, probe
results, SIGTERM) and by timers only where something is due (a probe slot, a
restart, a deadline, the watchdog). SIGTERM ends supervision and leaves the
components running. A restarted daemon adopts what runs: a unit whose
definition did not change and that is active is not started again.

Start-up overlaps what does not depend on each other: the podman API service
is activated and the systemd connection made while the user-data is fetched,
and the images are verified concurrently.

This module holds the order of the steps and the main loop; the steps are
image_step.py (images), unit_install.py (units) and actions.py (what the
supervisor asks for), sharing one RunContext (context.py)."""

from __future__ import annotations

import gc
import json
import math
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from podvm_bootstrap.attest.launch_set import LaunchedComponent
from podvm_bootstrap.common.errors import EXIT_OK, PolicyFailure, one_line
from podvm_bootstrap.common.fsutil import atomic_write
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.model import Plan
from podvm_bootstrap.images.storage import ImageError
from podvm_bootstrap.runtime.actions import Actions
from podvm_bootstrap.runtime.context import RunContext, for_component
from podvm_bootstrap.runtime.image_step import ImageStep, podman_images
from podvm_bootstrap.runtime.notify import Notifier
from podvm_bootstrap.runtime.supervisor import FAILED, Supervisor, SupervisorConfig
from podvm_bootstrap.runtime.unit_install import abandon_early, install_units
from podvm_bootstrap.units.systemd_dbus import Systemd, UnitState

if TYPE_CHECKING:
    from podvm_bootstrap.config.policy import Policy
    from podvm_bootstrap.runtime.early_start import HeadStart
    from podvm_bootstrap.runtime.stages import Baked, ChildFetch

log = get_logger("daemon")

MAX_STEPS = 20  # tick() rounds in one step (each round's actions may make the next due at once)
T = TypeVar("T")


def knock(socket_path: str) -> None:
    """Connect and hang up at once: a socket-activated service (podman's API)
    starts now, while the rest of start-up goes on, instead of at first use."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.setblocking(False)
            s.connect(socket_path)
    except OSError:
        pass


def in_background(fn: Callable[[], T], name: str) -> Future[T]:
    """Run fn in a daemon thread (never keeps the process alive); its result
    or exception in the returned future."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on it
            future.set_exception(exc)
    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class Terminated(BaseException):
    """SIGTERM before the main loop runs (BaseException: no `except Exception`
    on the way may swallow it)."""


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class Daemon:
    def __init__(self, paths: Paths, source: Any, head: HeadStart, child: ChildFetch | None = None, *,
                 systemd_factory: Callable[[], Systemd] = Systemd, notifier: Notifier | None = None) -> None:
        self.source = source
        self.systemd_factory = systemd_factory
        self.clock = RealClock()
        self.head = head
        self.child = child   # the user-data fetch under way in a child process
        self.ctx = RunContext(paths, head.settings, notifier or Notifier(), head.previous_state,
                              dict(head.started), head.systemd)
        self.actions: Actions | None = None
        self._timer: int | None = None
        self._timer_at: float | None = None
        self._step_queued = False

    # --- entry -------------------------------------------------------------

    def run(self) -> int:
        previous = signal.signal(signal.SIGTERM, self._terminate_early)
        try:
            try:
                self._run()
            except Exception:
                abandon_early(self.ctx)
                raise
        except Terminated:
            log.info("SIGTERM before supervision began; stopping (components left as they are)")
            self.ctx.phase = "stopped"
            self.ctx.write_state(force=True)
        finally:
            signal.signal(signal.SIGTERM, previous)
            if self.child is not None:
                self.child.close()
            if self.actions is not None:
                self.actions.shutdown()
        return EXIT_OK

    def _terminate_early(self, signum: int, frame: object) -> None:
        raise Terminated()

    def _run(self) -> None:
        ctx = self.ctx
        baked = self.head.baked
        # podman's API service is started only when something needs it (a
        # store storage.conf does not describe, a pull, an exec probe).
        ctx.images = podman_images(ctx.paths, ctx.settings)
        if not ctx.images.reads_files:
            knock(ctx.settings.runtime.podman_socket)
            in_background(self._activate_podman, "podman")
        systemd = None if ctx.systemd is not None else in_background(self.systemd_factory, "systemd")
        # tpm2-pytss's bindings load in the background, overlapping the fetch, not delaying the measurement.
        from podvm_bootstrap.attest.tpm import preload_bindings
        in_background(lambda: preload_bindings(ctx.settings.measure.tpm, ctx.paths.root), "tpm")
        ctx.notifier.status("reading user-data")
        plan = self._prepare(baked)
        if any(p.component.ready is not None and p.component.ready.kind == "exec" for p in plan.components):
            knock(ctx.settings.runtime.podman_socket)   # up by the time the first exec probe runs
        if systemd is not None:
            ctx.notifier.status("connecting to systemd")
            ctx.systemd = systemd.result()
        runtime = ctx.settings.runtime
        sup = ctx.supervisor = Supervisor(
            [p.component for p in plan.components], self.clock,
            SupervisorConfig(job_timeout=runtime.job_timeout, crash_loop_restarts=runtime.crash_loop_restarts,
                             crash_loop_window=runtime.crash_loop_window))
        ctx.planned = {p.name: p for p in plan.components}
        ctx.write_state()
        ctx.notifier.status("checking images")
        images = ImageStep(ctx, self.policy)
        images.ensure_all()
        # Before any unit starts (docs/measured-launch.md "What is written").
        from podvm_bootstrap.attest.launch_measurement import measure_launch
        refused: list[tuple[str, str, LaunchedComponent | None]] = []
        ctx.boot["measurement"] = measure_launch(
            ctx.paths, ctx.settings, self.plan.start_order,
            [p for p in ctx.planned.values() if sup.get(p.name).state != FAILED],
            lambda name, reason, recorded: refused.append((name, reason, recorded)))
        for name, reason, recorded in refused:
            images.keep_recorded(name, reason, recorded)
        self._write_plan()
        ctx.notifier.status("starting components")
        install_units(ctx, self.plan.start_order, on_unit=self._on_unit, observe=self._observe)
        ctx.write_state()
        self.actions = Actions(ctx, self.policy, self)
        self._supervise()

    def _activate_podman(self) -> None:
        """Ask podman for its store now (activating its API service), while the
        user-data is fetched; a failure is reported by each image's check."""
        assert self.ctx.images is not None
        try:
            self.ctx.images.store()
        except ImageError:
            pass

    # --- user-data, provisioning, plan ------------------------------------------

    def _prepare(self, baked: Baked) -> Plan:
        from podvm_bootstrap.runtime.stages import plan as make_boot_plan

        log.info("fetching the user-data, then planning")   # (the boot's timeline: start-up done)
        boot = self.ctx.boot
        self.ctx.paths.state_dir.mkdir(parents=True, exist_ok=True)
        resolved = make_boot_plan(self.ctx.paths, self.source, baked=baked, provision_files=True, child=self.child)
        self.policy: Policy = resolved.policy
        saved = self.ctx.paths.state_dir / "user-data"
        raw, userdata = resolved.raw, resolved.userdata
        if raw is None:
            saved.unlink(missing_ok=True)
        else:
            atomic_write(saved, raw, 0o600)
        if resolved.userdata_error is not None:
            boot["userdata"] = f"error: {resolved.userdata_error}"
        else:
            boot["userdata"] = "none" if raw is None else f"{len(raw)} bytes"
        if userdata is not None:
            boot["provisioned"] = [r.line() for r in resolved.provisioned]
            boot["userdata_problems"] = list(userdata.problems)
        plan = resolved.plan
        boot["plan_errors"] = list(plan.errors)
        self.plan = plan
        self._write_plan()
        if plan.refused:
            raise PolicyFailure("an override was refused and the policy says fail; nothing started")
        return plan

    def _write_plan(self) -> None:
        plan = replace(self.plan, components=tuple(self.ctx.planned.get(p.name, p) for p in self.plan.components))
        data = json.dumps(plan.to_json(), indent=2) + "\n"
        atomic_write(self.ctx.paths.state_dir / "plan.json", data.encode(), 0o644)

    # --- supervision: the main loop ---------------------------------------------

    def _supervise(self) -> None:
        from gi.repository import GLib

        self._glib = GLib
        self.loop = GLib.MainLoop()
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, self._on_sigterm)
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, self._on_sigterm)
        if self.ctx.notifier.watchdog_interval is not None:
            self.ctx.notifier.watchdog(self.clock.monotonic())
            GLib.timeout_add(max(1, int(self.ctx.notifier.watchdog_interval * 1000)), self._on_watchdog)
        self.ctx.phase = "supervising"
        self.step()
        self.loop.run()

    def _on_sigterm(self) -> bool:
        log.info("SIGTERM: supervision stops; the components keep running")
        self.ctx.notifier.stopping()
        self.ctx.phase = "stopped"
        try:
            self.ctx.write_state(force=True)
        except Exception as exc:  # noqa: BLE001 - stopping must not depend on /run being writable
            log.error("cannot write the final state: %s", one_line(exc))
        self.loop.quit()
        return False

    def _on_watchdog(self) -> bool:
        self.ctx.notifier.watchdog(self.clock.monotonic())
        return True

    def kick(self) -> None:
        """Something happened: one step soon (events arriving together share it).
        Before supervision begins its first step takes everything in."""
        if self.ctx.phase == "supervising" and not self._step_queued:
            self._step_queued = True
            self._glib.idle_add(self._queued_step)

    def in_main_loop(self, fn: Callable[[], bool]) -> None:
        self._glib.idle_add(fn)

    def _queued_step(self) -> bool:
        self._step_queued = False
        self.step()
        return False

    def _on_timer(self) -> bool:
        self._timer = None
        self._timer_at = None
        self.step()
        return False

    def step(self) -> None:
        """Let the supervisor act on everything due now, report, and sleep
        until its next deadline (or the next event)."""
        sup = self.ctx.supervisor
        actions = self.actions
        assert sup is not None and actions is not None
        try:
            for _ in range(MAX_STEPS):
                due = sup.tick()
                for action in due:
                    try:
                        actions.execute(action)
                    except Exception as exc:  # noqa: BLE001 - that action failed, not the others
                        message = one_line(exc)
                        log.error("%s failed: %s", type(action).__name__, message, **for_component(action.name))
                        sup.job_finished(action.name, False, message)
                if not due:
                    break
            if not self.ctx.notifier.ready_sent and sup.ready_to_notify():
                self.ctx.notifier.ready()
                log.info("READY: %s", sup.status_line())
                self._startup_done()
            self.ctx.notifier.status(sup.status_line())
            self.ctx.write_state()
        except Exception as exc:  # noqa: BLE001 - the loop must survive anything one step meets
            log.error("supervision step failed: %s", one_line(exc))
        self._schedule(sup.next_wakeup())

    def _schedule(self, at: float | None) -> None:
        if at is not None and self._timer_at is not None and abs(at - self._timer_at) < 0.0005:
            return
        if self._timer is not None:
            self._glib.source_remove(self._timer)
            self._timer = self._timer_at = None
        if at is None:
            return
        delay_ms = max(0, math.ceil((at - self.clock.monotonic()) * 1000))
        self._timer_at = at
        self._timer = self._glib.timeout_add(delay_ms, self._on_timer)

    def _startup_done(self) -> None:
        """What only start-up needed goes: the podman client (made again for a
        restart's image check), and the garbage of start-up."""
        with self.ctx.images_lock:
            if self.ctx.images is not None:
                self.ctx.images.close()
                self.ctx.images = None
        gc.collect()

    def _on_unit(self, name: str, live: UnitState) -> None:
        self._observe(name, live)
        self.kick()

    def _observe(self, name: str, live: UnitState) -> None:
        sup = self.ctx.supervisor
        assert sup is not None
        cs = sup.get(name)
        self.ctx.live[name] = (live.active, live.sub)
        before = cs.state
        sup.unit_observed(name, live.active, live.n_restarts, live.sub)
        if cs.state != before:
            log.warning("unit %s is %s/%s: %s (%d restarts)", cs.component.unit, live.active, live.sub, cs.state,
                        cs.restarts, **for_component(name))
