#!/usr/bin/env python3
"""`make demo-vm`: the pod VM as a real VM. Builds the disk (image/disk.py),
boots it under QEMU the way the cloud-api-adaptor's libvirt provider boots a
pod VM (user-data on a `cidata` ISO, a vTPM from swtpm behind tpm-crb, no
network; KVM when it works here, TCG otherwise), and shows what an operator
looks at: the boot on the serial console, the disk's mounts (read-only root,
the defaults' store on its dm-verity device, cidata), `podvm-bootstrap
status`, the start order from the journal, and the measured launch: PCR 8
(the initdata) and PCR 23 (the launch set) read in the VM with
tpm2_pcrread, and the event log replayed against PCR 23.

The components are the test bed's STAND-INS (tests/standins). Everything
stays on this machine; QEMU and swtpm are stopped by their PIDs at the end."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from image import demo  # noqa: E402
from image.demo import banner  # noqa: E402
from tests.bed.qemu import booted, ensure_disk  # noqa: E402
from tests.bed.userdata import cloud_config  # noqa: E402

NAMES = ("attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder", "api-server-rest")


def show(vm, title: str, command: str) -> str:
    return demo.show(vm, title, command, timeout=120)   # a TCG guest is slower than the nspawn bed


def console_excerpt(console: str) -> str:
    """The serial console's landmarks: kernel, TPM, verity, cidata, the
    daemon, the login prompt (colour codes removed)."""
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", console).replace("\r", "")
    keep = ("linux version", "command line:", "tpm", "verity", "cidata", "podvm-bootstrap", "multi-user",
            "login:")
    lines = [line.strip() for line in plain.splitlines() if any(k in line.lower() for k in keep)]
    return "\n".join(lines[:40])


def main() -> int:
    if os.geteuid() != 0:
        print("image/demo_vm.py: must run as root (image build, QEMU, swtpm)", file=sys.stderr)
        return 1
    disk = ensure_disk()
    banner("the disk (image/disk.py)")
    print(f"{disk.qcow2}\n{disk.kernel}  {disk.initrd}\nkernel command line: {disk.cmdline}")
    for name, part in disk.partitions.items():
        print(f"  {name:<20} offset {part['offset']:>11}  size {part['size'] >> 20:>5} MiB")
    userdata = cloud_config()
    workdir = Path(tempfile.mkdtemp(prefix="podvm-demo-vm-", dir="/var/tmp"))
    try:
        started = time.monotonic()
        with booted(disk, workdir, userdata=userdata, name="podvm-demo-vm") as vm:
            booted_in = time.monotonic() - started
            banner(f"booted under QEMU ({vm.accel.upper()}) in {booted_in:.0f} s: the serial console")
            print(console_excerpt(vm.console()))
            show(vm, "mounts: read-only root, dm-verity store, cidata, writable /var",
                 "findmnt -l -o TARGET,SOURCE,FSTYPE,OPTIONS "
                 "| grep -E '^(TARGET|/|/usr/share/containers/storage|/media/cidata|/var) '")
            show(vm, "the vTPM", "ls -l /dev/tpm0 /dev/tpmrm0")
            show(vm, "podvm-bootstrap status", "podvm-bootstrap status")
            show(vm, "component units", "systemctl list-units --no-pager --no-legend " + " ".join(
                f"{n}.service" for n in NAMES))
            show(vm, "start order (journal)",
                 "journalctl -b -o short-precise --no-pager -u podvm-bootstrap.service "
                 "| grep -E 'user-data provider|launch measured|gate open|READY'")
            show(vm, "PCR 8 (the initdata) and PCR 23 (the launch set) in the vTPM",
                 "tpm2_pcrread -T device:/dev/tpmrm0 sha256:8,23")
            log = vm.run("podvm-bootstrap status --json | python3 -c "
                         "'import json,sys; print(json.load(sys.stdin)[\"measurement\"][\"eventlog\"])'").stdout.strip()
            pcr = vm.run(["tpm2_pcrread", "-T", "device:/dev/tpmrm0", "sha256:23"]).stdout
            value = re.search(r"0x([0-9A-Fa-f]{64})", pcr)
            show(vm, "the event log replayed against PCR 23",
                 f"podvm-bootstrap measurements --log {log} --expect-pcr 23={value.group(1) if value else '0'}")
            banner("shutting down (QEMU and swtpm stopped by their PIDs)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
