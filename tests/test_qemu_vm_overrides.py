"""The pod VM as a real VM (tests/bed/qemu.py), booted once for the module
with what the adaptor's user-data can ask for and the one network a pod VM
of the test bed may have: QEMU's user-mode network, restricted, where the
only address the guest reaches is its registry mirror (10.0.2.100:5000,
relayed to the session's loopback registry).

- the cidata user-data overrides the forwarder's image with its v2 stand-in,
  which the disk does not hold (the policy allows it, signed by the release
  key): pulled inside the VM at boot into the writable store on /var,
  verified, measured into PCR 23 as `plan --json` predicts on the host, and
  running;
- it also asks for a kata-agent image the baked policy allows no override
  for: refused, the baked default runs;
- nothing but the mirror is reachable: not the host, not its loopback."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bed.qemu import GUEST_REGISTRY, BuiltDisk, QemuVM, booted
from tests.bed.registry import Registry
from tests.bed.userdata import cloud_config
from tests.test_qemu_vm import component, pcr_in_vm, predict_on_host, wait_all_ready

pytestmark = pytest.mark.vm

APF = "agent-protocol-forwarder"
REFUSED_KATA = "quay.io/confidential-containers/kata-agent@sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def pulled_override(standin_images) -> str:
    """The forwarder's v2 stand-in, as a release names it (bed_registry holds
    it, signed by the release key; the VM's mirror sends the pull there)."""
    v2 = standin_images[(APF, "v2")]
    return f"quay.io/{v2.repository}@{v2.digest}"


@pytest.fixture(scope="module")
def userdata(pulled_override: str) -> str:
    return cloud_config(images={APF: pulled_override, "kata-agent": REFUSED_KATA})


@pytest.fixture(scope="module")
def override_vm(podvm_disk: BuiltDisk, bed_registry: Registry, userdata: str) -> Iterator[QemuVM]:
    workdir = Path(tempfile.mkdtemp(prefix="podvm-qemu-", dir=os.environ.get("PODVM_VM_DIR", "/var/tmp")))
    try:
        with booted(podvm_disk, workdir, userdata=userdata, registry=bed_registry) as vm:
            yield vm
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_an_allowed_override_not_on_the_disk_is_pulled_in_the_vm_verified_measured_and_runs(
        override_vm: QemuVM, podvm_disk: BuiltDisk, pulled_override: str, userdata: str, tmp_path: Path) -> None:
    digest = pulled_override.split("@", 1)[1]
    baked = json.loads(podvm_disk.baked_file("/etc/podvm-bootstrap/components.lock.json"))
    assert digest not in {e["digest"] for e in baked["images"]}  # not in the disk's read-only store
    st = wait_all_ready(override_vm)
    apf = component(st, APF)
    assert (apf["source"], apf["digest"]) == ("override", digest), apf
    answer = override_vm.podman("exec", APF, "standin", "probe", "tcp", "127.0.0.1:15150")
    assert answer.stdout.strip() == f"{APF} standin v2"
    assert override_vm.podman("inspect", "--format", "{{.ImageDigest}}", APF).stdout.strip() == digest
    journal = override_vm.journal("podvm-bootstrap.service")
    assert f"{APF}: image {pulled_override} verified (override from user-data, signed by release)" in journal
    # Pulled in this boot: in podman's writable store on /var, the only image
    # not in the read-only store of the defaults ...
    images = json.loads(override_vm.podman("images", "--format", "json").stdout)
    writable = [i for i in images if not i.get("ReadOnly")]  # podman leaves out a false ReadOnly
    assert [i["Digest"] for i in writable] == [digest], [(i["Names"], i["Digest"], i.get("ReadOnly")) for i in images]
    store = override_vm.podman("image", "inspect", "--format", "{{.GraphDriver.Data.UpperDir}}",
                               pulled_override).stdout
    assert store.startswith("/var/lib/containers/storage/"), store
    # ... over the VM's one forward: the host-side relays carried it.
    relayed = override_vm.guestfwd_log()
    assert any(line.endswith(" connected") for line in relayed), relayed
    # Measured as the host predicts from the disk's files and this user-data
    # (a fresh vTPM: PCR 23 starts at zero).
    predicted = predict_on_host(podvm_disk, userdata, tmp_path)
    assert predicted["expected"] == f"sha256:{pcr_in_vm(override_vm, 23)}" == st["measurement"]["value"]


def test_an_override_the_policy_does_not_allow_is_refused_and_the_default_runs(
        override_vm: QemuVM, podvm_disk: BuiltDisk) -> None:
    st = wait_all_ready(override_vm)
    kata = component(st, "kata-agent")
    assert (kata["source"], kata["digest"]) == ("default", podvm_disk.default_digests["kata-agent"]), kata
    journal = override_vm.journal("podvm-bootstrap.service")
    refused = [line for line in journal.splitlines() if "kata-agent" in line and REFUSED_KATA in line]
    assert len(refused) == 1 and "refused" in refused[0], refused


def test_the_vm_reaches_its_registry_mirror_and_nothing_else(override_vm: QemuVM, bed_registry: Registry) -> None:
    host, port = GUEST_REGISTRY
    connect = ("import socket, sys\n"
               "try:\n"
               "    socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close()\n"
               "except OSError as exc:\n"
               "    sys.exit(f'unreachable: {exc}')\n")
    assert override_vm.run(["python3", "-c", connect, host, str(port)], check=False).returncode == 0
    # The host (QEMU's alias 10.0.2.2 for it) is not: not even the registry's
    # own port on its loopback, nor the outside (a public resolver).
    for where, at in (("10.0.2.2", bed_registry.port), ("10.0.2.2", 22), ("1.1.1.1", 443)):
        out = override_vm.run(["python3", "-c", connect, where, str(at)], check=False, timeout=30)
        assert out.returncode == 1 and "unreachable" in out.stderr, (where, at, out)
