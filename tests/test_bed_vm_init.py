"""The test bed finds a VM's PID 1 (to end it) in the new PID namespace, not
in whatever process its launcher forked first (systemd-nspawn's first child
is, for a moment, an intermediate process that exits)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

from tests.bed.proc import wait_until
from tests.bed.vm import _container_init, descendants


def test_the_init_of_a_new_pid_namespace_is_found_below_its_launcher() -> None:
    # The launcher's first child is a plain process; the namespace's init is
    # one generation further down (unshare forks it), as under nspawn.
    launcher = subprocess.Popen(["sh", "-c", "sleep 60 & unshare --pid --fork --mount-proc sleep 60; wait"])
    init = None
    try:
        wait_until(lambda: _container_init(launcher.pid) is not None, 10, "the namespace's init", interval=0.02)
        init = _container_init(launcher.pid)
        assert init is not None
        with open(f"/proc/{init}/status") as f:
            nspid = [line.split()[1:] for line in f if line.startswith("NSpid:")]
        assert len(nspid) == 1 and nspid[0][-1] == "1" and len(nspid[0]) == 2
    finally:
        # the namespace's init first (its launcher's death would not end it),
        # then every other process started here
        for pid in sorted(descendants(launcher.pid), key=lambda p: p != init):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        launcher.kill()
        launcher.wait(10)

