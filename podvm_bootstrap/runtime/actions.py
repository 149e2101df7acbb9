"""Carrying out the supervisor's actions (supervisor.py) in the main loop:
StartUnit and RestartUnit as systemd jobs (a head start's job taken over),
OpenGate in a worker (the image verified for that very start, then the gate
released with the argv from the verified config), RunProbe in a worker (or
from the unit's state for a notify probe). Every result goes back to the
supervisor in the main loop, followed by a step."""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from podvm_bootstrap.common.errors import one_line
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.config.model import PlannedComponent
from podvm_bootstrap.images.storage import ImageError
from podvm_bootstrap.runtime.context import RunContext, for_component
from podvm_bootstrap.runtime.image_step import as_image_error, podman_images
from podvm_bootstrap.runtime.probes import run_probe
from podvm_bootstrap.runtime.supervisor import OpenGate, RestartUnit, RunProbe, StartUnit
from podvm_bootstrap.units.systemd_dbus import SystemdError

if TYPE_CHECKING:
    from collections.abc import Callable

    from podvm_bootstrap.config.policy import Policy

log = get_logger("daemon")


class MainLoop(Protocol):
    """The daemon's event loop, as the actions need it."""

    def kick(self) -> None:
        """Something happened: one step soon."""

    def step(self) -> None:
        """A step now (in the main loop)."""

    def in_main_loop(self, fn: Callable[[], bool]) -> None:
        """fn called in the main loop (from any thread); returns False."""


class Actions:
    def __init__(self, ctx: RunContext, policy: Policy, loop: MainLoop) -> None:
        self.ctx = ctx
        self.policy = policy
        self.loop = loop
        self._probes: ThreadPoolExecutor | None = None
        self._gates: ThreadPoolExecutor | None = None

    def shutdown(self) -> None:
        """The workers' queues dropped, without waiting for those under way."""
        for pool in (self._probes, self._gates):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def execute(self, action: StartUnit | RestartUnit | OpenGate | RunProbe) -> None:
        ctx = self.ctx
        sup = ctx.supervisor
        assert sup is not None
        name = action.name
        unit = ctx.planned[name].unit
        if isinstance(action, RunProbe):
            self._probe(action)
            return
        if isinstance(action, OpenGate):
            self._open_gate(action)
            return
        systemd = ctx.systemd
        assert systemd is not None
        early = ctx.early.pop(name, None)
        if isinstance(action, RestartUnit) or name in ctx.restart_on_start:
            # (the image is verified for this start at its gate)
            ctx.restart_on_start.discard(name)
            log.info("restarting %s (restart %d): %s", unit, sup.get(name).restarts,
                     sup.get(name).last_error or "changed", **for_component(name))
            call = systemd.restart
        else:
            log.info("starting %s", unit, **for_component(name))
            # Every container at once: with After= (and the jobs Wants= pulls
            # in) systemd would set them up one after another; the gates keep
            # each process behind its dependencies.
            call = partial(systemd.start, ignore_dependencies=True)
        generation = sup.get(name).generation

        def on_done(result: str) -> None:
            if sup.get(name).generation == generation:
                sup.job_finished(name, result == "done", result)
                if result != "done":
                    log.error("job for %s: %s", unit, result, **for_component(name))
                self.loop.kick()
        if early is not None and not isinstance(action, RestartUnit):
            # Started before the user-data with this very unit text: its job
            # (or, when it failed, a fresh one) is this start's.
            def after_early(result: str) -> None:
                if result == "done":
                    on_done(result)
                else:
                    log.info("its early start ended %s: starting it again", result, **for_component(name))
                    try:
                        systemd.restart(unit, on_done)
                    except SystemdError as exc:
                        log.error("%s", exc, **for_component(name))
                        on_done("failed")
            early.then(after_early)
            return
        try:
            call(unit, on_done)
        except SystemdError as exc:
            log.error("%s", exc, **for_component(name))
            sup.job_finished(name, False, str(exc))

    # --- gates ----------------------------------------------------------------

    def _verify_for_start(self, planned: PlannedComponent) -> Any:
        """images.verify for one start (any thread); after READY the podman
        client is not kept between starts."""
        ctx = self.ctx
        with ctx.images_lock:
            try:
                if ctx.images is None:
                    ctx.images = podman_images(ctx.paths, ctx.settings)
                images = ctx.images
                trust = self.policy.trust_for(planned.name)
                return as_image_error(lambda: images.verify(planned.image, trust), planned)
            finally:
                if ctx.notifier.ready_sent and ctx.images is not None:
                    ctx.images.close()
                    ctx.images = None

    def _open_gate(self, action: OpenGate) -> None:
        """Release the start's gate in a worker: find the container waiting at
        it, verify the image for this start, hand over the argv from the
        verified config. The result comes back to the main loop."""
        log.info("opening its gate (%s)", "dependencies ready" if action.wait else "adopted: only if one waits",
                 **for_component(action.name))
        if self._gates is None:
            self._gates = ThreadPoolExecutor(max_workers=max(2, len(self.ctx.planned)), thread_name_prefix="gate")
        future = self._gates.submit(self._release_gate, action)

        def deliver(f: Future) -> None:
            try:
                ok, detail, image_error = f.result()
            except Exception as exc:  # noqa: BLE001
                ok, detail, image_error = False, one_line(exc), False
            self.loop.in_main_loop(lambda: self._gate_done(action, ok, detail, image_error))
        future.add_done_callback(deliver)

    def _release_gate(self, action: OpenGate) -> tuple[bool, str, bool]:
        """(released, detail, the image failed its check) — in a worker thread."""
        from podvm_bootstrap.units.gate import GateError, exec_argv, fifo_path, gate_dir, open_waiting_gate, release

        ctx = self.ctx
        planned = ctx.planned[action.name]
        # This plan's FIFO, keyed by the container it was rendered for: a
        # container of another definition waits at another one (gate.py).
        fifo = Path(fifo_path(gate_dir(ctx.paths.state_dir), action.name, ctx.gate_keys[action.name]))
        bound = ctx.settings.runtime.job_timeout
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
        ctx = self.ctx
        sup = ctx.supervisor
        assert sup is not None and ctx.systemd is not None
        name = action.name
        if image_error:
            if sup.get(name).generation == action.generation:
                log.error("image does not verify, its process is not started: %s", detail, **for_component(name))
                sup.image_failed(name, detail)
                ctx.systemd.stop(ctx.planned[name].unit, lambda result: None)
        elif sup.get(name).generation == action.generation:
            (log.info if ok else log.error)("gate %s: %s", "open" if ok else "not released", detail,
                                            **for_component(name))
            sup.gate_opened(name, action.generation, ok, detail)
        self.loop.step()
        return False

    # --- probes ---------------------------------------------------------------

    def _probe(self, action: RunProbe) -> None:
        name = action.name
        if action.probe.kind == "notify":
            live = self.ctx.live.get(name, ("", ""))[0]
            ok = live == "active"
            self._probe_done(action, ok, "" if ok else "unit not active (no READY=1 yet)")
            return
        if self._probes is None:
            self._probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        future = self._probes.submit(run_probe, action.probe, name, action.timeout, root=self.ctx.paths.root,
                                     podman_socket=self.ctx.settings.runtime.podman_socket)

        def deliver(f: Future) -> None:
            try:
                ok, detail = f.result()
            except Exception as exc:  # noqa: BLE001
                ok, detail = False, str(exc)
            self.loop.in_main_loop(lambda: self._probe_done(action, ok, detail))
        future.add_done_callback(deliver)

    def _probe_done(self, action: RunProbe, ok: bool, detail: str) -> bool:
        sup = self.ctx.supervisor
        assert sup is not None
        cs = sup.get(action.name)
        before = cs.state
        sup.probe_finished(action.name, action.generation, ok, detail, action.seq)
        if cs.state != before:
            level = log.info if ok else log.warning
            level("%s probe %s: %s%s", action.purpose, "passed" if ok else "failed", cs.state,
                  f" ({detail})" if detail else "", **for_component(action.name))
        self.loop.step()
        return False
