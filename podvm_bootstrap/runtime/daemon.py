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
and the images are verified concurrently."""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from podvm_bootstrap.attest.launch_set import LaunchedComponent
from podvm_bootstrap.common.backoff import Backoff
from podvm_bootstrap.common.errors import EXIT_OK, PolicyFailure, one_line
from podvm_bootstrap.common.fsutil import atomic_write, write_if_changed
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.model import (
    ImageSource,
    OverrideDecision,
    Plan,
    PlannedComponent,
    RequestSource,
    source_label,
)
from podvm_bootstrap.images.imageref import ImageRef, parse_reference
from podvm_bootstrap.images.storage import ImageError, PodmanImages, PullPacing
from podvm_bootstrap.runtime.notify import Notifier
from podvm_bootstrap.runtime.probes import run_probe
from podvm_bootstrap.runtime.state import now_iso, state_record, write_state
from podvm_bootstrap.runtime.supervisor import (
    FAILED,
    OpenGate,
    RestartUnit,
    RunProbe,
    StartUnit,
    Supervisor,
    SupervisorConfig,
)
from podvm_bootstrap.units.systemd_dbus import Systemd, SystemdError, UnitState
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

if TYPE_CHECKING:
    from podvm_bootstrap.runtime.early_start import EarlyStart, HeadStart
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


def _image_step(fn: Callable[[], T], planned: PlannedComponent) -> T:
    """Run an image operation; whatever goes wrong in it (a malformed store or
    registry answer, an unreadable file) is that image's ImageError, never a
    crash of the daemon."""
    try:
        return fn()
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise ImageError(f"{planned.image}: {type(exc).__name__}: {one_line(exc)}") from None


class Terminated(BaseException):
    """SIGTERM before the main loop runs (BaseException: no `except Exception`
    on the way may swallow it)."""


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


def unit_hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _log(name: str) -> dict[str, Any]:
    return {"extra": {"component": name}}


class Daemon:
    def __init__(self, paths: Paths, source: Any, head: HeadStart, child: ChildFetch | None = None, *,
                 systemd_factory: Callable[[], Systemd] = Systemd, notifier: Notifier | None = None) -> None:
        self.paths = paths
        self.source = source
        self.systemd_factory = systemd_factory
        self.notifier = notifier or Notifier()
        self.clock = RealClock()
        self.started = now_iso()
        self.boot: dict[str, Any] = {}
        self.planned: dict[str, PlannedComponent] = {}
        self.resolved_from: dict[str, str] = {}
        self.unit_hashes: dict[str, str] = {}
        self.gate_keys: dict[str, str] = {}   # component -> its unit's gate FIFO key (gate.py)
        self.live: dict[str, tuple[str, str]] = {}
        self.restart_on_start: set[str] = set()
        self.units_written: list[str] = []
        self.phase = "starting"
        self.supervisor: Supervisor | None = None
        self.head = head
        self.child = child   # the user-data fetch under way in a child process
        self.previous_state = head.previous_state
        self.settings = head.settings
        self.systemd: Systemd | None = head.systemd
        self.early: dict[str, EarlyStart] = dict(head.started)   # units started before the user-data, until taken over
        self.images: PodmanImages | None = None
        self._written_key: tuple | None = None
        self._probes: ThreadPoolExecutor | None = None
        self._timer: int | None = None
        self._timer_at: float | None = None
        self._step_queued = False
        self._gates: ThreadPoolExecutor | None = None
        self._images_lock = threading.Lock()  # the podman client, shared by gate releases and start-up

    # --- entry -------------------------------------------------------------

    def run(self) -> int:
        previous = signal.signal(signal.SIGTERM, self._terminate_early)
        try:
            try:
                self._run()
            except Exception:
                self._abandon_early()
                raise
        except Terminated:
            log.info("SIGTERM before supervision began; stopping (components left as they are)")
            self.phase = "stopped"
            self._write_state(force=True)
        finally:
            signal.signal(signal.SIGTERM, previous)
            if self.child is not None:
                self.child.close()
            for pool in (self._probes, self._gates):
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
        return EXIT_OK

    def _terminate_early(self, signum: int, frame: object) -> None:
        raise Terminated()

    def _run(self) -> None:
        baked = self.head.baked
        # podman's API service is started only when something needs it (a
        # store storage.conf does not describe, a pull, an exec probe).
        self.images = self._images()
        if not self.images.reads_files:
            knock(self.settings.runtime.podman_socket)
            in_background(self._activate_podman, "podman")
        systemd = None if self.systemd is not None else in_background(self.systemd_factory, "systemd")
        # tpm2-pytss's bindings load in the background, overlapping the fetch, not delaying the measurement.
        from podvm_bootstrap.attest.tpm import preload_bindings
        in_background(lambda: preload_bindings(self.settings.measure.tpm, self.paths.root), "tpm")
        self.notifier.status("reading user-data")
        plan = self._prepare(baked)
        if any(p.component.ready is not None and p.component.ready.kind == "exec" for p in plan.components):
            knock(self.settings.runtime.podman_socket)   # up by the time the first exec probe runs
        if systemd is not None:
            self.notifier.status("connecting to systemd")
            self.systemd = systemd.result()
        runtime = self.settings.runtime
        self.supervisor = Supervisor(
            [p.component for p in plan.components], self.clock,
            SupervisorConfig(job_timeout=runtime.job_timeout, crash_loop_restarts=runtime.crash_loop_restarts,
                             crash_loop_window=runtime.crash_loop_window))
        self.planned = {p.name: p for p in plan.components}
        self._write_state()
        self.notifier.status("checking images")
        self._ensure_images()
        # Before any unit starts (README "Measured launch").
        from podvm_bootstrap.attest.launch_measurement import measure_launch
        refused: list[tuple[str, str, LaunchedComponent | None]] = []
        self.boot["measurement"] = measure_launch(
            self.paths, self.settings, self.plan.start_order,
            [p for p in self.planned.values() if self.supervisor.get(p.name).state != FAILED],
            lambda name, reason, recorded: refused.append((name, reason, recorded)))
        for name, reason, recorded in refused:
            self._keep_recorded(name, reason, recorded)
        self._write_plan()
        self.notifier.status("starting components")
        self._install_units()
        self._write_state()
        self._supervise()

    # --- stage 0: the baked defaults' units, before the user-data -------------

    def _end_early(self, name: str, why: str = "the final plan changed or dropped it") -> None:
        """An early start the final plan does not keep: its container is
        ended at its gate (an empty release: the gate exits 75, nothing of the
        image ran; or the stop's SIGTERM, which the gate traps: exit 143)
        under a stop job, so that systemd's Restart= does not bring it back."""
        from podvm_bootstrap.units.gate import fifo_path, gate_dir, open_waiting_gate

        assert self.systemd is not None
        start = self.early.pop(name)
        bound = self.settings.runtime.job_timeout
        self.systemd.wait_jobs(lambda: start.result is None, bound)
        stopped: list[str] = []
        try:
            self.systemd.stop(start.unit, stopped.append)
        except SystemdError as exc:
            log.error("%s", exc, **_log(name))
            return
        if start.result == "done":
            fifo = Path(fifo_path(gate_dir(self.paths.state_dir), name, start.gate_key))
            fd = open_waiting_gate(fifo, time.monotonic() + bound)
            if fd is not None:
                os.close(fd)
        if not self.systemd.wait_jobs(lambda: not stopped, bound):
            log.error("stopping %s did not finish within %gs", start.unit, bound, **_log(name))
        # The gate's exit 75 under the stop leaves the unit failed: the early
        # start is undone, as if it had never been made.
        self.systemd.reset_failed(start.unit)
        log.info("early start of %s ended at its gate (%s): %s", start.unit, why,
                 stopped[0] if stopped else "stop pending", **_log(name))

    def _abandon_early(self) -> None:
        """Start-up failed (configuration, policy, measurement): the early
        starts end at their gates, as if never made."""
        for name in list(self.early):
            try:
                self._end_early(name, "start-up failed")
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                log.error("cannot end the early start: %s", one_line(exc), **_log(name))

    def _images(self) -> PodmanImages:
        runtime = self.settings.runtime
        return PodmanImages(
            runtime.podman_socket, auth_file=self.paths.rooted(runtime.auth_file),
            pacing=PullPacing(runtime.pull_retries, runtime.pull_timeout,
                              Backoff(runtime.pull_backoff, runtime.pull_backoff_max)))

    def _activate_podman(self) -> None:
        """Ask podman for its store now (activating its API service), while the
        user-data is fetched; a failure is reported by each image's check."""
        assert self.images is not None
        try:
            self.images.store()
        except ImageError:
            pass

    # --- stage 1: user-data, provisioning, plan -----------------------------

    def _prepare(self, baked: Baked) -> Plan:
        from podvm_bootstrap.runtime.stages import plan as make_boot_plan

        log.info("fetching the user-data, then planning")   # (the boot's timeline: start-up done)
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        resolved = make_boot_plan(self.paths, self.source, baked=baked, provision_files=True, child=self.child)
        self.policy = resolved.policy
        saved = self.paths.state_dir / "user-data"
        raw, userdata = resolved.raw, resolved.userdata
        if raw is None:
            saved.unlink(missing_ok=True)
        else:
            atomic_write(saved, raw, 0o600)
        if resolved.userdata_error is not None:
            self.boot["userdata"] = f"error: {resolved.userdata_error}"
        else:
            self.boot["userdata"] = "none" if raw is None else f"{len(raw)} bytes"
        if userdata is not None:
            self.boot["provisioned"] = [r.line() for r in resolved.provisioned]
            self.boot["userdata_problems"] = list(userdata.problems)
        plan = resolved.plan
        self.boot["plan_errors"] = list(plan.errors)
        self.plan = plan
        self._write_plan()
        if plan.refused:
            raise PolicyFailure("an override was refused and the policy says fail; nothing started")
        return plan

    def _write_plan(self) -> None:
        plan = replace(self.plan, components=tuple(self.planned.get(p.name, p) for p in self.plan.components))
        data = json.dumps(plan.to_json(), indent=2) + "\n"
        atomic_write(self.paths.state_dir / "plan.json", data.encode(), 0o644)

    # --- stage 2: images ----------------------------------------------------

    def _ensure_images(self) -> None:
        assert self.supervisor is not None
        pool = ThreadPoolExecutor(max_workers=max(1, len(self.planned)), thread_name_prefix="image")
        try:
            futures: dict[Future, str] = {}
            for name, planned in self.planned.items():
                self.supervisor.image_pulling(name)
                futures[pool.submit(self._ensure_one, planned)] = name
            self._write_state()
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5)
                for future in done:
                    self._image_result(futures[future], future)
                self._write_state()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _image_result(self, name: str, future: Future) -> None:
        assert self.supervisor is not None
        try:
            planned = future.result()
        except ImageError as exc:
            log.error("image unusable, component not started: %s", exc, **_log(name))
            self.supervisor.image_failed(name, str(exc))
            return
        self.planned[name] = planned
        self.supervisor.image_ready(name)
        signed = f", signed by {planned.signature}" if planned.signature else ""
        source = source_label(planned.source, None, planned.override.requested_by if planned.override else None)
        log.info("image %s verified (%s%s)", planned.image, source, signed, **_log(name))

    def _ensure_one(self, planned: PlannedComponent) -> PlannedComponent:
        allow_tag = self.policy.mutable_tags
        try:
            return self._stored(planned, allow_tag)
        except ImageError as exc:
            if planned.source != "override":
                raise
            if self.policy.on_rejected_override == "fail":
                raise ImageError(f"override {planned.image} unusable and the policy says fail: {exc}") from None
            log.error("override %s unusable (%s); falling back to the default %s",
                      planned.image, exc, planned.component.image, **_log(planned.name))
            refused = (OverrideDecision(str(planned.image), False, f"image unusable: {exc}")
                       if planned.override is None else
                       replace(planned.override, accepted=False, reason=f"image unusable: {exc}"))
            fallback = PlannedComponent(planned.component, planned.component.image, "default", refused,
                                        signed_by=planned.signed_by)
            return self._stored(fallback, allow_tag)

    def _stored(self, planned: PlannedComponent, allow_tag: bool) -> PlannedComponent:
        images = self.images
        assert images is not None
        trust = self.policy.trust_for(planned.name)
        stored = _image_step(lambda: images.ensure(planned.image, allow_tag=allow_tag, trust=trust), planned)
        if stored.from_tag is not None:
            self.resolved_from[planned.name] = str(planned.image)
        return replace(planned, image=stored.ref, signature=stored.signature)

    def _keep_recorded(self, name: str, reason: str, recorded: LaunchedComponent | None) -> None:
        """The plan's image is not in this boot's launch set (a daemon re-run
        in the same boot with a changed plan): it does not start. The image the
        records hold for the component is planned instead, so its unit is
        rendered as it runs (adopted untouched: stopping the forwarder or
        kata-agent would end the pod) and every later start, the daemon's or
        systemd's, runs that recorded image. None recorded: nothing starts."""
        assert self.supervisor is not None
        planned = self.planned[name]
        if recorded is None:
            log.error("not started: %s", reason, **_log(name))
            self.supervisor.image_failed(name, reason)
            return
        kept_reason = f"{reason}; its recorded {recorded.image} runs"
        if planned.source == "override" and planned.override is not None:
            override: OverrideDecision | None = replace(planned.override, accepted=False, reason=kept_reason)
        elif recorded.source == "override":
            requested_by: RequestSource = "initdata" if recorded.requested_by == "initdata" else "user-data"
            override = OverrideDecision(recorded.image, True, kept_reason, requested_by)
        else:
            override = planned.override
        source: ImageSource = ("override" if recorded.source == "override" else
                          "variant" if recorded.source == "variant" else "default")
        try:
            kept = PlannedComponent(planned.component, self._recorded_reference(name, recorded), source,
                                    override, signed_by=planned.signed_by)
            kept = self._stored(kept, allow_tag=False)
        except (ImageError, ValueError) as exc:
            message = f"{reason}; its recorded {recorded.image} is unusable: {one_line(exc)}"
            log.error("not started: %s", message, **_log(name))
            self.supervisor.image_failed(name, message)
            return
        self.planned[name] = kept
        log.error("%s", kept_reason, **_log(name))

    def _recorded_reference(self, name: str, recorded: LaunchedComponent) -> ImageRef:
        """The recorded image as the previous daemon of this boot rendered it
        (a tag kept beside the digest: its unit text unchanged), else the
        record's repo@digest. Raises ValueError for a record that does not parse."""
        ref = parse_reference(recorded.image)
        before = ((self.previous_state.get("components") or {}).get(name) or {}).get("image")
        try:
            previous = parse_reference(before) if isinstance(before, str) else None
        except ValueError:
            previous = None
        if previous is not None and (previous.repository, previous.digest) == (ref.repository, ref.digest):
            return previous
        return ref

    # --- stage 3: units -----------------------------------------------------

    def _install_units(self) -> None:
        from podvm_bootstrap.units.gate import GATE_BUSYBOX, gate_dir, prepare_fifo, remove_other_fifos, unit_gate_dir
        from podvm_bootstrap.units.render import render_units, unit_gate_key

        assert self.supervisor is not None and self.systemd is not None
        runnable = [p for p in self.planned.values() if self.supervisor.get(p.name).state != FAILED]
        gates = gate_dir(self.paths.state_dir)
        # Rendered for the whole plan (a dependent's After= may name a failed
        # component); only the runnable ones are written.
        units = render_units(Plan(tuple(self.planned.values()), self.plan.start_order),
                             source=str(self.paths.components_yaml),
                             gate_dir=unit_gate_dir(self.paths.root, self.paths.state_dir))
        self.gate_keys = {p.name: unit_gate_key(p) for p in runnable}
        for name, key in self.gate_keys.items():  # before any unit can start: a container needs its FIFO to bind-mount
            prepare_fifo(gates, name, key)
        if runnable and not self.paths.rooted(GATE_BUSYBOX).is_file():
            log.error("%s is missing (Debian's busybox-static): no container can start its gate", GATE_BUSYBOX)
        self.paths.unit_dir.mkdir(parents=True, exist_ok=True)
        old_components = self.previous_state.get("components") or {}
        written: set[str] = set()
        for planned in runnable:
            text = units[planned.unit]
            if write_if_changed(self.paths.unit_dir / planned.unit, text.encode(), 0o644):
                written.add(planned.unit)
            self.unit_hashes[planned.name] = unit_hash(text)
        self.units_written = [p.unit for p in runnable]
        rewritten = {p.name for p in runnable if p.unit in written}
        for name in to_end_early(self.early, [p.name for p in runnable], rewritten):
            self._end_early(name)
        # Other definitions' FIFOs go (after the early starts were ended at
        # theirs): a container of another definition is never released.
        for name in self.planned:
            if remove_other_fifos(gates, name, self.gate_keys.get(name)):
                log.info("gate FIFOs of its replaced containers removed", **_log(name))
        leftovers = [p.unit for p in self.planned.values() if (self.paths.unit_dir / p.unit).exists()]
        stale = stale_units(self.previous_state.get("units") or [], self.units_written, leftovers)
        for unit in stale:
            self._remove_unit(unit)
        live: dict[str, UnitState] = {}
        for planned in runnable:
            name = planned.name
            try:
                live[name] = self.systemd.watch(planned.unit, partial(self._on_unit, name))
            except SystemdError as exc:
                log.error("%s", exc, **_log(name))
        facts = [UnitFacts(p.name, p.unit, p.unit in written, self.unit_hashes[p.name],
                           (old_components.get(p.name) or {}).get("unit_hash"),
                           Live(live[p.name].active, live[p.name].loaded, live[p.name].need_reload)
                           if p.name in live else None, early=p.name in self.early)
                 for p in runnable]
        if needs_reload(facts, bool(stale)):
            self.systemd.reload()
        for fact in facts:
            name = fact.name
            if name in live:
                self._observe(name, live[name])
            mode = start_mode(fact)
            if mode == RESTART:
                log.info("unit %s changed: restarting it", fact.unit, **_log(name))
                self.restart_on_start.add(name)
            elif mode == ADOPT:
                restarts = (old_components.get(name) or {}).get("restarts", 0)
                log.info("unit %s unchanged and %s: adopting it", fact.unit, live[name].active, **_log(name))
                self.supervisor.adopt(name, restarts=restarts if isinstance(restarts, int) else 0)

    def _remove_unit(self, unit: str) -> None:
        """Stop a unit no longer planned (bounded wait) and delete its file."""
        assert self.systemd is not None
        done: list[str] = []
        try:
            if self.systemd.state(unit).active not in ("inactive", "failed"):
                self.systemd.stop(unit, done.append)
                if not self.systemd.wait_jobs(lambda: not done, self.settings.runtime.job_timeout):
                    log.error("stopping %s did not finish within %gs", unit, self.settings.runtime.job_timeout)
        except SystemdError as exc:
            log.error("%s", exc)
        self.systemd.forget(unit)
        path = self.paths.unit_dir / unit
        if path.exists() or path.is_symlink():
            path.unlink()
        log.info("unit %s is no longer planned: stopped and removed (%s)", unit, done[0] if done else "not running")

    # --- stage 4: supervision -------------------------------------------------

    def _supervise(self) -> None:
        from gi.repository import GLib

        self._glib = GLib
        self.loop = GLib.MainLoop()
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, self._on_sigterm)
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, self._on_sigterm)
        if self.notifier.watchdog_interval is not None:
            self.notifier.watchdog(self.clock.monotonic())
            GLib.timeout_add(max(1, int(self.notifier.watchdog_interval * 1000)), self._on_watchdog)
        self.phase = "supervising"
        self._step()
        self.loop.run()

    def _on_sigterm(self) -> bool:
        log.info("SIGTERM: supervision stops; the components keep running")
        self.notifier.stopping()
        self.phase = "stopped"
        try:
            self._write_state(force=True)
        except Exception as exc:  # noqa: BLE001 - stopping must not depend on /run being writable
            log.error("cannot write the final state: %s", one_line(exc))
        self.loop.quit()
        return False

    def _on_watchdog(self) -> bool:
        self.notifier.watchdog(self.clock.monotonic())
        return True

    def _kick(self) -> None:
        """Something happened: one step soon (events arriving together share it).
        Before supervision begins its first step takes everything in."""
        if self.phase == "supervising" and not self._step_queued:
            self._step_queued = True
            self._glib.idle_add(self._queued_step)

    def _queued_step(self) -> bool:
        self._step_queued = False
        self._step()
        return False

    def _on_timer(self) -> bool:
        self._timer = None
        self._timer_at = None
        self._step()
        return False

    def _step(self) -> None:
        """Let the supervisor act on everything due now, report, and sleep
        until its next deadline (or the next event)."""
        sup = self.supervisor
        assert sup is not None
        try:
            for _ in range(MAX_STEPS):
                actions = sup.tick()
                for action in actions:
                    try:
                        self._execute(action)
                    except Exception as exc:  # noqa: BLE001 - that action failed, not the others
                        message = one_line(exc)
                        log.error("%s failed: %s", type(action).__name__, message, **_log(action.name))
                        sup.job_finished(action.name, False, message)
                if not actions:
                    break
            if not self.notifier.ready_sent and sup.ready_to_notify():
                self.notifier.ready()
                log.info("READY: %s", sup.status_line())
                self._startup_done()
            self.notifier.status(sup.status_line())
            self._write_state()
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
        with self._images_lock:
            if self.images is not None:
                self.images.close()
                self.images = None
        gc.collect()

    def _on_unit(self, name: str, live: UnitState) -> None:
        self._observe(name, live)
        self._kick()

    def _observe(self, name: str, live: UnitState) -> None:
        sup = self.supervisor
        assert sup is not None
        cs = sup.get(name)
        self.live[name] = (live.active, live.sub)
        before = cs.state
        sup.unit_observed(name, live.active, live.n_restarts, live.sub)
        if cs.state != before:
            log.warning("unit %s is %s/%s: %s (%d restarts)", cs.component.unit, live.active, live.sub, cs.state,
                        cs.restarts, **_log(name))

    def _verify_for_start(self, planned: PlannedComponent) -> Any:
        """images.verify for one start (any thread); after READY the podman
        client is not kept between starts."""
        with self._images_lock:
            try:
                if self.images is None:
                    self.images = self._images()
                images = self.images
                trust = self.policy.trust_for(planned.name)
                return _image_step(lambda: images.verify(planned.image, trust), planned)
            finally:
                if self.notifier.ready_sent and self.images is not None:
                    self.images.close()
                    self.images = None

    def _execute(self, action: StartUnit | RestartUnit | OpenGate | RunProbe) -> None:
        sup = self.supervisor
        assert sup is not None
        name = action.name
        unit = self.planned[name].unit
        if isinstance(action, RunProbe):
            self._probe(action)
            return
        if isinstance(action, OpenGate):
            self._open_gate(action)
            return
        systemd = self.systemd
        assert systemd is not None
        early = self.early.pop(name, None)
        if isinstance(action, RestartUnit) or name in self.restart_on_start:
            # (the image is verified for this start at its gate)
            self.restart_on_start.discard(name)
            log.info("restarting %s (restart %d): %s", unit, sup.get(name).restarts,
                     sup.get(name).last_error or "changed", **_log(name))
            call = systemd.restart
        else:
            log.info("starting %s", unit, **_log(name))
            # Every container at once: with After= (and the jobs Wants= pulls
            # in) systemd would set them up one after another; the gates keep
            # each process behind its dependencies.
            call = partial(systemd.start, ignore_dependencies=True)
        generation = sup.get(name).generation

        def on_done(result: str) -> None:
            if sup.get(name).generation == generation:
                sup.job_finished(name, result == "done", result)
                if result != "done":
                    log.error("job for %s: %s", unit, result, **_log(name))
                self._kick()
        if early is not None and not isinstance(action, RestartUnit):
            # Started before the user-data with this very unit text: its job
            # (or, when it failed, a fresh one) is this start's.
            def after_early(result: str) -> None:
                if result == "done":
                    on_done(result)
                else:
                    log.info("its early start ended %s: starting it again", result, **_log(name))
                    try:
                        systemd.restart(unit, on_done)
                    except SystemdError as exc:
                        log.error("%s", exc, **_log(name))
                        on_done("failed")
            early.then(after_early)
            return
        try:
            call(unit, on_done)
        except SystemdError as exc:
            log.error("%s", exc, **_log(name))
            sup.job_finished(name, False, str(exc))

    def _open_gate(self, action: OpenGate) -> None:
        """Release the start's gate in a worker: find the container waiting at
        it, verify the image for this start, hand over the argv from the
        verified config. The result comes back to the main loop."""
        log.info("opening its gate (%s)", "dependencies ready" if action.wait else "adopted: only if one waits",
                 **_log(action.name))
        if self._gates is None:
            self._gates = ThreadPoolExecutor(max_workers=max(2, len(self.planned)), thread_name_prefix="gate")
        future = self._gates.submit(self._release_gate, action)

        def deliver(f: Future) -> None:
            try:
                ok, detail, image_error = f.result()
            except Exception as exc:  # noqa: BLE001
                ok, detail, image_error = False, one_line(exc), False
            self._glib.idle_add(lambda: self._gate_done(action, ok, detail, image_error))
        future.add_done_callback(deliver)

    def _release_gate(self, action: OpenGate) -> tuple[bool, str, bool]:
        """(released, detail, the image failed its check) — in a worker thread."""
        from podvm_bootstrap.units.gate import GateError, exec_argv, fifo_path, gate_dir, open_waiting_gate, release

        planned = self.planned[action.name]
        # This plan's FIFO, keyed by the container it was rendered for: a
        # container of another definition waits at another one (gate.py).
        fifo = Path(fifo_path(gate_dir(self.paths.state_dir), action.name, self.gate_keys[action.name]))
        bound = self.settings.runtime.job_timeout
        fd = open_waiting_gate(fifo, time.monotonic() + (bound if action.wait else 0.0))
        if fd is None:
            if action.wait:
                return False, f"no container reached its gate within {bound:g}s", False
            return True, "no container waiting at the gate: its process runs already", False
        try:
            verified = self._verify_for_start(planned)   # after the container exists: for THIS start
            argv = exec_argv(verified.config, planned.component.container.command)
        except ImageError as exc:
            os.close(fd)   # the gate reads nothing: the container ends, nothing of it ran
            return False, str(exc), True
        except GateError as exc:
            os.close(fd)
            return False, f"{planned.image}: {exc}", True
        try:
            release(fd, argv)
        except OSError as exc:
            return False, f"cannot release the gate: {one_line(exc)}", False
        return True, f"released {argv[0]} (image {verified.image_id[:12]} verified for this start)", False

    def _gate_done(self, action: OpenGate, ok: bool, detail: str, image_error: bool) -> bool:
        sup = self.supervisor
        assert sup is not None and self.systemd is not None
        name = action.name
        if image_error:
            if sup.get(name).generation == action.generation:
                log.error("image does not verify, its process is not started: %s", detail, **_log(name))
                sup.image_failed(name, detail)
                self.systemd.stop(self.planned[name].unit, lambda result: None)
        elif sup.get(name).generation == action.generation:
            (log.info if ok else log.error)("gate %s: %s", "open" if ok else "not released", detail, **_log(name))
            sup.gate_opened(name, action.generation, ok, detail)
        self._step()
        return False

    def _probe(self, action: RunProbe) -> None:
        name = action.name
        if action.probe.kind == "notify":
            live = self.live.get(name, ("", ""))[0]
            ok = live == "active"
            self._probe_done(action, ok, "" if ok else "unit not active (no READY=1 yet)")
            return
        if self._probes is None:
            self._probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        future = self._probes.submit(run_probe, action.probe, name, action.timeout, root=self.paths.root,
                                     podman_socket=self.settings.runtime.podman_socket)

        def deliver(f: Future) -> None:
            try:
                ok, detail = f.result()
            except Exception as exc:  # noqa: BLE001
                ok, detail = False, str(exc)
            self._glib.idle_add(lambda: self._probe_done(action, ok, detail))
        future.add_done_callback(deliver)

    def _probe_done(self, action: RunProbe, ok: bool, detail: str) -> bool:
        sup = self.supervisor
        assert sup is not None
        cs = sup.get(action.name)
        before = cs.state
        sup.probe_finished(action.name, action.generation, ok, detail, action.seq)
        if cs.state != before:
            level = log.info if ok else log.warning
            level("%s probe %s: %s%s", action.purpose, "passed" if ok else "failed", cs.state,
                  f" ({detail})" if detail else "", **_log(action.name))
        self._step()
        return False

    # --- state --------------------------------------------------------------

    def _write_state(self, force: bool = False) -> None:
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
