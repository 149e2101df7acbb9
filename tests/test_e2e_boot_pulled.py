"""The boot as it happens on an image whose defaults are not all in local
storage yet (a registry rather than a prefetch, a variant left out of
`bake`, a development image), in a booted pod VM (tests/bed): an image
missing from the store costs a pull, not the boot. The head start leaves a
default that is not in storage to the daemon (its `podman run --pull=never`
would fail and systemd's Restart= race the daemon's own start); the chain
comes up with no restart. A container held at its gate stops at once.
(With a signed policy refusing defaults and overrides in one boot:
test_e2e_boot_refusals.py.)

The missing defaults are copies of the stand-ins (same content, another
digest: tests/bed/cosign.py push_unsigned_copy) pushed to the loopback
registry the VM's quay.io/confidential-containers mirror points at, signed
by the test release key where the test wants them signed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.bed import cosign
from tests.bed.keys import STANDIN_IDENTITY, release_key
from tests.bed.proc import wait_until
from tests.bed.vm import PodVM, booted
from tests.systemd_parser import parse_exec, parse_unit
from tests.test_e2e_runtime import (
    NAMES,
    all_ready,
    bed_components,
    bootstrap_yaml,
    component,
    daemon_journal,
    first,
    userdata,
    wait_status,
)

pytestmark = pytest.mark.vm

PULLED = ("attestation-agent", "confidential-data-hub", "kata-agent")
READY_WITHIN = 45.0   # from the daemon's start to its READY=1 (the bed's boot is a few seconds; the bug cost minutes)


def copy_of(registry: Any, standin_images: Any, name: str, note: str, *, signed: bool) -> str:
    """A new digest of the component's v1 stand-in in the loopback registry
    (not in the VM's store), signed by the release key or not; its reference
    as the VM names it."""
    repository = f"confidential-containers/{name}"
    digest = cosign.push_unsigned_copy(registry.host, repository, standin_images[(name, "v1")].digest, note, note)
    if signed:
        cosign.sign_image(registry.host, repository, digest, release_key(),
                          identity=STANDIN_IDENTITY.format(repository=repository))
    return f"quay.io/{repository}@{digest}"


def ready_after(vm: PodVM) -> float:
    """Seconds from the daemon's first journal line to its READY=1."""
    lines = daemon_journal(vm)
    return first(lines, r"^READY: ")[1] - lines[0][0]


@pytest.fixture(scope="module")
def pulled_vm(podvm_image: Any, bed_registry: Any, standin_images: Any,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodVM]:
    """First boot with three defaults that are not in local storage."""
    manifest = bed_components(podvm_image)
    for name in PULLED:
        manifest["components"][name]["image"] = copy_of(bed_registry, standin_images, name, "pulled-at-boot",
                                                        signed=True)
    with booted(podvm_image, tmp_path_factory.mktemp("pulled") / "vm", registry=bed_registry, wait="started",
                userdata=userdata(), files={"/etc/podvm-bootstrap/bootstrap.yaml": bootstrap_yaml(podvm_image),
                                            "/etc/podvm-bootstrap/components.yaml":
                                                yaml.safe_dump(manifest, sort_keys=False)}) as v:
        v.pulled = {name: manifest["components"][name]["image"] for name in PULLED}  # type: ignore[attr-defined]
        yield v


def test_defaults_absent_from_storage_are_pulled_and_the_chain_comes_up_without_a_restart(
        pulled_vm: PodVM, request: pytest.FixtureRequest) -> None:
    vm = pulled_vm
    request.node._podvm_vms = [vm]
    st = wait_status(vm, all_ready, 120, "every component ready")
    for name in PULLED:
        c = component(st, name)
        assert c["image"] == vm.pulled[name] and c["source"] == "default"  # type: ignore[attr-defined]
    assert all(c["restarts"] == 0 for c in st["components"]), st["components"]
    lines = daemon_journal(vm)
    texts = [text for _, text in lines]
    # The head start left the three to the daemon, and started the others early.
    absent = first(lines, r"^not in local storage yet, started once the daemon has pulled and verified it: ")
    assert sorted(texts[absent[0]].split(": ", 1)[1].split(", ")) == sorted(PULLED)
    early = first(lines, r"^baked defaults' units started before the user-data")
    assert sorted(texts[early[0]].split(": ", 1)[1].split(", ")) == sorted(set(NAMES) - set(PULLED))
    assert not any("not ready within" in t or "starting it again" in t for t in texts), texts
    assert ready_after(vm) < READY_WITHIN
    for name in PULLED:   # the pulled images run, each started once
        assert vm.podman("inspect", "-f", "{{.ImageName}}", name).stdout.strip() == vm.pulled[name]  # type: ignore[attr-defined]
        assert "image not known" not in vm.journal(f"{name}.service")


def test_a_container_stopped_at_its_gate_ends_at_once(pulled_vm: PodVM, request: pytest.FixtureRequest) -> None:
    """A unit stopped while its container waits at its gate (an early start
    the plan replaces or drops): the gate's shell is PID 1 of its container,
    and without its TERM trap the stop waited the full stop timeout, then
    SIGKILL (exit 137). The container here is a unit's very podman command,
    under another name and on a FIFO nobody releases."""
    vm = pulled_vm
    request.node._podvm_vms = [vm]
    wait_status(vm, all_ready, 120, "every component ready")
    name = "kata-agent"
    unit = {a.key: a.value for a in parse_unit(vm.read_file(f"/run/systemd/system/{name}.service"))}
    [start] = parse_exec(unit["ExecStart"])
    held = f"{name}-held"
    fifo = f"/run/podvm-bootstrap/gates/{held}.fifo"
    vm.run(["mkfifo", "-m", "644", fifo])
    argv = [w for w in start.argv if w != "--rm"]
    argv = ["--sdnotify=ignore" if w.startswith("--sdnotify=") else
            f"--volume={fifo}:/.podvm-gate/release:ro" if w.endswith(":/.podvm-gate/release:ro") else w
            for w in argv]
    argv[argv.index("--name") + 1] = held
    assert "--stop-timeout=10" in argv
    try:
        vm.run(argv, timeout=120)

        def at_gate() -> bool:
            pid = vm.podman("inspect", "-f", "{{.State.Pid}}", held).stdout.strip()
            return pid != "0" and vm.read_file(f"/proc/{pid}/wchan") == b"wait_for_partner"
        wait_until(at_gate, 60, "the container at its gate")
        t0 = time.monotonic()
        vm.podman("stop", held)            # its own stop timeout: 10 s
        took = time.monotonic() - t0
        assert vm.podman("wait", held).stdout.strip() == "143"   # SIGTERM, not the timeout's SIGKILL (137)
        assert took < 1.0, f"stopping a container at its gate took {took:.2f}s"
        logs = vm.podman("logs", held)
        assert "standin" not in logs.stdout + logs.stderr   # nothing of the image ran
    finally:
        vm.podman("rm", "--force", "--ignore", held, check=False)
        vm.run(["rm", "-f", fifo], check=False)
