"""The supervisor's pure state machine, driven by a fake clock."""

from __future__ import annotations

from podvm_bootstrap.imageref import parse_reference
from podvm_bootstrap.model import Component, Health, Probe, Restart
from podvm_bootstrap.supervisor import (CRASH_LOOP, FAILED, PENDING, READY, RESTARTING, STARTING, UNHEALTHY,
                                        RestartUnit, RunProbe, StartUnit, Supervisor, SupervisorConfig)

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


def bring_up(sup: Supervisor, name: str) -> None:
    """Start job done and the ready probe answered yes."""
    sup.job_finished(name, True, "done")
    probes = [a for a in sup.tick() if isinstance(a, RunProbe) and a.name == name]
    assert probes and probes[0].purpose == "ready"
    sup.probe_finished(name, probes[0].generation, True)
    assert sup.get(name).state == READY


def test_starts_a_layer_only_after_its_dependencies_are_ready() -> None:
    sup, _ = make(comp("aa"), comp("cdh"), comp("kata", after=("aa", "cdh")), comp("apf", after=("kata",)))
    first = sup.tick()
    assert {a.name for a in first if isinstance(a, StartUnit)} == {"aa", "cdh"}  # same layer, together
    assert sup.get("kata").state == PENDING
    bring_up(sup, "aa")
    assert not [a for a in sup.tick() if isinstance(a, StartUnit)]  # cdh not ready yet
    bring_up(sup, "cdh")
    assert [a for a in sup.tick() if isinstance(a, StartUnit)] == [StartUnit("kata")]
    assert sup.get("apf").state == PENDING


def test_ready_probe_is_retried_until_it_passes_then_health_runs_at_interval() -> None:
    sup, clock = make(comp("aa", interval=5.0))
    sup.tick()
    sup.job_finished("aa", True, "done")
    probe = next(a for a in sup.tick() if isinstance(a, RunProbe))
    assert sup.tick() == []  # one probe in flight at a time
    sup.probe_finished("aa", probe.generation, False, "connection refused")
    assert sup.get("aa").state == STARTING
    assert sup.tick() == []  # waits ready_poll before the next attempt
    clock.advance(0.2)
    probe = next(a for a in sup.tick() if isinstance(a, RunProbe))
    sup.probe_finished("aa", probe.generation, True)
    assert sup.get("aa").state == READY
    clock.advance(4.9)
    assert sup.tick() == []
    clock.advance(0.1)
    health = sup.tick()
    assert len(health) == 1 and isinstance(health[0], RunProbe) and health[0].purpose == "health"


def test_not_ready_within_timeout_restarts_with_backoff() -> None:
    sup, clock = make(comp("aa", delay=1.0))
    sup.tick()
    sup.job_finished("aa", True, "done")
    clock.advance(30.0)
    assert not [a for a in sup.tick() if isinstance(a, RunProbe)]
    cs = sup.get("aa")
    assert cs.state == RESTARTING and "not ready within 30s" in cs.last_error
    assert sup.tick() == []
    clock.advance(1.0)
    assert RestartUnit("aa") in sup.tick()
    assert cs.state == STARTING and cs.restarts == 1


def test_health_failures_counted_and_restart_after_threshold() -> None:
    sup, clock = make(comp("apf", failures=3, interval=5.0))
    sup.tick()
    bring_up(sup, "apf")
    for n in range(1, 4):
        clock.advance(5.0)
        probe = next(a for a in sup.tick() if isinstance(a, RunProbe))
        sup.probe_finished("apf", probe.generation, False, "timed out")
        cs = sup.get("apf")
        if n < 3:
            assert cs.state == UNHEALTHY and cs.consecutive_failures == n and cs.health == "failing"
    assert cs.state == RESTARTING and "health probe failed 3 times" in cs.last_error
    clock.advance(1.0)
    assert RestartUnit("apf") in sup.tick()


def test_one_success_resets_the_failure_count() -> None:
    sup, clock = make(comp("apf", failures=2, interval=5.0))
    sup.tick()
    bring_up(sup, "apf")
    for ok in (False, True, False):
        clock.advance(5.0)
        probe = next(a for a in sup.tick() if isinstance(a, RunProbe))
        sup.probe_finished("apf", probe.generation, ok, "x")
    assert sup.get("apf").state == UNHEALTHY and sup.get("apf").consecutive_failures == 1


def test_failed_unit_is_restarted_with_capped_exponential_backoff() -> None:
    sup, clock = make(comp("aa", delay=1.0, max_delay=4.0), crash_loop_restarts=100)
    sup.tick()
    bring_up(sup, "aa")
    delays = []
    for _ in range(5):
        sup.unit_observed("aa", "failed")
        cs = sup.get("aa")
        assert cs.state == RESTARTING
        delays.append(cs.restart_at - clock.now)
        clock.advance(delays[-1])
        assert RestartUnit("aa") in sup.tick()
        sup.job_finished("aa", True, "done")
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]  # rng()=1.0 → the top of each jitter range
    assert sup.get("aa").restarts == 5


def test_crash_loop_reported_and_retried() -> None:
    sup, clock = make(comp("kata", essential=True, delay=1.0, max_delay=1.0),
                      crash_loop_restarts=3, crash_loop_window=60.0)
    sup.tick()
    for i in range(3):
        sup.job_finished("kata", False, "failed")
        clock.advance(1.0)
        assert RestartUnit("kata") in sup.tick()
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
    sup.tick()
    bring_up(sup, "aa")
    sup.unit_observed("aa", "active", n_restarts=0)
    sup.unit_observed("aa", "activating", n_restarts=2)
    assert sup.get("aa").restarts == 2


def test_image_failure_never_starts_and_blocks_dependents() -> None:
    sup, _ = make(comp("aa"), comp("kata", after=("aa",)))
    sup.image_failed("aa", "digest mismatch")
    assert sup.tick() == []
    assert sup.get("aa").state == FAILED and sup.get("aa").last_error == "digest mismatch"
    assert sup.get("kata").state == PENDING
    # Nothing essential: READY once everything is up or given up (kata is blocked behind aa).
    assert sup.ready_to_notify()


def test_ready_waits_for_every_essential_component_only() -> None:
    sup, _ = make(comp("aa"), comp("kata", after=("aa",), essential=True), comp("apf", after=("kata",)))
    sup.tick()
    bring_up(sup, "aa")
    assert not sup.ready_to_notify()
    sup.tick()
    bring_up(sup, "kata")
    assert sup.ready_to_notify()  # apf is not essential


def test_none_essential_waits_for_all_to_settle() -> None:
    sup, clock = make(comp("aa"), comp("apf"))
    sup.tick()
    bring_up(sup, "aa")
    assert not sup.ready_to_notify()
    sup.image_failed("apf", "pull failed")
    assert sup.ready_to_notify()


def test_adopted_unit_is_not_started_again() -> None:
    sup, _ = make(comp("aa"))
    sup.adopt("aa")
    actions = sup.tick()
    assert not [a for a in actions if isinstance(a, (StartUnit, RestartUnit))]
    probe = next(a for a in actions if isinstance(a, RunProbe))
    sup.probe_finished("aa", probe.generation, True)
    assert sup.get("aa").state == READY and sup.get("aa").restarts == 0


def test_stale_probe_result_is_dropped() -> None:
    sup, clock = make(comp("aa"))
    sup.tick()
    bring_up(sup, "aa")
    clock.advance(10.0)
    probe = next(a for a in sup.tick() if isinstance(a, RunProbe))
    sup.unit_observed("aa", "failed")
    sup.probe_finished("aa", probe.generation, True)  # answer from before the failure
    assert sup.get("aa").state == RESTARTING


def test_job_that_never_finishes_is_bounded() -> None:
    sup, clock = make(comp("aa"), job_timeout=5.0)
    sup.tick()
    clock.advance(5.1)
    sup.tick()
    assert sup.get("aa").state == RESTARTING and "did not finish within 5s" in sup.get("aa").last_error


def test_component_without_probe_is_ready_when_its_job_is_done() -> None:
    sup, _ = make(comp("plain", ready=False))
    assert sup.tick() == [StartUnit("plain")]
    sup.job_finished("plain", True, "done")
    assert sup.get("plain").state == READY


def test_snapshot_has_timestamps_and_changes_bump_version() -> None:
    sup, _ = make(comp("aa"))
    v = sup.version
    sup.tick()
    assert sup.version > v
    bring_up(sup, "aa")
    snap = sup.snapshot()["aa"]
    assert snap["started"]["monotonic"] == 1000.0 and snap["started"]["wall"].startswith("2023-11-14T")
    assert snap["ready"] is not None and snap["health"] == "passing" and snap["restarts"] == 0
