"""The daemon's pure decisions about its units (unit_decisions.py), as tables."""

from __future__ import annotations

import pytest

from podvm_bootstrap.unit_decisions import (ADOPT, RESTART, START, Live, UnitFacts, needs_reload, stale_units,
                                            start_mode)


def fact(written: bool = False, now: str = "h1", before: str | None = "h1", live: Live | None = Live("active"),
         name: str = "kata-agent") -> UnitFacts:
    return UnitFacts(name, f"{name}.service", written, now, before, live)


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
