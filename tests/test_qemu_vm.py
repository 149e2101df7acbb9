"""The pod VM as a real VM (tests/bed/qemu.py): the disk of image/disk.py
booted under QEMU the way the adaptor's libvirt provider boots it, with the
minimal user-data on a cidata ISO, a vTPM (swtpm behind tpm-crb) and no
network. One boot for the module, then a reboot of the same disk in the same
QEMU (the vTPM keeps its state; its PCRs reset with the machine).

In file order: the chain comes up from the baked defaults (nothing pulled)
on a read-only root with the store on its dm-verity device; the launch is
measured into the vTPM's PCR 23 and the initdata bound into PCR 8, both read
back inside the VM with tpm2_pcrread, equal to `plan --json`'s predictions
made on the host from the disk's baked files, and the event log copied out
replays to PCR 23 on the host with `podvm-bootstrap measurements`; after a
reboot everything is ready again and measured once in the new boot (the same
PCR values, each component once in the log)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.bed.keys import KEY_NAME
from tests.bed.proc import wait_until
from tests.bed.qemu import BuiltDisk, QemuVM
from tests.bed.userdata import MINIMAL_USERDATA

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parent.parent
NAMES = ("attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder", "api-server-rest")
BAKED = ("components.yaml", "policy.yaml", "bootstrap.yaml")


def status(vm: QemuVM) -> dict:
    return json.loads(vm.run(["podvm-bootstrap", "status", "--json"], check=False, timeout=60).stdout)


def component(st: dict, name: str) -> dict:
    """One component's record in a status."""
    return next(c for c in st["components"] if c["name"] == name)


def wait_for_status(vm: QemuVM, until: Callable[[dict], bool], timeout: float, what: str) -> dict:
    """`status --json` in the VM, polled until `until` holds for it (a status
    that is not JSON yet counts as not there)."""
    seen: dict = {}

    def done() -> bool:
        nonlocal seen
        try:
            seen = status(vm)
        except ValueError:
            return False
        return until(seen)

    wait_until(done, timeout, what, interval=1)
    return seen


def wait_all_ready(vm: QemuVM, timeout: float = 240) -> dict:
    return wait_for_status(vm, lambda st: len(st.get("components", ())) == len(NAMES) and all(
        c["state"] == "ready" and c["active_state"] == "active" for c in st["components"]),
        timeout, "every component ready")


def pcr_in_vm(vm: QemuVM, pcr: int) -> str:
    """PCR `pcr` (sha256) of the VM's TPM, read inside with tpm2_pcrread
    through the kernel's resource manager."""
    out = vm.run(["tpm2_pcrread", "-T", "device:/dev/tpmrm0", f"sha256:{pcr}"]).stdout
    found = re.search(rf"^\s*{pcr}\s*:\s*0x([0-9A-Fa-f]{{64}})\s*$", out, re.M)
    assert found, out
    return found.group(1).lower()


def eventlog_path(st: dict) -> str:
    """Where this daemon wrote the event log (its status record says: measure.eventlog)."""
    return st["measurement"]["eventlog"]


def replay_on_host(log: bytes, expect_pcr23: str, tmp_path: Path) -> subprocess.CompletedProcess:
    copy = tmp_path / "eventlog"
    copy.write_bytes(log)
    return subprocess.run([sys.executable, "-m", "podvm_bootstrap", "measurements", "--log", str(copy),
                           "--expect-pcr", f"23={expect_pcr23}", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def launched(replay: dict) -> list[str]:
    """The components of the replayed launch set, sorted."""
    return sorted(c["component"] if isinstance(c, dict) else c for c in replay["launch"]["components"])


def initdata_bound(digest: str) -> str:
    """PCR 8 after the initdata digest's one extend from zero: sha256(0^32 || digest fitted to 32 bytes)."""
    raw = bytes.fromhex(digest.split(":", 1)[1])[:32]
    return hashlib.sha256(bytes(32) + raw.ljust(32, b"\0")).hexdigest()


def predict_on_host(disk: BuiltDisk, userdata: str, tmp_path: Path) -> dict:
    """`plan --json` on the host from the disk's own baked files (read out
    of its root partition) and the user-data the VM was given."""
    config, root = tmp_path / "config", tmp_path / "root"
    config.mkdir()
    for name in BAKED:
        (config / name).write_text(disk.baked_file(f"/etc/podvm-bootstrap/{name}"))
    keys = root / "etc/podvm-bootstrap/keys"
    keys.mkdir(parents=True)
    (keys / f"{KEY_NAME}.pub").write_text(disk.baked_file(f"/etc/podvm-bootstrap/keys/{KEY_NAME}.pub"))
    (tmp_path / "user-data").write_text(userdata)
    out = subprocess.run([sys.executable, "-m", "podvm_bootstrap", "--root", str(root), "--config-dir", str(config),
                          "plan", "--json", "--user-data", str(tmp_path / "user-data")],
                         cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["measurement"]


def launch_lines(journal: str) -> list[str]:
    return [line for line in journal.splitlines() if "launch measured into PCR" in line]


def test_the_chain_comes_up_from_the_baked_defaults_on_a_read_only_verity_backed_root(
        qemu_vm: QemuVM, podvm_disk: BuiltDisk) -> None:
    st = wait_all_ready(qemu_vm)
    for name in NAMES:
        c = component(st, name)
        assert (c["digest"], c["source"]) == (podvm_disk.default_digests[name], "default"), c
    assert qemu_vm.run(["python3", "-c", "import urllib.request as u;"
                        "print(u.urlopen('http://127.0.0.1:8006/', timeout=5).read().decode())"]).stdout.strip() \
        == "api-server-rest standin v1"
    # Booted like the libvirt provider boots a pod VM: root read-only, the
    # defaults' store on its dm-verity device, user-data from the cidata ISO,
    # the vTPM through the kernel's resource manager.
    listed = json.loads(qemu_vm.run(["findmnt", "-J", "-l", "-o", "TARGET,SOURCE,FSTYPE,OPTIONS"]).stdout)
    mounts = {m["target"]: m for m in listed["filesystems"]}
    assert "ro" in mounts["/"]["options"].split(","), mounts["/"]
    store = mounts["/usr/share/containers/storage"]
    assert store["source"] == "/dev/mapper/podvm-store" and "ro" in store["options"].split(","), store
    dm = qemu_vm.run("cat /sys/block/$(basename $(readlink -f /dev/mapper/podvm-store))/dm/uuid").stdout
    assert dm.startswith("CRYPT-VERITY-"), dm
    assert mounts["/media/cidata"]["fstype"] == "iso9660"
    assert "rw" in mounts["/var"]["options"].split(",")
    # Nothing was pulled: every image podman has is in the read-only store.
    images = json.loads(qemu_vm.podman("images", "--format", "json").stdout)
    assert images and all(i["ReadOnly"] for i in images), [(i["Names"], i.get("ReadOnly")) for i in images]
    # podman's defaults in a real VM: cgroups (v2) work, and the sample
    # manifest's kata-agent runs in the host's PID namespace.
    assert qemu_vm.podman("info", "--format", "{{.Host.CgroupsVersion}}").stdout.strip() == "v2"
    assert qemu_vm.podman("inspect", "--format", "{{.HostConfig.PidMode}}", "kata-agent").stdout.strip() == "host"
    assert "user-data provider: file /media/cidata/user-data" in qemu_vm.journal("podvm-bootstrap.service")


def test_the_launch_is_measured_in_the_vtpm_and_replays_on_the_host(
        qemu_vm: QemuVM, podvm_disk: BuiltDisk, tmp_path: Path) -> None:
    st = wait_all_ready(qemu_vm)
    record = st["measurement"]
    assert record["measured"] is True and record["tpm"] == "device:/dev/tpmrm0" and record["pcr"] == 23, record
    pcr23, pcr8 = pcr_in_vm(qemu_vm, 23), pcr_in_vm(qemu_vm, 8)
    assert record["value"] == f"sha256:{pcr23}"
    predicted = predict_on_host(podvm_disk, MINIMAL_USERDATA, tmp_path)
    assert predicted["expected"] == f"sha256:{pcr23}"  # a fresh vTPM: PCR 23 starts at zero
    # PCR 8: the initdata's digest (here the adaptor's placeholder: the
    # user-data carries none) extended once, as plan --json predicts it.
    initdata = record["initdata"]
    assert initdata["bound"] is True and initdata["pcr"] == 8, initdata
    assert pcr8 == initdata_bound(initdata["digest"])
    assert predicted["initdata"]["expected"] == f"sha256:{pcr8}"
    replay = replay_on_host(qemu_vm.read_file(eventlog_path(st)), pcr23, tmp_path)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    doc: Any = json.loads(replay.stdout)
    assert doc["ok"] is True and launched(doc) == sorted(NAMES)
    # ... and a log that says anything else does not replay to it.
    wrong = replay_on_host(qemu_vm.read_file(eventlog_path(st)), "00" * 32, tmp_path)
    assert wrong.returncode == 1


def test_a_reboot_of_the_same_disk_is_ready_again_and_measured_once(
        qemu_vm: QemuVM, tmp_path: Path) -> None:
    before = wait_all_ready(qemu_vm)
    pcr_before, pcr8_before = pcr_in_vm(qemu_vm, 23), pcr_in_vm(qemu_vm, 8)
    first_boot = qemu_vm.boot_ids[-1]
    qemu_vm.reboot()
    assert qemu_vm.boot_ids[-1] != first_boot
    after = wait_all_ready(qemu_vm)
    # Measured once in the new boot: one extend per event from a reset PCR
    # gives the same value; a second measurement would have moved it.
    assert pcr_in_vm(qemu_vm, 23) == pcr_before
    assert pcr_in_vm(qemu_vm, 8) == pcr8_before  # the initdata bound once again, not twice
    assert after["measurement"]["value"] == before["measurement"]["value"]
    replay = replay_on_host(qemu_vm.read_file(eventlog_path(after)), pcr_before, tmp_path)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert launched(json.loads(replay.stdout)) == sorted(NAMES)
    # The journal on the writable /var kept both boots: one measurement each.
    assert len(launch_lines(qemu_vm.journal("podvm-bootstrap.service"))) == 1
    previous = qemu_vm.run(["journalctl", "--no-pager", "-b", "-1", "-u", "podvm-bootstrap.service"]).stdout
    assert len(launch_lines(previous)) == 1
