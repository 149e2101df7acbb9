"""Start gates in a booted pod VM (tests/bed): every container is set up at
once, but a component's own process runs only once what it needs is ready,
and a start systemd makes while the daemon is down waits for the daemon.

The VM runs the image's manifest with one change: the attestation agent is
ready only once the test creates a file (a `file` probe), so the test holds
the dependency chain where it wants it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.bed.proc import wait_until
from tests.bed.vm import PodVM, booted
from tests.test_e2e_runtime import (
    all_ready,
    bed_components,
    bootstrap_yaml,
    component,
    containers,
    status,
    userdata,
    wait_status,
)

pytestmark = pytest.mark.vm

AA_GO = "/run/bed/attestation-agent.go"


def process_one(vm: PodVM, name: str) -> str:
    """What runs as PID 1 of the component's container (argv, spaces between)."""
    out = vm.podman("exec", name, "cat", "/proc/1/cmdline").stdout
    return out.replace("\0", " ").strip()


def at_gate(vm: PodVM, name: str) -> bool:
    return process_one(vm, name).startswith("/.podvm-gate/busybox sh -c")


@pytest.fixture(scope="module")
def vm(podvm_image: Any, bed_registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodVM]:
    manifest = bed_components(podvm_image)
    manifest["components"]["attestation-agent"]["ready"] = {"file": AA_GO}
    with booted(podvm_image, tmp_path_factory.mktemp("gates") / "vm", registry=bed_registry, wait="started",
                userdata=userdata(), files={"/etc/podvm-bootstrap/bootstrap.yaml": bootstrap_yaml(podvm_image),
                                            "/etc/podvm-bootstrap/components.yaml":
                                                yaml.safe_dump(manifest, sort_keys=False)}) as v:
        yield v


def test_containers_are_set_up_at_once_and_processes_wait_for_their_dependencies(
        vm: PodVM, podvm_image: Any, request: pytest.FixtureRequest) -> None:
    request.node._podvm_vms = [vm]
    names = list(bed_components(podvm_image)["components"])
    # Every container exists and runs; the attestation agent's process runs
    # (its gate has no dependency), the others wait at their gates.
    wait_until(lambda: set(names) <= set(containers(vm)), 90, "every container set up")
    wait_until(lambda: not at_gate(vm, "attestation-agent"), 60, "the attestation agent released")
    assert "attestation-agent" in process_one(vm, "attestation-agent").split(" ")[0]
    for name in names:
        if name != "attestation-agent":
            assert at_gate(vm, name), process_one(vm, name)
    assert vm.run(["test", "-e", "/run/kata-containers/agent.sock"], check=False).returncode != 0
    st = status(vm)
    assert component(st, "kata-agent")["state"] == "starting" and st["daemon"]["ready"] is False
    # The dependency becomes ready: the chain is released layer by layer.
    vm.run(["sh", "-c", f"mkdir -p /run/bed && touch {AA_GO}"])
    st = wait_status(vm, all_ready, 60, "every component ready")
    assert process_one(vm, "kata-agent").split(" ")[0].endswith("kata-agent")
    journal = vm.journal("podvm-bootstrap.service")
    assert "kata-agent: gate open: released /usr/local/bin/kata-agent (image" in journal
    assert all(c["restarts"] == 0 for c in st["components"])


def test_a_restart_while_the_daemon_is_down_waits_at_the_gate_for_the_daemon(
        vm: PodVM, request: pytest.FixtureRequest) -> None:
    request.node._podvm_vms = [vm]
    wait_status(vm, all_ready, 60, "every component ready")
    before = containers(vm)["agent-protocol-forwarder"]
    vm.systemctl("stop", "podvm-bootstrap.service")          # the components keep running
    vm.podman("kill", "--signal", "KILL", "agent-protocol-forwarder")
    # systemd's Restart= sets up a new container; nothing verifies its image, so it waits.
    wait_until(lambda: containers(vm).get("agent-protocol-forwarder", before) != before, 60,
               "systemd to restart the forwarder's container")
    wait_until(lambda: vm.systemctl("is-active", "agent-protocol-forwarder.service",
                                    check=False).stdout.strip() == "active", 60, "the new container up")
    assert at_gate(vm, "agent-protocol-forwarder")
    vm.systemctl("start", "podvm-bootstrap.service")         # returns at READY=1
    st = wait_status(vm, all_ready, 60, "the forwarder released by the daemon and ready")
    assert process_one(vm, "agent-protocol-forwarder").split(" ")[0].endswith("agent-protocol-forwarder")
    assert component(st, "agent-protocol-forwarder")["state"] == "ready"
