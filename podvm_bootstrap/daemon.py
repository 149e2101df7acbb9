"""`podvm-bootstrap run`: the daemon's orchestration.

fetch user-data → provision files → plan → ensure images (verified) → render
and write units → start by dependencies → READY=1 → supervise, in a GLib main
loop (D-Bus signals, timers, SIGTERM). SIGTERM ends supervision and leaves the
components running. A restarted daemon adopts what runs: a unit whose
definition did not change and that is active is not started again."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any, Callable

from podvm_bootstrap.errors import EXIT_OK, PolicyFailure, UserDataError
from podvm_bootstrap.fsutil import atomic_write, write_if_changed
from podvm_bootstrap.images import ImageError, PodmanImages, PullPacing
from podvm_bootstrap.log import get_logger
from podvm_bootstrap.model import OverrideDecision, Plan, PlannedComponent
from podvm_bootstrap.notify import Notifier
from podvm_bootstrap.paths import Paths
from podvm_bootstrap.probes import run_probe
from podvm_bootstrap.state import now_iso, read_state, write_state
from podvm_bootstrap.supervisor import (FAILED, PENDING, PULLING, RestartUnit, RunProbe, StartUnit, Supervisor,
                                        SupervisorConfig)
from podvm_bootstrap.systemd_units import Systemd, SystemdError
from podvm_bootstrap.backoff import Backoff

log = get_logger("daemon")

TICK_MS = 100
UNIT_CHECK_INTERVAL = 1.0
UP_STATES = ("active", "activating", "reloading")


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
    def __init__(self, paths: Paths, source: Any, *, systemd_factory: Callable[[], Systemd] = Systemd,
                 notifier: Notifier | None = None) -> None:
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
        self.live: dict[str, tuple[str, str]] = {}
        self.restart_on_start: set[str] = set()
        self.units_written: list[str] = []
        self.phase = "starting"
        self.supervisor: Supervisor | None = None
        self._written_version = -1
        self._last_unit_check = 0.0
        self._probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")

    # --- entry -------------------------------------------------------------

    def run(self) -> int:
        previous = signal.signal(signal.SIGTERM, self._terminate_early)
        try:
            self._run()
        except Terminated:
            log.info("SIGTERM before supervision began; stopping (components left as they are)")
            self.phase = "stopped"
            self._write_state(force=True)
        finally:
            signal.signal(signal.SIGTERM, previous)
            self._probes.shutdown(wait=False, cancel_futures=True)
        return EXIT_OK

    def _terminate_early(self, signum: int, frame: object) -> None:
        raise Terminated()

    def _run(self) -> None:
        self.previous_state = read_state(self.paths.state_dir) or {}
        self.notifier.status("reading user-data")
        plan = self._prepare()
        self.notifier.status("connecting to systemd")
        self.systemd = self.systemd_factory()
        self.images = PodmanImages(
            self.settings.runtime.podman_socket,
            auth_file=self.paths.rooted(self.settings.runtime.auth_file),
            pacing=PullPacing(self.settings.runtime.pull_retries, self.settings.runtime.pull_timeout,
                              Backoff(self.settings.runtime.pull_backoff, self.settings.runtime.pull_backoff_max)))
        runtime = self.settings.runtime
        self.supervisor = Supervisor(
            [p.component for p in plan.components], self.clock,
            SupervisorConfig(job_timeout=runtime.job_timeout, crash_loop_restarts=runtime.crash_loop_restarts,
                             crash_loop_window=runtime.crash_loop_window))
        self.planned = {p.name: p for p in plan.components}
        self._write_state()
        self.notifier.status("checking images")
        self._ensure_images()
        self._write_plan()
        self.notifier.status("starting components")
        self._install_units()
        self._write_state()
        self._supervise()

    # --- stage 1: user-data, provisioning, plan -----------------------------

    def _prepare(self) -> Plan:
        from podvm_bootstrap.cloudconfig import parse_userdata
        from podvm_bootstrap.manifest import load_manifest
        from podvm_bootstrap.planner import make_plan
        from podvm_bootstrap.policy import load_policy
        from podvm_bootstrap.provision import provision_files
        from podvm_bootstrap.settings import load_settings
        from podvm_bootstrap.stages import read_raw_userdata

        self.settings = load_settings(self.paths.bootstrap_yaml)
        manifest = load_manifest(self.paths.components_yaml)
        self.policy = load_policy(self.paths.policy_yaml)
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        saved = self.paths.state_dir / "user-data"
        overrides: dict[str, str] = {}
        try:
            raw = read_raw_userdata(self.paths, self.settings.userdata, self.source)
        except UserDataError as exc:
            log.error("user-data ignored: %s; going on with the baked defaults", exc)
            self.boot["userdata"] = f"error: {exc}"
            raw = None
        else:
            self.boot["userdata"] = "none" if raw is None else f"{len(raw)} bytes"
        if raw is None:
            saved.unlink(missing_ok=True)
        else:
            atomic_write(saved, raw, 0o600)
            userdata = parse_userdata(raw)
            for problem in userdata.problems:
                log.error("user-data: %s", problem)
            results = provision_files(userdata.write_files, self.settings.provision.allowed_paths, self.paths.root)
            for result in results:
                (log.info if result.written else log.error)("provision: %s", result.line())
            self.boot["provisioned"] = [r.line() for r in results]
            self.boot["userdata_problems"] = list(userdata.problems)
            overrides = userdata.images
        plan = make_plan(manifest, self.policy, overrides)
        for error in plan.errors:
            log.error("%s", error)
        self.boot["plan_errors"] = list(plan.errors)
        self.plan = plan
        self._write_plan()
        if plan.refused:
            raise PolicyFailure("an override was refused and the policy says fail; nothing started")
        return plan

    def _write_plan(self) -> None:
        plan = Plan(tuple(self.planned.get(p.name, p) for p in self.plan.components), self.plan.start_order,
                    self.plan.errors, self.plan.refused)
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
        log.info("image %s verified (%s)", planned.image, planned.source, **_log(name))

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
            requested = planned.override.requested if planned.override else str(planned.image)
            fallback = PlannedComponent(planned.component, planned.component.image, "default",
                                        OverrideDecision(requested, False, f"image unusable: {exc}"))
            return self._stored(fallback, allow_tag)

    def _stored(self, planned: PlannedComponent, allow_tag: bool) -> PlannedComponent:
        stored = self.images.ensure(planned.image, allow_tag=allow_tag)
        if stored.from_tag is not None:
            self.resolved_from[planned.name] = str(planned.image)
        return replace(planned, image=stored.ref)

    # --- stage 3: units -----------------------------------------------------

    def _install_units(self) -> None:
        from podvm_bootstrap.render import render_units

        assert self.supervisor is not None
        runnable = [p for p in self.planned.values() if self.supervisor.get(p.name).state != FAILED]
        units = render_units(Plan(tuple(runnable), self.plan.start_order), source=str(self.paths.components_yaml))
        self.paths.unit_dir.mkdir(parents=True, exist_ok=True)
        old_components = self.previous_state.get("components") or {}
        changed: set[str] = set()
        any_written = False
        for planned in runnable:
            text = units[planned.unit]
            wrote = write_if_changed(self.paths.unit_dir / planned.unit, text.encode(), 0o644)
            any_written |= wrote
            self.unit_hashes[planned.name] = unit_hash(text)
            before = (old_components.get(planned.name) or {}).get("unit_hash")
            if wrote or (before is not None and before != self.unit_hashes[planned.name]):
                changed.add(planned.name)
        self.units_written = [p.unit for p in runnable]
        stale = set(self.previous_state.get("units") or []) - set(self.units_written)
        stale |= {p.unit for p in self.planned.values()
                  if p.unit not in self.units_written and (self.paths.unit_dir / p.unit).exists()}
        for unit in sorted(stale):
            self._remove_unit(unit)
        if any_written or stale:
            self.systemd.reload()
        for planned in runnable:
            name = planned.name
            try:
                live = self.systemd.state(planned.unit)
            except SystemdError as exc:
                log.error("%s", exc, **_log(name))
                continue
            if live.active not in UP_STATES:
                continue
            if name in changed:
                log.info("unit %s changed: restarting it", planned.unit, **_log(name))
                self.restart_on_start.add(name)
            else:
                restarts = (old_components.get(name) or {}).get("restarts", 0)
                log.info("unit %s unchanged and %s: adopting it", planned.unit, live.active, **_log(name))
                self.supervisor.adopt(name, restarts=restarts if isinstance(restarts, int) else 0)

    def _remove_unit(self, unit: str) -> None:
        """Stop a unit no longer planned (bounded wait) and delete its file."""
        done: list[str] = []
        try:
            if self.systemd.state(unit).active not in ("inactive", "failed"):
                self.systemd.stop(unit, done.append)
                if not self.systemd.wait_jobs(lambda: not done, self.settings.runtime.job_timeout):
                    log.error("stopping %s did not finish within %gs", unit, self.settings.runtime.job_timeout)
        except SystemdError as exc:
            log.error("%s", exc)
        path = self.paths.unit_dir / unit
        if path.exists() or path.is_symlink():
            path.unlink()
        log.info("unit %s is no longer planned: stopped and removed (%s)", unit, done[0] if done else "not running")

    # --- stage 4: supervision -------------------------------------------------

    def _supervise(self) -> None:
        from gi.repository import GLib

        self.loop = GLib.MainLoop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, self._on_sigterm)
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, self._on_sigterm)
        GLib.timeout_add(TICK_MS, self._on_tick)
        self.phase = "supervising"
        self._on_tick()
        self.loop.run()

    def _on_sigterm(self) -> bool:
        log.info("SIGTERM: supervision stops; the components keep running")
        self.notifier.stopping()
        self.phase = "stopped"
        self._write_state(force=True)
        self.loop.quit()
        return False

    def _on_tick(self) -> bool:
        try:
            self._tick()
        except Exception as exc:  # noqa: BLE001 - the loop must survive anything one tick meets
            log.error("supervision step failed: %s", " ".join(str(exc).split()))
        return True

    def _tick(self) -> None:
        sup = self.supervisor
        assert sup is not None
        now = self.clock.monotonic()
        if now - self._last_unit_check >= UNIT_CHECK_INTERVAL:
            self._last_unit_check = now
            self._observe_units()
        for action in sup.tick():
            self._execute(action)
        if not self.notifier.ready_sent and sup.ready_to_notify():
            self.notifier.ready()
            log.info("READY: %s", sup.status_line())
        self.notifier.status(sup.status_line())
        self.notifier.watchdog(now)
        self._write_state()

    def _observe_units(self) -> None:
        sup = self.supervisor
        assert sup is not None
        for name, cs in sup.components.items():
            if cs.state in (PENDING, PULLING, FAILED):
                continue
            try:
                live = self.systemd.state(cs.component.unit)
            except SystemdError as exc:
                log.warning("%s", exc, **_log(name))
                continue
            self.live[name] = (live.active, live.sub)
            before = cs.state
            sup.unit_observed(name, live.active, live.n_restarts)
            if cs.state != before:
                log.warning("unit %s is %s/%s: %s", cs.component.unit, live.active, live.sub, cs.state, **_log(name))

    def _execute(self, action: StartUnit | RestartUnit | RunProbe) -> None:
        sup = self.supervisor
        assert sup is not None
        name = action.name
        unit = self.planned[name].unit
        if isinstance(action, RunProbe):
            self._probe(action)
            return
        if isinstance(action, RestartUnit) or name in self.restart_on_start:
            self.restart_on_start.discard(name)
            try:
                self.images.verify(self.planned[name].image)  # at every start, not only at pull
            except ImageError as exc:
                log.error("image no longer verifies, not restarting: %s", exc, **_log(name))
                sup.image_failed(name, str(exc))
                self.systemd.stop(unit, lambda result: None)
                return
            log.info("restarting %s (restart %d): %s", unit, sup.get(name).restarts,
                     sup.get(name).last_error or "changed", **_log(name))
            call = self.systemd.restart
        else:
            log.info("starting %s", unit, **_log(name))
            call = self.systemd.start
        generation = sup.get(name).generation

        def on_done(result: str) -> None:
            if sup.get(name).generation == generation:
                sup.job_finished(name, result == "done", result)
                if result != "done":
                    log.error("job for %s: %s", unit, result, **_log(name))
        try:
            call(unit, on_done)
        except SystemdError as exc:
            log.error("%s", exc, **_log(name))
            sup.job_finished(name, False, str(exc))

    def _probe(self, action: RunProbe) -> None:
        sup = self.supervisor
        assert sup is not None
        name = action.name
        if action.probe.kind == "notify":
            try:
                ok = self.systemd.state(self.planned[name].unit).active == "active"
            except SystemdError as exc:
                sup.probe_finished(name, action.generation, False, str(exc))
                return
            self._probe_done(action, ok, "" if ok else "unit not active (no READY=1 yet)")
            return
        from gi.repository import GLib

        future = self._probes.submit(run_probe, action.probe, name, action.timeout, root=self.paths.root,
                                     podman_socket=self.settings.runtime.podman_socket)

        def deliver(f: Future) -> None:
            try:
                ok, detail = f.result()
            except Exception as exc:  # noqa: BLE001
                ok, detail = False, str(exc)
            GLib.idle_add(lambda: self._probe_done(action, ok, detail) and False)
        future.add_done_callback(deliver)

    def _probe_done(self, action: RunProbe, ok: bool, detail: str) -> bool:
        sup = self.supervisor
        assert sup is not None
        cs = sup.get(action.name)
        before = cs.state
        sup.probe_finished(action.name, action.generation, ok, detail)
        if cs.state != before:
            level = log.info if ok else log.warning
            level("%s probe %s: %s%s", action.purpose, "passed" if ok else "failed", cs.state,
                  f" ({detail})" if detail else "", **_log(action.name))
        return False

    # --- state --------------------------------------------------------------

    def _write_state(self, force: bool = False) -> None:
        sup = self.supervisor
        if sup is not None and not force and sup.version == self._written_version:
            return
        components: dict[str, Any] = {}
        snapshot = sup.snapshot() if sup is not None else {}
        for name, planned in self.planned.items():
            entry = dict(snapshot.get(name, {}))
            info = planned.to_json()
            entry.update({
                "unit": planned.unit, "image": info["image"], "digest": info["digest"], "source": info["source"],
                "override": info["override"], "resolved_from": self.resolved_from.get(name),
                "unit_hash": self.unit_hashes.get(name),
                "active_state": self.live.get(name, (None, None))[0],
                "sub_state": self.live.get(name, (None, None))[1],
            })
            components[name] = entry
        write_state(self.paths.state_dir, {
            "daemon": {"pid": os.getpid(), "started": self.started, "updated": now_iso(), "phase": self.phase,
                       "ready": self.notifier.ready_sent,
                       "status": sup.status_line() if sup is not None else self.phase},
            "boot": self.boot,
            "units": self.units_written,
            "components": components,
        })
        if sup is not None:
            self._written_version = sup.version
