#!/usr/bin/env python3
"""`make demo`: build the pod VM image, boot it with sample user-data that
overrides the forwarder's image, and show what an operator looks at.

The components are the test bed's STAND-INS (tests/standins), served under
their real names by a loopback registry; the VM is systemd-nspawn booting the
image's root filesystem (tests/bed/vm.py). Everything stays on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.bed.cache import cache_dir, cache_lock  # noqa: E402
from tests.bed.registry import running_registry  # noqa: E402
from tests.bed.userdata import cloud_config  # noqa: E402
from tests.bed.vm import boot, ensure_image  # noqa: E402
from tests.standins import images as standins  # noqa: E402

COMPONENT_UNITS = ["attestation-agent.service", "kata-agent.service", "agent-protocol-forwarder.service"]


def banner(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def show(vm, title: str, command: str) -> None:
    banner(title)
    print(f"# {command}")
    out = vm.run(command, check=False, timeout=60)
    print((out.stdout + out.stderr).rstrip(), flush=True)


def main() -> int:
    started = time.monotonic()
    banner("building the pod VM image (cached after the first time)")
    image = ensure_image()
    print(f"layers: {' over '.join(image.lowerdirs)}")
    for name, ref in image.defaults.items():
        print(f"default {name}: {ref}")

    cache = cache_dir()
    with cache_lock(cache):
        built = standins.build_all(cache / f"standins-{standins.inputs_key()}")
    v2 = built[("agent-protocol-forwarder", "v2")]
    override = f"quay.io/{v2.repository}@{v2.digest}"
    userdata = cloud_config(images={"agent-protocol-forwarder": override})

    workroot = Path(tempfile.mkdtemp(prefix="podvm-demo-", dir="/var/tmp"))
    try:
        with running_registry() as registry:
            for image_ in built.values():
                if image_.variant != "padded":
                    registry.push_standin(image_)
            banner("sample user-data (untrusted; the forwarder's image overridden by digest)")
            print(userdata.rstrip())
            banner("booting the pod VM (systemd-nspawn)")
            vm = boot(image, workroot / "vm", name="podvm-demo", userdata=userdata, registry=registry,
                      wait="started")
            try:
                vm.wait_until("systemctl is-system-running | grep -qE '^(running|degraded)$'", 120,
                              "podvm-bootstrap to report READY (the boot to finish)")
                print(f"booted; podvm-bootstrap sent READY {time.monotonic() - started:.1f}s after the demo started"
                      " (READY = every essential component ready)")
                try:
                    vm.wait_until("podvm-bootstrap status >/dev/null", 60, "every component to be ready")
                except Exception as exc:  # show the state anyway: that is what an operator needs then
                    print(f"not every component became ready: {exc}")
                show(vm, "podvm-bootstrap status", "podvm-bootstrap status")
                show(vm, "the components' units", "systemctl list-units --no-pager --all " + " ".join(COMPONENT_UNITS))
                show(vm, "start order (journal of podvm-bootstrap, with timestamps)",
                     "journalctl --no-pager -o short-precise -u podvm-bootstrap "
                     "| grep -E 'starting|ready probe passed|READY|override|pull|verified'")
                show(vm, "what answers on the forwarder's port (from inside its container)",
                     "podman exec agent-protocol-forwarder standin probe tcp 127.0.0.1:15150")
                show(vm, "podvm-bootstrap verify", "podvm-bootstrap verify")
                banner("shutting the VM down")
                vm.run(["systemctl", "poweroff", "--no-block"], check=False)
                try:
                    vm.nspawn.popen.wait(60)
                    print("the VM powered off")
                except subprocess.TimeoutExpired:
                    print("the VM did not power off within 60s; killing it")
            finally:
                vm.destroy()
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
