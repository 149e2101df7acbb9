"""The supervisor's pure core: per-component state, health counting, restart
backoff, crash-loop detection and the READY decision. No I/O: the daemon feeds
it events (image results, job results, probe results, observed unit states)
and carries out the actions `tick()` returns, then sleeps until
`next_wakeup()` or the next event. Time comes from a Clock, so tests drive it
with a fake one.

Health probes run at a fixed rate (slot n+1 = slot n + interval, missed slots
skipped), so a probe's own duration does not delay the next one; a probe that
outlives its timeout counts as failed at the timeout.

Start gates (gate.py): every component's unit is started as soon as its
image is verified, all at once (podman sets the containers up in parallel);
its own process waits at the gate. A start's gate is opened (OpenGate: the
daemon verifies the image for that start and releases it) once the
components it needs are ready; only then do its ready probes run. Every
start goes through a gate: the daemon's, systemd's own Restart=, and a unit
adopted by a restarted daemon (there the gate is released only if a
container is waiting at it: an adopted process may be running already)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from podvm_bootstrap.common.backoff import Backoff
from podvm_bootstrap.config.model import Component, Probe

PENDING = "pending"
PULLING = "pulling"
STARTING = "starting"
READY = "ready"
UNHEALTHY = "unhealthy"
RESTARTING = "restarting"
FAILED = "failed"
CRASH_LOOP = "crash-loop"
UP = (READY, UNHEALTHY)  # has passed its ready probe and is not known down
# A start's gate: closed (waiting for dependencies), opening (the daemon is
# verifying and releasing), open (the component's own process runs).
GATE_CLOSED = "closed"
GATE_OPENING = "opening"
GATE_OPEN = "open"


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def wall(self) -> float: ...


@dataclass(frozen=True)
class SupervisorConfig:
    ready_poll: float = 0.025        # between ready-probe attempts at start
    job_timeout: float = 90.0        # a start/restart job must finish within this
    crash_loop_restarts: int = 5     # this many restarts ...
    crash_loop_window: float = 300.0  # ... within this window = crash loop
    stable_after: float = 60.0       # ready this long: restart backoff starts over
    unit_settle: float = 0.5         # a unit seen failed/inactive that systemd does not restart within
                                     # this (Restart= goes failed → auto-restart) is restarted by us


# Actions for the daemon to carry out.
@dataclass(frozen=True)
class StartUnit:
    name: str


@dataclass(frozen=True)
class RestartUnit:
    name: str


@dataclass(frozen=True)
class OpenGate:
    name: str
    generation: int  # the start it is for: a result for an older one is dropped
    wait: bool       # wait for a container to reach the gate (False: release only one already waiting)


@dataclass(frozen=True)
class RunProbe:
    name: str
    probe: Probe
    timeout: float
    generation: int  # results of an older generation are stale and dropped
    purpose: str     # "ready" | "health"
    seq: int = 0     # this probe; a result after its timeout (already counted) is dropped


Action = StartUnit | RestartUnit | OpenGate | RunProbe


@dataclass
class ComponentState:
    component: Component
    state: str = PENDING
    image_ok: bool = False
    health: str = "unknown"          # unknown | passing | failing
    consecutive_failures: int = 0
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)
    backoff_attempt: int = 0
    last_error: str | None = None
    started_mono: float | None = None
    ready_mono: float | None = None
    generation: int = 0
    job_pending_since: float | None = None
    probe_in_flight: bool = False
    probe_seq: int = 0
    probe_deadline: float = 0.0       # the in-flight probe fails at this time
    probe_timeout: float = 0.0
    probe_slot: float = 0.0           # scheduled time of the last health probe
    next_probe_at: float = 0.0
    ready_deadline: float = 0.0
    restart_at: float | None = None
    await_unit_until: float | None = None  # systemd restarts the unit itself (Restart=): wait this long
    n_restarts_seen: int | None = None  # systemd's NRestarts, last observed
    restarts_ahead: int = 0           # restarts counted before NRestarts showed them
    active_state: str | None = None
    gate: str = GATE_CLOSED
    adopted_start: bool = False       # this start is an adopted unit's (see OpenGate.wait)

    @property
    def name(self) -> str:
        return self.component.name


class Supervisor:
    def __init__(self, components: Iterable[Component], clock: Clock,
                 config: SupervisorConfig = SupervisorConfig(),
                 rng: Callable[[], float] = random.random) -> None:
        self.clock = clock
        self.config = config
        self.rng = rng
        self.components: dict[str, ComponentState] = {c.name: ComponentState(c) for c in components}
        self.version = 0  # bumped on every change of what status shows
        self._wall_offset = clock.wall() - clock.monotonic()

    # --- queries ---------------------------------------------------------

    def get(self, name: str) -> ComponentState:
        return self.components[name]

    def crash_looping(self, cs: ComponentState) -> bool:
        now = self.clock.monotonic()
        recent = [t for t in cs.restart_times if now - t <= self.config.crash_loop_window]
        return len(recent) >= self.config.crash_loop_restarts

    def reported_state(self, cs: ComponentState) -> str:
        """The state status shows: a component that keeps failing shows
        crash-loop (it is still retried) until it comes up again."""
        if cs.state in (STARTING, RESTARTING) and self.crash_looping(cs):
            return CRASH_LOOP
        return cs.state

    def ready_to_notify(self) -> bool:
        """READY=1: every essential component is ready; with none essential,
        every component is ready or has given up (failed, crash-looping, or
        blocked behind one that did)."""
        states = list(self.components.values())
        essential = [cs for cs in states if cs.component.essential]
        if essential:
            return all(cs.state in UP for cs in essential)
        return all(cs.state in UP or self._settled_down(cs, set()) for cs in states)

    def _settled_down(self, cs: ComponentState, seen: set[str]) -> bool:
        if self.reported_state(cs) in (FAILED, CRASH_LOOP):
            return True
        if (cs.state == PENDING or (cs.state == STARTING and cs.gate == GATE_CLOSED)) and cs.name not in seen:
            seen.add(cs.name)
            return any(self._settled_down(self.components[d], seen) for d in cs.component.after
                       if d in self.components)
        return False

    def status_line(self) -> str:
        states = list(self.components.values())
        up = sum(1 for cs in states if cs.state in UP)
        parts = [f"{up}/{len(states)} ready"]
        for cs in states:
            state = self.reported_state(cs)
            if state == READY:
                continue
            text = f"{cs.name} {state}"
            if state == CRASH_LOOP:
                text += f" ({cs.restarts} restarts)"
            if cs.last_error and state in (FAILED, CRASH_LOOP, UNHEALTHY, RESTARTING):
                text += f": {cs.last_error}"
            parts.append(text)
        line = "; ".join(parts)
        return line if len(line) <= 400 else line[:397] + "..."

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {cs.name: self._snapshot_one(cs) for cs in self.components.values()}

    def _snapshot_one(self, cs: ComponentState) -> dict[str, Any]:
        return {
            "state": self.reported_state(cs),
            "health": cs.health,
            "essential": cs.component.essential,
            "restarts": cs.restarts,
            "crash_loop": self.crash_looping(cs),
            "last_error": cs.last_error,
            "started": self._stamp(cs.started_mono),
            "ready": self._stamp(cs.ready_mono),
        }

    def _stamp(self, mono: float | None) -> dict[str, Any] | None:
        if mono is None:
            return None
        wall = datetime.fromtimestamp(mono + self._wall_offset, UTC)
        return {"wall": wall.isoformat(timespec="milliseconds"), "monotonic": round(mono, 3)}

    # --- events ----------------------------------------------------------

    def image_pulling(self, name: str) -> None:
        self._set(self.components[name], PULLING)

    def image_ready(self, name: str) -> None:
        cs = self.components[name]
        cs.image_ok = True
        if cs.state == PULLING:
            self._set(cs, PENDING)

    def image_failed(self, name: str, reason: str) -> None:
        """The image is missing or does not verify: it never runs."""
        cs = self.components[name]
        cs.image_ok = False
        cs.restart_at = None
        cs.await_unit_until = None
        cs.job_pending_since = None
        cs.generation += 1
        cs.probe_in_flight = False
        self._set(cs, FAILED, error=reason)

    def adopt(self, name: str, restarts: int = 0) -> None:
        """The unit is already active with the same definition: wait for it to be
        ready without starting it again (restarts: the count so far)."""
        cs = self.components[name]
        cs.restarts = max(cs.restarts, restarts)
        self._begin_start(cs, job=False, adopted=True)

    def job_finished(self, name: str, ok: bool, result: str) -> None:
        cs = self.components[name]
        if cs.job_pending_since is None:
            return
        cs.job_pending_since = None
        if not ok:
            self._failure(cs, f"unit {cs.component.unit} job {result}")
        else:
            self._ready_without_probe(cs)
            self._changed()

    def gate_opened(self, name: str, generation: int, ok: bool, detail: str = "") -> None:
        """The daemon's answer to OpenGate: released (ok), or not (no container
        came to the gate in time, or it could not be released)."""
        cs = self.components[name]
        if generation != cs.generation or cs.gate != GATE_OPENING:
            return
        if not ok:
            self._failure(cs, f"gate not released: {detail}")
            return
        now = self.clock.monotonic()
        cs.gate = GATE_OPEN
        cs.next_probe_at = now
        ready = cs.component.ready
        cs.ready_deadline = now + (ready.timeout if ready is not None else 0.0)  # from the release on
        self._ready_without_probe(cs)
        self._changed()

    def _ready_without_probe(self, cs: ComponentState) -> None:
        if (cs.state == STARTING and cs.component.ready is None and cs.gate == GATE_OPEN
                and cs.job_pending_since is None):
            self._became_ready(cs)

    def probe_finished(self, name: str, generation: int, ok: bool, detail: str = "", seq: int | None = None) -> None:
        cs = self.components[name]
        if generation != cs.generation or not cs.probe_in_flight or (seq is not None and seq != cs.probe_seq):
            return
        self._probe_result(cs, ok, detail)

    def _probe_result(self, cs: ComponentState, ok: bool, detail: str) -> None:
        cs.probe_in_flight = False
        now = self.clock.monotonic()
        if cs.state == STARTING:
            if ok:
                self._became_ready(cs)
            else:
                cs.next_probe_at = now + self.config.ready_poll
            return
        if cs.state not in UP:
            return
        health = cs.component.health
        cs.next_probe_at = self._next_slot(cs.probe_slot, health.interval, now)
        if ok:
            if cs.state != READY or cs.health != "passing" or cs.consecutive_failures:
                cs.consecutive_failures = 0
                cs.health = "passing"
                self._set(cs, READY)
            return
        cs.consecutive_failures += 1
        cs.health = "failing"
        if cs.consecutive_failures >= health.failures:
            self._failure(cs, f"health probe failed {cs.consecutive_failures} times: {detail}")
        else:
            self._set(cs, UNHEALTHY, error=f"health probe failed: {detail}")

    @staticmethod
    def _next_slot(slot: float, interval: float, now: float) -> float:
        """The first slot of the fixed-rate schedule after `slot` that is not
        already past (a probe that took longer than an interval skips slots)."""
        following = slot + interval
        if following > now:
            return following
        return slot + (math.floor((now - slot) / interval) + 1) * interval

    def unit_observed(self, name: str, active_state: str, n_restarts: int | None = None, sub_state: str = "") -> None:
        """What systemd says about the unit now (PropertiesChanged). A unit that
        leaves `active` while we expect it up is down at once: the restart is
        counted and the component waits for systemd's Restart= to bring the
        unit back (activating → active, then the ready probe). A unit that
        stays failed or inactive for `unit_settle` (systemd passes through
        those on its way to auto-restart) is restarted by the supervisor.
        systemd's NRestarts catches restarts not seen as a state change."""
        cs = self.components[name]
        previous = cs.active_state
        if active_state != previous:
            cs.active_state = active_state
            self._changed()
        down = active_state in ("failed", "inactive")
        now = self.clock.monotonic()
        if cs.state in UP or (cs.state == STARTING and cs.job_pending_since is None):
            if down or (previous == "active" and active_state not in ("active", "reloading")):
                self._systemd_restarting(cs, f"{active_state}/{sub_state}" if sub_state else active_state)
                if down:
                    cs.await_unit_until = now + self.config.unit_settle
        elif cs.state == RESTARTING and cs.await_unit_until is not None:
            # A new start by systemd: its gate waits for us (for a `notify`
            # component the unit stays activating until the released process
            # sends READY=1, so activating/start counts as well).
            if active_state == "active" or (active_state == "activating" and sub_state in ("start", "start-post")):
                self._begin_start(cs, job=False)
            elif down:
                cs.await_unit_until = min(cs.await_unit_until, now + self.config.unit_settle)
            else:  # activating, deactivating: systemd is at it
                cs.await_unit_until = now + self._await_bound(cs)
        if n_restarts is not None:
            if cs.n_restarts_seen is not None and n_restarts > cs.n_restarts_seen:
                new = n_restarts - cs.n_restarts_seen
                already = min(new, cs.restarts_ahead)
                cs.restarts_ahead -= already
                if new > already:
                    self._count_restarts(cs, new - already)
            cs.n_restarts_seen = n_restarts

    def _await_bound(self, cs: ComponentState) -> float:
        return self.config.job_timeout + cs.component.restart.max_delay

    def _went_down(self, cs: ComponentState) -> None:
        """Forget what was under way for the component's last run: probe
        results and job answers of an older generation are dropped."""
        cs.generation += 1
        cs.gate = GATE_CLOSED
        cs.probe_in_flight = False
        cs.job_pending_since = None
        cs.health = "failing" if cs.component.ready is not None else cs.health

    def _systemd_restarting(self, cs: ComponentState, live: str) -> None:
        now = self.clock.monotonic()
        self._went_down(cs)
        cs.restart_at = None
        cs.await_unit_until = now + self._await_bound(cs)
        cs.restarts_ahead += 1
        self._count_restarts(cs, 1)
        self._set(cs, RESTARTING, error=f"unit {cs.component.unit} went down ({live}); systemd restarts it")

    # --- time ------------------------------------------------------------

    def tick(self) -> list[Action]:
        now = self.clock.monotonic()
        actions: list[Action] = []
        for cs in self.components.values():
            if cs.state == PENDING and cs.image_ok:
                self._begin_start(cs, job=True)   # all at once: the gate holds the process
                actions.append(StartUnit(cs.name))
            elif cs.state == RESTARTING and cs.restart_at is not None and now >= cs.restart_at:
                cs.restart_at = None
                self._begin_start(cs, job=True)
                actions.append(RestartUnit(cs.name))
            elif cs.state == RESTARTING and cs.await_unit_until is not None and now >= cs.await_unit_until:
                # systemd did not bring it back: our restart is the one counted
                # when it went down, unless systemd's own restarts took that one.
                counted = cs.restarts_ahead > 0
                cs.restarts_ahead = 0
                live = cs.active_state or "unknown"
                self._failure(cs, f"unit {cs.component.unit} is {live} and systemd did not restart it",
                              count=not counted)
            if cs.state == STARTING and cs.gate == GATE_CLOSED and self._deps_up(cs):
                cs.gate = GATE_OPENING
                actions.append(OpenGate(cs.name, cs.generation, wait=not cs.adopted_start))
            if cs.job_pending_since is not None and now >= cs.job_pending_since + self.config.job_timeout:
                cs.job_pending_since = None
                self._failure(cs, f"unit {cs.component.unit} job did not finish within "
                                  f"{self.config.job_timeout:g}s")
                continue
            if cs.probe_in_flight and now >= cs.probe_deadline:
                cs.probe_seq += 1  # its late result is dropped
                self._probe_result(cs, False, f"probe timed out after {cs.probe_timeout:g}s")
            probe = self._due_probe(cs, now)
            if probe is not None:
                actions.append(probe)
        return actions

    def next_wakeup(self) -> float | None:
        """When tick() has something to do next, if nothing happens before
        (None: only an event can change anything)."""
        times: list[float] = []
        for cs in self.components.values():
            if (cs.state == PENDING and cs.image_ok) or (cs.state == STARTING and cs.gate == GATE_CLOSED
                                                         and self._deps_up(cs)):
                times.append(self.clock.monotonic())
            if cs.state == RESTARTING:
                times.extend(t for t in (cs.restart_at, cs.await_unit_until) if t is not None)
            if cs.job_pending_since is not None:
                times.append(cs.job_pending_since + self.config.job_timeout)
                continue
            if cs.component.ready is None:
                continue
            if cs.probe_in_flight:
                times.append(cs.probe_deadline)
            elif cs.state == STARTING and cs.gate == GATE_OPEN:
                times.append(min(cs.next_probe_at, cs.ready_deadline))
            elif cs.state in UP:
                times.append(cs.next_probe_at)
        return min(times) if times else None

    def _due_probe(self, cs: ComponentState, now: float) -> RunProbe | None:
        ready = cs.component.ready
        if ready is None or cs.probe_in_flight or cs.job_pending_since is not None:
            return None
        if cs.state == STARTING:
            if cs.gate != GATE_OPEN:
                return None   # its process has not been released yet
            if now >= cs.ready_deadline:
                self._failure(cs, f"not ready within {ready.timeout:g}s ({ready.kind} probe)")
                return None
            if now < cs.next_probe_at:
                return None
            timeout = max(0.1, min(cs.component.health.timeout, cs.ready_deadline - now))
            return self._issue(cs, now, timeout, "ready")
        if cs.state in UP and now >= cs.next_probe_at:
            cs.probe_slot = cs.next_probe_at  # the schedule's time, not now: fixed rate
            return self._issue(cs, now, cs.component.health.timeout, "health")
        return None

    def _issue(self, cs: ComponentState, now: float, timeout: float, purpose: str) -> RunProbe:
        assert cs.component.ready is not None
        cs.probe_in_flight = True
        cs.probe_seq += 1
        cs.probe_timeout = timeout
        cs.probe_deadline = now + timeout
        return RunProbe(cs.name, cs.component.ready, timeout, cs.generation, purpose, cs.probe_seq)

    # --- transitions -----------------------------------------------------

    def _deps_up(self, cs: ComponentState) -> bool:
        return all(self.components[d].state in UP for d in cs.component.after if d in self.components)

    def _begin_start(self, cs: ComponentState, job: bool, adopted: bool = False) -> None:
        now = self.clock.monotonic()
        cs.generation += 1
        cs.gate = GATE_CLOSED
        cs.adopted_start = adopted
        cs.probe_in_flight = False
        cs.await_unit_until = None
        cs.consecutive_failures = 0
        cs.health = "unknown"
        cs.started_mono = now
        cs.ready_mono = None
        cs.job_pending_since = now if job else None
        cs.next_probe_at = now
        ready = cs.component.ready
        cs.ready_deadline = now + (ready.timeout if ready is not None else 0.0)
        cs.state = STARTING
        self._changed()

    def _became_ready(self, cs: ComponentState) -> None:
        cs.ready_mono = self.clock.monotonic()
        cs.health = "passing"
        cs.consecutive_failures = 0
        cs.next_probe_at = cs.ready_mono + cs.component.health.interval
        self._set(cs, READY, error=None)

    def _failure(self, cs: ComponentState, reason: str, count: bool = True) -> None:
        """Down, or never came up: restart after a capped, jittered backoff."""
        now = self.clock.monotonic()
        self._went_down(cs)
        cs.await_unit_until = None
        restart = cs.component.restart
        if cs.ready_mono is not None and now - cs.ready_mono >= self.config.stable_after:
            cs.backoff_attempt = 0  # it had been up long enough: backoff starts over
        cs.backoff_attempt += 1
        delay = Backoff(restart.delay, restart.max_delay).delay(cs.backoff_attempt, self.rng)
        cs.restart_at = now + delay
        if count:
            self._count_restarts(cs, 1)
        self._set(cs, RESTARTING, error=reason)

    def _count_restarts(self, cs: ComponentState, count: int) -> None:
        now = self.clock.monotonic()
        cs.restarts += count
        cs.restart_times.extend([now] * count)
        window = self.config.crash_loop_window
        cs.restart_times = [t for t in cs.restart_times if now - t <= window][-100:]
        self._changed()

    def _set(self, cs: ComponentState, state: str, *, error: object = ...) -> None:
        if error is not ...:
            cs.last_error = error  # type: ignore[assignment]
        cs.state = state
        self._changed()

    def _changed(self) -> None:
        self.version += 1
