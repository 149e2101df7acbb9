"""The daemon's pure decisions about its units (unit_decisions.py), as tables."""

from __future__ import annotations

import pytest

from podvm_bootstrap.units.unit_decisions import (
    ADOPT,
    RESTART,
    START,
    EarlyCandidate,
    Live,
    UnitFacts,
    may_start_early,
    needs_reload,
    stale_units,
    start_mode,
    to_end_early,
)


def fact(written: bool = False, now: str = "h1", before: str | None = "h1", live: Live | None = Live("active"),
         name: str = "kata-agent", early: bool = False) -> UnitFacts:
    return UnitFacts(name, f"{name}.service", written, now, before, live, early)


@pytest.mark.parametrize("case, f, expected", [
    ("first boot: nothing runs", fact(written=True, before=None, live=Live("inactive")), START),
    ("failed unit, same text", fact(live=Live("failed")), START),
    ("running, unchanged", fact(), ADOPT),
    ("starting (activating), unchanged", fact(live=Live("activating")), ADOPT),
    ("running, rewritten now", fact(written=True, now="h2"), RESTART),
    ("running, rewritten by a daemon that died before restarting it", fact(now="h2", before="h1"), RESTART),
    ("running, no record of the previous text", fact(before=None), ADOPT),
    ("deactivating: going down, started again", fact(live=Live("deactivating")), START),
    ("systemd could not be asked", fact(live=None), None),
    ("started early, unchanged, container up at its gate", fact(before=None, live=Live("active"), early=True), START),
    ("started early, unchanged, still setting up", fact(before=None, live=Live("activating"), early=True), START),
    ("started early, its job failed", fact(before=None, live=Live("failed"), early=True), START),
    ("started early, rewritten by the final plan (ended at its gate first)",
     fact(written=True, now="h2", before=None, live=Live("active"), early=True), RESTART),
    ("started early, systemd could not be asked", fact(before=None, live=None, early=True), None),
])
def test_start_mode(case: str, f: UnitFacts, expected: str | None) -> None:
    assert start_mode(f) == expected, case


@pytest.mark.parametrize("case, facts, removed, expected", [
    ("first boot: units written, systemd never loaded them", [fact(written=True, live=Live("inactive", "not-found"))],
     False, True),
    ("written, systemd holds an older version", [fact(written=True, live=Live("active", need_reload=True))],
     False, True),
    ("written, loaded and current (looked up fresh)", [fact(written=True, live=Live("inactive"))], False, False),
    ("nothing written", [fact(live=Live("active", need_reload=True))], False, False),
    ("a unit was removed", [fact()], True, True),
    ("written, systemd could not be asked", [fact(written=True, live=None)], False, True),
])
def test_needs_reload(case: str, facts: list[UnitFacts], removed: bool, expected: bool) -> None:
    assert needs_reload(facts, removed) is expected, case


@pytest.mark.parametrize("case, previous, runnable, leftovers, expected", [
    ("same plan", ["a.service", "b.service"], ["a.service", "b.service"], ["a.service", "b.service"], []),
    ("a component left the manifest", ["a.service", "old.service"], ["a.service"], ["a.service"], ["old.service"]),
    ("an image failed: its file from an earlier boot goes", [], ["a.service"], ["a.service", "b.service"],
     ["b.service"]),
    ("first boot", [], ["a.service"], [], []),
])
def test_stale_units(case: str, previous: list[str], runnable: list[str], leftovers: list[str],
                     expected: list[str]) -> None:
    assert stale_units(previous, runnable, leftovers) == expected, case


PROVISIONED = ("/run/peerpod/aa.toml", "/run/peerpod/apf.json")


def early(pinned: bool = True, host_paths: tuple[str, ...] = ("/run/kata-containers",), fresh: bool = True,
          loaded: str | None = None, active: str | None = None, in_store: bool = True) -> EarlyCandidate:
    return EarlyCandidate("kata-agent", "kata-agent.service", pinned, host_paths, fresh, loaded, active, in_store)


@pytest.mark.parametrize("case, c, first_run, expected", [
    ("first boot, systemd holds nothing", early(), True, True),
    ("first boot, systemd knows the name only (not-found)", early(loaded="not-found", active="inactive"), True, True),
    ("first boot, loaded from the file just written, inactive", early(loaded="loaded", active="inactive"), True, True),
    ("a restarted daemon: it adopts what runs", early(), False, False),
    ("already running", early(loaded="loaded", active="active"), True, False),
    ("already starting", early(loaded="loaded", active="activating"), True, False),
    ("failed earlier in this boot", early(loaded="loaded", active="failed"), True, False),
    ("masked", early(loaded="masked", active="inactive"), True, False),
    ("its unit file existed: systemd may hold an older text", early(fresh=False), True, False),
    ("image by tag: only the policy can allow it", early(pinned=False), True, False),
    ("image not in local storage yet: --pull=never would fail and systemd's Restart= race the daemon's start",
     early(in_store=False), True, False),
    ("mounts a directory the user-data provisions into", early(host_paths=("/run/peerpod",)), True, True),
    ("mounts a file the user-data provisions (it would be made a directory)",
     early(host_paths=("/run/peerpod/aa.toml",)), True, False),
    ("mounts a path under a provisioned file", early(host_paths=("/run/peerpod/apf.json/x",)), True, False),
    ("a sibling with a common prefix is not under it", early(host_paths=("/run/peerpod/aa.toml.d",)), True, True),
])
def test_may_start_early(case: str, c: EarlyCandidate, first_run: bool, expected: bool) -> None:
    assert may_start_early(c, PROVISIONED, first_run) is expected, case


@pytest.mark.parametrize("case, started, runnable, written, expected", [
    ("the final plan keeps every early start", ["a", "b"], ["a", "b", "c"], ["c"], []),
    ("an override rewrote one", ["a", "b"], ["a", "b"], ["b"], ["b"]),
    ("an image failed: it will not run", ["a", "b"], ["a"], [], ["b"]),
    ("nothing started early", [], ["a"], ["a"], []),
])
def test_to_end_early(case: str, started: list[str], runnable: list[str], written: list[str],
                      expected: list[str]) -> None:
    assert to_end_early(started, runnable, written) == expected, case
