"""The pod VM as a real VM (tests/bed/qemu.py) with a damaged disk, booted
once for the module with the minimal user-data and no network: one byte of
api-server-rest's stored manifest in the verity-protected store of the
defaults is flipped on this VM's disk before boot. Reading it fails with an
I/O error (dm-verity), the daemon says so in one error line and does not
start that component, and the rest of the chain comes up."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bed.qemu import BuiltDisk, QemuVM, booted
from tests.bed.userdata import MINIMAL_USERDATA
from tests.test_qemu_vm import NAMES, component, wait_for_status

pytestmark = pytest.mark.vm

BROKEN = "api-server-rest"


def stored_manifest(disk: BuiltDisk, component: str) -> str:
    """The path (in the store) of the manifest the daemon checks for the
    component's baked default: overlay-images/<image ID>/=base64(manifest-<digest>)."""
    lock = json.loads(disk.baked_file("/etc/podvm-bootstrap/components.lock.json"))
    entry = next(e for e in lock["images"] if e["component"] == component and e["variant"] is None)
    key = base64.b64encode(f"manifest-{entry['digest']}".encode()).decode()
    return f"/overlay-images/{entry['image_id']}/={key}"


@pytest.fixture(scope="module")
def damaged_vm(podvm_disk: BuiltDisk) -> Iterator[QemuVM]:
    flip = podvm_disk.store_offset(stored_manifest(podvm_disk, BROKEN)) + 7
    workdir = Path(tempfile.mkdtemp(prefix="podvm-qemu-", dir=os.environ.get("PODVM_VM_DIR", "/var/tmp")))
    try:
        # wait="started": with a component that never starts, systemd may
        # stay "starting" while the daemon waits for it.
        with booted(podvm_disk, workdir, userdata=MINIMAL_USERDATA, flip=[flip], wait="started") as vm:
            yield vm
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def settled(vm: QemuVM, timeout: float = 300) -> dict:
    """Status once every component but the broken one is ready."""
    def others_ready(st: dict) -> bool:
        others = [c for c in st.get("components", ()) if c["name"] != BROKEN]
        return len(others) == len(NAMES) - 1 and all(c["state"] == "ready" for c in others)
    return wait_for_status(vm, others_ready, timeout, "every component but the damaged one ready")


def test_a_flipped_byte_in_the_verity_store_is_an_io_error_and_only_that_component_stays_down(
        damaged_vm: QemuVM) -> None:
    st = settled(damaged_vm)
    broken = component(st, BROKEN)
    assert broken["state"] != "ready" and broken["active_state"] != "active", broken
    assert damaged_vm.podman("ps", "--filter", f"name=^{BROKEN}$", "-q").stdout.strip() == ""
    # The block layer refused the block (the kernel's dm-verity line) ...
    kernel = damaged_vm.run(["journalctl", "--no-pager", "-k", "-b"]).stdout
    assert re.search(r"device-mapper: verity: .*data block \d+ is corrupted", kernel), kernel[-3000:]
    # ... and the daemon said what it means in one error line naming the component.
    journal = damaged_vm.journal("podvm-bootstrap.service")
    errors = [line for line in journal.splitlines()
              if f"{BROKEN}: image unusable, component not started" in line and "Input/output error" in line]
    assert len(errors) == 1, journal[-4000:]
    assert "Traceback" not in journal
    # The rest of the chain serves: the forwarder answers on its port.
    assert damaged_vm.run(["python3", "-c", "import socket; s = socket.create_connection(('127.0.0.1', 15150), 5);"
                           "print(s.recv(100).decode())"]).stdout.startswith("agent-protocol-forwarder standin")
