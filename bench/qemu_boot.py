"""`make bench`'s real-VM row: the pod VM disk (image/disk.py) booted under
QEMU (tests/bed/qemu.py: cidata user-data, vTPM, no network), from QEMU's
start to every component ready, and the daemon's share of it.

- QEMU start to every component ready: host wall clock from starting QEMU
  until `podvm-bootstrap status` in the VM (asked through the test agent,
  about once a second) shows all five ready: an upper bound by the polling.
- kernel start to every component ready, and the daemon's share: from the
  guest's journal in monotonic time (0 = the kernel's start): systemd's
  "Starting podvm-bootstrap.service" line to the last component's
  "ready probe passed" line is the daemon's part; before it is the kernel,
  initramfs and systemd's own start.
KVM or TCG is named in each row: TCG figures compare only within one run."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.stats import Row, summarize
from tests.bed.proc import wait_until
from tests.bed.qemu import QemuVM, booted, ensure_disk
from tests.bed.userdata import MINIMAL_USERDATA

SECTION = "Real VM: the disk under QEMU (cidata, vTPM, dm-verity store; 5 components)"
COMPONENTS = 5
_LINE = re.compile(r"^\[\s*(?P<t>[0-9.]+)\]\s+\S+\s+(?P<rest>.*)$")


def journal_marks(lines: Iterable[str]) -> dict[str, float]:
    """From `journalctl -o short-monotonic -u podvm-bootstrap.service`: the
    daemon's start (systemd's Starting line) and the moment the last
    component's first ready probe passed (seconds since the kernel's start)."""
    start, ready = None, {}
    for line in lines:
        m = _LINE.match(line.strip())
        if not m:
            continue
        t, rest = float(m["t"]), m["rest"]
        if start is None and "Starting podvm-bootstrap.service" in rest:
            start = t
        found = re.search(r"podvm-bootstrap\[\d+\]: (\S+): ready probe passed", rest)
        if found and found.group(1) not in ready:
            ready[found.group(1)] = t
    if start is None or len(ready) < COMPONENTS:
        raise ValueError(f"journal has no daemon start or not {COMPONENTS} ready components ({sorted(ready)})")
    return {"daemon_start": start, "all_ready": max(ready.values())}


def _all_ready(vm: QemuVM) -> bool:
    try:
        st = json.loads(vm.run(["podvm-bootstrap", "status", "--json"], check=False, timeout=30).stdout)
    except ValueError:
        return False
    comps = st.get("components", [])
    return len(comps) == COMPONENTS and all(c["state"] == "ready" for c in comps)


def one_boot(workdir: Path) -> dict[str, Any]:
    disk = ensure_disk()
    with booted(disk, workdir, userdata=MINIMAL_USERDATA, name="podvm-bench-qemu", wait="started") as vm:
        wait_until(lambda: _all_ready(vm), 600, "every component ready", interval=0.5)
        host_total = time.time() - vm.started
        out = vm.run(["journalctl", "-b", "-o", "short-monotonic", "--no-pager", "-u", "podvm-bootstrap.service"])
        marks = journal_marks(out.stdout.splitlines())
        return {"accel": vm.accel, "host_total": host_total, **marks}


def run_section(rounds: int, raw: dict[str, Any]) -> list[Row]:
    """`rounds` boots of the disk, one VM at a time (the machine-wide VM lock)."""
    boots = []
    for i in range(rounds):
        workdir = Path(tempfile.mkdtemp(prefix="podvm-bench-qemu-", dir="/var/tmp"))
        try:
            boots.append(one_boot(workdir / f"vm{i}"))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    raw["qemu_boots"] = boots
    accel = "/".join(sorted({b["accel"].upper() for b in boots}))
    total = summarize(b["host_total"] for b in boots)
    kernel = summarize(b["all_ready"] for b in boots)
    daemon = summarize(b["all_ready"] - b["daemon_start"] for b in boots)
    share = summarize(100 * (b["all_ready"] - b["daemon_start"]) / b["all_ready"] for b in boots)
    return [
        Row(f"QEMU start to every component ready ({accel})", "s", measured=total,
            note="host clock, polled about once a second"),
        Row(f"kernel start to every component ready ({accel})", "s", measured=kernel, note="guest journal, monotonic"),
        Row(f"the daemon's share: its start to the last ready ({accel})", "s", measured=daemon,
            value=share.median if share else None, value_unit="%",
            note="systemd's Starting line to the last first ready probe; value: % of kernel start to ready"),
    ]
