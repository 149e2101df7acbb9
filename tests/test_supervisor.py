"""The supervisor's pure state machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from podvm_bootstrap.config.model import Component, Health, Probe, Restart
from podvm_bootstrap.images.imageref import parse_reference
from podvm_bootstrap.runtime.supervisor import (
    CRASH_LOOP,
    FAILED,
    READY,
    RESTARTING,
    STARTING,
    UNHEALTHY,
    OpenGate,
    RestartUnit,
    RunProbe,
    StartUnit,
    Supervisor,
    SupervisorConfig,
)

IMAGE = parse_reference("quay.io/x/y@sha256:" + "a" * 64)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def comp(name: str, after: tuple[str, ...] = (), essential: bool = False, ready: bool = True,
         failures: int = 3, interval: float = 10.0, delay: float = 1.0, max_delay: float = 8.0) -> Component:
    probe = Probe("unix_socket", f"/run/{name}.sock", timeout=30.0) if ready else None
    return Component(name=name, image=IMAGE, unit=f"{name}.service", after=after, essential=essential,
                     ready=probe, health=Health(interval=interval, timeout=2.0, failures=failures),
                     restart=Restart(delay=delay, max_delay=max_delay))


def make(*components: Component, **config: float) -> tuple[Supervisor, FakeClock]:
    clock = FakeClock()
    sup = Supervisor(components, clock, SupervisorConfig(**config), rng=lambda: 1.0)  # type: ignore[arg-type]
    for c in components:
        sup.image_ready(c.name)
    return sup, clock


def tick(sup: Supervisor) -> list:
    """sup.tick(), with every gate it opens released at once by the daemon;
    the other actions."""
    actions = sup.tick()
    gates = [a for a in actions if isinstance(a, OpenGate)]
    for gate in gates:
        sup.gate_opened(gate.name, gate.generation, True)
    if gates:
        actions += sup.tick()   # what the release made due (a ready probe)
    return [a for a in actions if not isinstance(a, OpenGate)]


def bring_up(sup: Supervisor, name: str) -> None:
    """Start job done and the ready probe answered yes."""
    sup.job_finished(name, True, "done")
    probes = [a for a in tick(sup) if isinstance(a, RunProbe) and a.name == name]
    assert probes and probes[0].purpose == "ready"
    sup.probe_finished(name, probes[0].generation, True)
    assert sup.get(name).state == READY


def test_every_unit_starts_at_once_and_gates_open_layer_by_layer() -> None:
    """Containers are set up together; each component's own process is
    released (its gate opened) only once every component it needs is ready."""
    sup, _ = make(comp("aa"), comp("cdh"), comp("kata", after=("aa", "cdh")), comp("apf", after=("kata",)))
    first = sup.tick()
    assert [a for a in first if isinstance(a, StartUnit)] == [StartUnit(n) for n in ("aa", "cdh", "kata", "apf")]
    gates = [a for a in first if isinstance(a, OpenGate)]
    assert {a.name for a in gates} == {"aa", "cdh"} and all(a.wait for a in gates)  # same layer, together
    for gate in gates:
        sup.gate_opened(gate.name, gate.generation, True)
    assert sup.get("kata").state == STARTING and sup.get("kata").gate == "closed"
    bring_up(sup, "aa")
    assert not [a for a in sup.tick() if isinstance(a, (OpenGate, RunProbe)) and a.name == "kata"]  # cdh not ready
    bring_up(sup, "cdh")
    assert [a for a in sup.tick() if isinstance(a, OpenGate)] == [OpenGate("kata", sup.get("kata").generation, True)]
    assert sup.get("apf").gate == "closed"


def test_no_probe_runs_and_no_ready_deadline_counts_before_the_gate_is_released() -> None:
    sup, clock = make(comp("aa"), comp("kata", after=("aa",)))
    sup.tick()
    sup.job_finished("kata", True, "done")        # its container is up, waiting at the gate
    clock.advance(1000.0)                          # far past kata's ready timeout (30 s)
    actions = sup.tick()
    assert not [a for a in actions if a.name == "kata"] and sup.get("kata").state == STARTING
    assert sup.get("kata").restarts == 0


@pytest.mark.parametrize("ok, state", [(True, STARTING), (False, RESTARTING)])
def test_a_gate_result_for_an_older_start_is_dropped_and_a_failed_release_restarts(ok: bool, state: str) -> None:
    sup, _ = make(comp("aa"))
    gate = next(a for a in sup.tick() if isinstance(a, OpenGate))
    sup.gate_opened("aa", gate.generation - 1, False, "stale")   # an older start's answer
    assert sup.get("aa").gate == "opening" and sup.get("aa").state == STARTING
    sup.gate_opened("aa", gate.generation, ok, "no container at the gate")
    assert sup.get("aa").state == state
    if not ok:
        assert sup.get("aa").last_error == "gate not released: no container at the gate"


def test_a_component_without_a_probe_is_ready_only_once_released_and_its_job_done() -> None:
    sup, _ = make(comp("plain", ready=False))
    gate = next(a for a in sup.tick() if isinstance(a, OpenGate))
    sup.job_finished("plain", True, "done")
    assert sup.get("plain").state == STARTING
    sup.gate_opened("plain", gate.generation, True)
    assert sup.get("plain").state == READY


def test_systemds_own_restart_goes_through_the_gate_again() -> None:
    sup, _ = make(comp("aa"), comp("kata", after=("aa",)))
    tick(sup)
    bring_up(sup, "aa")
    tick(sup)
    bring_up(sup, "kata")
    sup.unit_observed("kata", "active", 0, "running")
    sup.unit_observed("kata", "deactivating", 0, "stop-sigterm")      # crashed
    sup.unit_observed("kata", "activating", 1, "auto-restart")
    assert not [a for a in sup.tick() if isinstance(a, OpenGate)]     # not started yet
    sup.unit_observed("kata", "active", 1, "running")                # systemd started a new container
    gates = [a for a in sup.tick() if isinstance(a, OpenGate)]
    assert gates == [OpenGate("kata", sup.get("kata").generation, True)]


def test_a_restart_behind_a_dependency_that_is_down_waits_for_it() -> None:
    sup, _ = make(comp("aa"), comp("kata", after=("aa",)))
    tick(sup)
    bring_up(sup, "aa")
    tick(sup)
    bring_up(sup, "kata")
    for name in ("aa", "kata"):
        sup.unit_observed(name, "active", 0, "running")
        sup.unit_observed(name, "failed", 0, "failed")
        sup.unit_observed(name, "active", 1, "running")
    gates = [a.name for a in sup.tick() if isinstance(a, OpenGate)]
    assert gates == ["aa"]                                            # kata's process waits for aa's
    assert not sup.ready_to_notify()


def test_ready_probe_is_retried_until_it_passes_then_health_runs_at_interval() -> None:
    sup, clock = make(comp("aa", interval=5.0))
    tick(sup)
    sup.job_finished("aa", True, "done")
    probe = next(a for a in tick(sup) if isinstance(a, RunProbe))
    assert tick(sup) == []  # one probe in flight at a time
    sup.probe_finished("aa", probe.generation, False, "connection refused")
    assert sup.get("aa").state == STARTING
    assert tick(sup) == []  # waits ready_poll before the next attempt
    clock.advance(0.2)
    probe = next(a for a in tick(sup) if isinstance(a, RunProbe))
    sup.probe_finished("aa", probe.generation, True)
    assert sup.get("aa").state == READY
    clock.advance(4.9)
    assert tick(sup) == []
    clock.advance(0.1)
    health = tick(sup)
    assert len(health) == 1 and isinstance(health[0], RunProbe) and health[0].purpose == "health"


def test_not_ready_within_timeout_restarts_with_backoff() -> None:
    sup, clock = make(comp("aa", delay=1.0))
    tick(sup)
    sup.job_finished("aa", True, "done")
    clock.advance(30.0)
    assert not [a for a in tick(sup) if isinstance(a, RunProbe)]
    cs = sup.get("aa")
    assert cs.state == RESTARTING and "not ready within 30s" in cs.last_error
    assert tick(sup) == []
    clock.advance(1.0)
    assert RestartUnit("aa") in tick(sup)
    assert cs.state == STARTING and cs.restarts == 1


def test_health_failures_counted_and_restart_after_threshold() -> None:
    sup, clock = make(comp("apf", failures=3, interval=5.0))
    tick(sup)
    bring_up(sup, "apf")
    for n in range(1, 4):
        clock.advance(5.0)
        probe = next(a for a in tick(sup) if isinstance(a, RunProbe))
        sup.probe_finished("apf", probe.generation, False, "timed out")
        cs = sup.get("apf")
        if n < 3:
            assert cs.state == UNHEALTHY and cs.consecutive_failures == n and cs.health == "failing"
    assert cs.state == RESTARTING and "health probe failed 3 times" in cs.last_error
    clock.advance(1.0)
    assert RestartUnit("apf") in tick(sup)


def test_one_success_resets_the_failure_count() -> None:
    sup, clock = make(comp("apf", failures=2, interval=5.0))
    tick(sup)
    bring_up(sup, "apf")
    for ok in (False, True, False):
        clock.advance(5.0)
        probe = next(a for a in tick(sup) if isinstance(a, RunProbe))
        sup.probe_finished("apf", probe.generation, ok, "x")
    assert sup.get("apf").state == UNHEALTHY and sup.get("apf").consecutive_failures == 1


def test_failed_unit_is_restarted_with_capped_exponential_backoff() -> None:
    sup, clock = make(comp("aa", delay=1.0, max_delay=4.0), crash_loop_restarts=100)
    tick(sup)
    bring_up(sup, "aa")
    delays = []
    settle = SupervisorConfig().unit_settle
    for _ in range(5):
        sup.unit_observed("aa", "failed")
        cs = sup.get("aa")
        assert cs.state == RESTARTING
        clock.advance(settle)  # systemd does not restart it: the supervisor does
        assert tick(sup) == []
        delays.append(cs.restart_at - clock.now)
        clock.advance(delays[-1])
        assert RestartUnit("aa") in tick(sup)
        sup.job_finished("aa", True, "done")
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]  # rng()=1.0 → the top of each jitter range
    assert sup.get("aa").restarts == 5


def test_backoff_starts_over_after_a_stable_run_also_without_a_probe() -> None:
    sup, clock = make(comp("plain", ready=False, delay=1.0, max_delay=8.0), crash_loop_restarts=100)
    settle = SupervisorConfig().unit_settle

    def fail_and_restart() -> float:
        sup.unit_observed("plain", "failed")
        clock.advance(settle)
        tick(sup)
        delay = sup.get("plain").restart_at - clock.now
        clock.advance(delay)
        assert RestartUnit("plain") in tick(sup)
        sup.job_finished("plain", True, "done")
        assert sup.get("plain").state == READY
        return delay

    assert tick(sup) == [StartUnit("plain")]
    sup.job_finished("plain", True, "done")
    assert [fail_and_restart() for _ in range(3)] == [1.0, 2.0, 4.0]
    clock.advance(SupervisorConfig().stable_after)
    assert fail_and_restart() == 1.0


def test_crash_loop_reported_and_retried() -> None:
    sup, clock = make(comp("kata", essential=True, delay=1.0, max_delay=1.0),
                      crash_loop_restarts=3, crash_loop_window=60.0)
    tick(sup)
    for _i in range(3):
        sup.job_finished("kata", False, "failed")
        clock.advance(1.0)
        assert RestartUnit("kata") in tick(sup)
    cs = sup.get("kata")
    assert sup.reported_state(cs) == CRASH_LOOP
    assert sup.snapshot()["kata"]["state"] == CRASH_LOOP and sup.snapshot()["kata"]["crash_loop"] is True
    assert "kata crash-loop (3 restarts)" in sup.status_line()
    assert not sup.ready_to_notify()
    # Still retried; when it finally comes up it is ready again.
    bring_up(sup, "kata")
    assert sup.reported_state(cs) == READY and sup.ready_to_notify()
    # The window passes: no longer counted as a loop.
    clock.advance(61.0)
    assert sup.crash_looping(cs) is False


def test_systemd_own_restarts_count() -> None:
    sup, clock = make(comp("aa"), crash_loop_restarts=3)
    tick(sup)
    bring_up(sup, "aa")
    sup.unit_observed("aa", "active", n_restarts=0)
    sup.unit_observed("aa", "activating", n_restarts=2)
    assert sup.get("aa").restarts == 2


def test_image_failure_never_starts_and_blocks_dependents() -> None:
    sup, _ = make(comp("aa"), comp("kata", after=("aa",)))
    sup.image_failed("aa", "digest mismatch")
    assert sup.tick() == [StartUnit("kata")]           # its container, held at its gate
    assert sup.tick() == [] and sup.get("kata").gate == "closed"
    assert sup.get("aa").state == FAILED and sup.get("aa").last_error == "digest mismatch"
    assert sup.get("kata").state == STARTING
    # Nothing essential: READY once everything is up or given up (kata is blocked behind aa).
    assert sup.ready_to_notify()


def test_ready_waits_for_every_essential_component_only() -> None:
    sup, _ = make(comp("aa"), comp("kata", after=("aa",), essential=True), comp("apf", after=("kata",)))
    tick(sup)
    bring_up(sup, "aa")
    assert not sup.ready_to_notify()
    tick(sup)
    bring_up(sup, "kata")
    assert sup.ready_to_notify()  # apf is not essential


def test_none_essential_waits_for_all_to_settle() -> None:
    sup, clock = make(comp("aa"), comp("apf"))
    tick(sup)
    bring_up(sup, "aa")
    assert not sup.ready_to_notify()
    sup.image_failed("apf", "pull failed")
    assert sup.ready_to_notify()


def test_adopted_unit_is_not_started_again() -> None:
    sup, _ = make(comp("aa"))
    sup.adopt("aa")
    assert sup.tick() == [OpenGate("aa", sup.get("aa").generation, wait=False)]  # only if one waits there
    sup.gate_opened("aa", sup.get("aa").generation, True)
    actions = sup.tick()
    assert not [a for a in actions if isinstance(a, (StartUnit, RestartUnit))]
    probe = next(a for a in actions if isinstance(a, RunProbe))
    sup.probe_finished("aa", probe.generation, True)
    assert sup.get("aa").state == READY and sup.get("aa").restarts == 0


def test_stale_probe_result_is_dropped() -> None:
    sup, clock = make(comp("aa"))
    tick(sup)
    bring_up(sup, "aa")
    clock.advance(10.0)
    probe = next(a for a in tick(sup) if isinstance(a, RunProbe))
    sup.unit_observed("aa", "failed")
    sup.probe_finished("aa", probe.generation, True)  # answer from before the failure
    assert sup.get("aa").state == RESTARTING


def test_job_that_never_finishes_is_bounded() -> None:
    sup, clock = make(comp("aa"), job_timeout=5.0)
    tick(sup)
    clock.advance(5.1)
    tick(sup)
    assert sup.get("aa").state == RESTARTING and "did not finish within 5s" in sup.get("aa").last_error


def test_component_without_probe_is_ready_when_its_job_is_done() -> None:
    sup, _ = make(comp("plain", ready=False))
    assert tick(sup) == [StartUnit("plain")]
    sup.job_finished("plain", True, "done")
    assert sup.get("plain").state == READY


def test_snapshot_has_timestamps_and_changes_bump_version() -> None:
    sup, _ = make(comp("aa"))
    v = sup.version
    tick(sup)
    assert sup.version > v
    bring_up(sup, "aa")
    snap = sup.snapshot()["aa"]
    assert snap["started"]["monotonic"] == 1000.0 and snap["started"]["wall"].startswith("2023-11-14T")
    assert snap["ready"] is not None and snap["health"] == "passing" and snap["restarts"] == 0


# --- event-driven start and fixed-rate probes ------------------------------------


def test_next_layer_is_released_the_moment_its_dependency_is_ready_without_waiting() -> None:
    sup, clock = make(comp("aa"), comp("kata", after=("aa",)))
    assert tick(sup) == [StartUnit("aa"), StartUnit("kata")]
    sup.job_finished("kata", True, "done")
    assert sup.next_wakeup() == clock.now + 90.0  # only aa's job deadline: the job's end is an event
    sup.job_finished("aa", True, "done")
    assert sup.next_wakeup() == clock.now  # the first ready probe is due at once
    probe = next(a for a in tick(sup) if isinstance(a, RunProbe))  # same instant, no clock advance
    assert probe.purpose == "ready"
    sup.probe_finished("aa", probe.generation, False, "refused", probe.seq)
    assert sup.next_wakeup() == clock.now + SupervisorConfig().ready_poll  # quick retry while starting
    clock.advance(SupervisorConfig().ready_poll)
    probe = next(a for a in tick(sup) if isinstance(a, RunProbe))
    sup.probe_finished("aa", probe.generation, True, "", probe.seq)
    assert sup.next_wakeup() == clock.now  # kata's gate can open now
    assert sup.tick() == [OpenGate("kata", sup.get("kata").generation, True)]


def test_nothing_due_means_no_wakeup_until_the_next_probe_slot() -> None:
    sup, clock = make(comp("aa", interval=5.0))
    tick(sup)
    bring_up(sup, "aa")
    assert sup.next_wakeup() == clock.now + 5.0
    clock.advance(1.0)
    assert tick(sup) == []


def test_health_probes_run_at_a_fixed_rate_whatever_each_one_takes() -> None:
    sup, clock = make(comp("apf", interval=5.0, failures=3))
    tick(sup)
    bring_up(sup, "apf")
    ready_at = clock.now
    issued = []
    for n in range(1, 4):
        clock.now = ready_at + 5.0 * n
        probe = next(a for a in tick(sup) if isinstance(a, RunProbe))
        issued.append(clock.now - ready_at)
        clock.advance(1.5)  # the probe takes its time before it answers
        sup.probe_finished("apf", probe.generation, False, "no answer", probe.seq)
        if n < 3:
            assert sup.next_wakeup() == ready_at + 5.0 * (n + 1)  # not 1.5 s later than the slot
    assert issued == [5.0, 10.0, 15.0]
    assert sup.get("apf").state == RESTARTING and "failed 3 times" in sup.get("apf").last_error


def test_a_probe_slower_than_the_interval_skips_missed_slots() -> None:
    sup, clock = make(comp("apf", interval=5.0))
    tick(sup)
    bring_up(sup, "apf")
    ready_at = clock.now
    clock.advance(5.0)
    probe = next(a for a in tick(sup) if isinstance(a, RunProbe))
    clock.advance(11.0)  # slots at +10 and +15 passed while it ran
    sup.probe_finished("apf", probe.generation, True, "", probe.seq)
    assert sup.next_wakeup() == ready_at + 20.0


def test_a_probe_that_outlives_its_timeout_fails_at_the_timeout_and_its_late_answer_is_dropped() -> None:
    sup, clock = make(comp("apf", interval=5.0, failures=2))  # health timeout 2 s
    tick(sup)
    bring_up(sup, "apf")
    clock.advance(5.0)
    probe = next(a for a in tick(sup) if isinstance(a, RunProbe))
    assert sup.next_wakeup() == clock.now + 2.0  # its deadline
    clock.advance(2.0)
    assert tick(sup) == []
    cs = sup.get("apf")
    assert cs.state == UNHEALTHY and cs.consecutive_failures == 1 and "timed out after 2s" in cs.last_error
    sup.probe_finished("apf", probe.generation, True, "", probe.seq)  # the hung probe answers at last
    assert cs.state == UNHEALTHY and cs.consecutive_failures == 1
    clock.advance(3.0)  # the next slot: 5 s after the previous one, not after the timeout
    probe = next(a for a in tick(sup) if isinstance(a, RunProbe))
    clock.advance(2.0)
    tick(sup)
    assert cs.state == RESTARTING and "health probe failed 2 times" in cs.last_error


def test_unit_leaving_active_is_down_at_once_and_counted_once_with_systemd_restarts() -> None:
    sup, clock = make(comp("apf"))
    tick(sup)
    bring_up(sup, "apf")
    sup.unit_observed("apf", "active", n_restarts=0, sub_state="running")
    sup.unit_observed("apf", "deactivating", n_restarts=0, sub_state="stop-post")  # the container died
    cs = sup.get("apf")
    assert cs.state == RESTARTING and cs.restarts == 1 and sup.snapshot()["apf"]["state"] == "restarting"
    assert "systemd restarts it" in cs.last_error
    sup.unit_observed("apf", "activating", n_restarts=0, sub_state="auto-restart")
    assert tick(sup) == []  # systemd's Restart= brings it back: no restart of ours
    sup.unit_observed("apf", "activating", n_restarts=1, sub_state="start")  # NRestarts shows the same restart
    assert cs.restarts == 1
    sup.unit_observed("apf", "active", n_restarts=1, sub_state="running")
    assert cs.state == STARTING
    probe = next(a for a in tick(sup) if isinstance(a, RunProbe))
    assert probe.purpose == "ready"
    sup.probe_finished("apf", probe.generation, True, "", probe.seq)
    assert cs.state == READY and cs.restarts == 1


def test_unit_passing_through_failed_to_systemds_auto_restart_is_left_to_systemd() -> None:
    sup, clock = make(comp("apf"))
    tick(sup)
    bring_up(sup, "apf")
    # The sequence systemd 252 emits for a crash of a Restart=always unit (seen in the pod VM).
    for active, sub in (("active", "running"), ("deactivating", "stop-post"), ("failed", "failed"),
                        ("activating", "auto-restart")):
        sup.unit_observed("apf", active, n_restarts=0, sub_state=sub)
    cs = sup.get("apf")
    assert cs.state == RESTARTING and cs.restarts == 1
    clock.advance(1.0)  # RestartSec passes: systemd, not the supervisor, restarts it
    assert tick(sup) == []
    for active, sub, n in (("activating", "auto-restart", 1), ("inactive", "dead", 1), ("activating", "start", 1),
                           ("active", "running", 1)):
        sup.unit_observed("apf", active, n_restarts=n, sub_state=sub)
    assert cs.state == STARTING and cs.restarts == 1
    assert not [a for a in tick(sup) if isinstance(a, (StartUnit, RestartUnit))]


def test_unit_that_systemd_gives_up_on_is_restarted_by_the_supervisor_counted_once() -> None:
    sup, clock = make(comp("apf", delay=1.0))
    tick(sup)
    bring_up(sup, "apf")
    sup.unit_observed("apf", "active", n_restarts=0)
    sup.unit_observed("apf", "deactivating", n_restarts=0)
    sup.unit_observed("apf", "failed", n_restarts=0)
    cs = sup.get("apf")
    assert cs.state == RESTARTING and cs.restarts == 1 and cs.restart_at is None
    assert sup.next_wakeup() == clock.now + SupervisorConfig().unit_settle
    clock.advance(SupervisorConfig().unit_settle)
    assert tick(sup) == []
    assert cs.restarts == 1 and cs.restart_at == clock.now + 1.0 and "systemd did not restart it" in cs.last_error
    clock.advance(1.0)
    assert tick(sup) == [RestartUnit("apf")]


def test_unit_that_does_not_come_back_is_restarted_by_the_supervisor() -> None:
    sup, clock = make(comp("apf", delay=1.0, max_delay=8.0), job_timeout=10.0)
    tick(sup)
    bring_up(sup, "apf")
    sup.unit_observed("apf", "active")
    sup.unit_observed("apf", "activating", sub_state="auto-restart")
    assert sup.next_wakeup() == clock.now + 18.0
    clock.advance(18.0)
    assert tick(sup) == []
    cs = sup.get("apf")
    assert cs.state == RESTARTING and "systemd did not restart it" in cs.last_error and cs.restarts == 1
    clock.advance(1.0)
    assert tick(sup) == [RestartUnit("apf")]
