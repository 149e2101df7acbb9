"""The pod VM as a real VM (tests/bed/qemu.py), booted once for the module
with what the adaptor's user-data can ask for and a damaged disk:

- the cidata user-data overrides the forwarder's image with its baked
  default's own digest (allowed by the policy, signed, in the read-only store:
  accepted as an override, nothing pulled; the VM has no network), and asks
  for a kata-agent image, which the baked policy allows no override for:
  refused, the baked default runs;
- one byte of api-server-rest's stored manifest in the verity-protected store
  of the defaults is flipped on this VM's disk before boot: reading it fails
  with an I/O error (dm-verity), the daemon says so in one error line and
  does not start that component, and the rest of the chain comes up."""

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

from tests.bed.proc import wait_until
from tests.bed.qemu import BuiltDisk, QemuVM, booted
from tests.bed.userdata import cloud_config
from tests.test_qemu_vm import NAMES, status

pytestmark = pytest.mark.vm

BROKEN = "api-server-rest"
REFUSED_KATA = "quay.io/confidential-containers/kata-agent@sha256:" + "ab" * 32


def stored_manifest(disk: BuiltDisk, component: str) -> str:
    """The path (in the store) of the manifest the daemon checks for the
    component's baked default: overlay-images/<image ID>/=base64(manifest-<digest>)."""
    lock = json.loads(disk.baked_file("/etc/podvm-bootstrap/components.lock.json"))
    entry = next(e for e in lock["images"] if e["component"] == component and e["variant"] is None)
    key = base64.b64encode(f"manifest-{entry['digest']}".encode()).decode()
    return f"/overlay-images/{entry['image_id']}/={key}"


@pytest.fixture(scope="module")
def accepted_override(podvm_disk: BuiltDisk) -> str:
    return podvm_disk.defaults["agent-protocol-forwarder"]


@pytest.fixture(scope="module")
def damaged_vm(podvm_disk: BuiltDisk, accepted_override: str) -> Iterator[QemuVM]:
    userdata = cloud_config(images={"agent-protocol-forwarder": accepted_override, "kata-agent": REFUSED_KATA})
    flip = podvm_disk.store_offset(stored_manifest(podvm_disk, BROKEN)) + 7
    workdir = Path(tempfile.mkdtemp(prefix="podvm-qemu-", dir=os.environ.get("PODVM_VM_DIR", "/var/tmp")))
    try:
        # wait="started": with a component that never starts, systemd may
        # stay "starting" while the daemon waits for it.
        with booted(podvm_disk, workdir, userdata=userdata, flip=[flip],
                    wait="started") as vm:
            yield vm
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def settled(vm: QemuVM, timeout: float = 300) -> dict:
    """Status once every component but the broken one is ready."""
    seen: dict = {}

    def ok() -> bool:
        nonlocal seen
        try:
            seen = status(vm)
        except ValueError:
            return False
        others = [c for c in seen.get("components", ()) if c["name"] != BROKEN]
        return len(others) == len(NAMES) - 1 and all(c["state"] == "ready" for c in others)

    wait_until(ok, timeout, "every component but the damaged one ready", interval=1)
    return seen


def component(st: dict, name: str) -> dict:
    return next(c for c in st["components"] if c["name"] == name)


def test_an_allowed_override_in_the_cidata_user_data_is_accepted_verified_and_runs(
        damaged_vm: QemuVM, accepted_override: str) -> None:
    st = settled(damaged_vm)
    apf = component(st, "agent-protocol-forwarder")
    assert (apf["source"], apf["digest"]) == ("override", accepted_override.split("@", 1)[1]), apf
    answer = damaged_vm.podman("exec", "agent-protocol-forwarder", "standin", "probe", "tcp", "127.0.0.1:15150")
    assert answer.stdout.strip() == "agent-protocol-forwarder standin v1"
    journal = damaged_vm.journal("podvm-bootstrap.service")
    assert (f"agent-protocol-forwarder: image {accepted_override} verified "
            "(override from user-data, signed by release)") in journal
    # Nothing pulled: every image podman has is in the read-only store.
    images = json.loads(damaged_vm.podman("images", "--format", "json").stdout)
    assert images and all(i["ReadOnly"] for i in images)


def test_an_override_the_policy_does_not_allow_is_refused_and_the_default_runs(
        damaged_vm: QemuVM, podvm_disk: BuiltDisk) -> None:
    st = settled(damaged_vm)
    kata = component(st, "kata-agent")
    assert (kata["source"], kata["digest"]) == ("default", podvm_disk.default_digests["kata-agent"]), kata
    journal = damaged_vm.journal("podvm-bootstrap.service")
    refused = [line for line in journal.splitlines() if "kata-agent" in line and REFUSED_KATA in line]
    assert len(refused) == 1 and "refused" in refused[0], refused


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
