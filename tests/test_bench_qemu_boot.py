"""bench/qemu_boot.py's reading of the guest journal (monotonic timestamps)."""

from __future__ import annotations

import pytest

from bench.qemu_boot import journal_marks

NAMES = ("attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder", "api-server-rest")


def journal(ready_at: dict[str, float]) -> list[str]:
    lines = ["[   20.100000] podvm systemd[1]: Starting podvm-bootstrap.service - podvm-bootstrap: start ...",
             "[   24.000000] podvm podvm-bootstrap[334]: fetching the user-data, then planning"]
    for name, t in ready_at.items():
        lines.append(f"[{t:12.6f}] podvm podvm-bootstrap[334]: {name}: ready probe passed: ready")
    # A later restart's ready probe is not the boot's.
    lines.append("[   90.000000] podvm podvm-bootstrap[334]: kata-agent: ready probe passed: ready")
    return lines


def test_marks_are_the_daemons_start_and_the_last_first_ready() -> None:
    marks = journal_marks(journal({n: 30.0 + i for i, n in enumerate(NAMES)}))
    assert marks == {"daemon_start": 20.1, "all_ready": 34.0}


def test_a_boot_where_a_component_never_got_ready_is_refused() -> None:
    with pytest.raises(ValueError, match="not 5 ready components"):
        journal_marks(journal({n: 30.0 for n in NAMES[:4]}))
