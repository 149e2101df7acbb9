"""Restarts in a booted pod VM (tests/bed): one component's restart never
touches another's container, and every start, systemd's own included, runs
only an image verified for that start (issue 10).

One module-scoped VM with the image's own manifest; each test starts from
"everything ready"."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import yaml

from tests.bed.vm import PodVM, booted
from tests.test_e2e_runtime import (all_ready, bed_components, bootstrap_yaml, component, containers, status,
                                    userdata, wait_status)

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def vm(podvm_image: Any, bed_registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodVM]:
    with booted(podvm_image, tmp_path_factory.mktemp("rs") / "vm", registry=bed_registry, wait="started",
                userdata=userdata(), files={"/etc/podvm-bootstrap/bootstrap.yaml": bootstrap_yaml(podvm_image),
                                            "/etc/podvm-bootstrap/components.yaml":
                                                yaml.safe_dump(bed_components(podvm_image), sort_keys=False)}) as v:
        yield v


@pytest.fixture()
def ready_vm(vm: PodVM, request: pytest.FixtureRequest) -> PodVM:
    request.node._podvm_vms = [vm]  # journal in the report when it fails
    wait_status(vm, all_ready, 120, "every component ready")
    return vm


def test_restarting_the_attestation_agent_leaves_kata_agents_container_as_it_was(ready_vm: PodVM) -> None:
    """Wants=, not Requires=: systemd does not propagate the restart, so
    kata-agent (and every container of the pod it would take down) keeps its
    very container: same ID, same start time."""
    vm = ready_vm
    before = containers(vm)
    vm.systemctl("restart", "attestation-agent.service")
    st = wait_status(vm, lambda s: all_ready(s) and containers(vm).get("attestation-agent") not in
                     (None, before["attestation-agent"]), 60, "the attestation agent restarted and ready")
    after = containers(vm)
    assert after["attestation-agent"] != before["attestation-agent"]
    assert after["kata-agent"] == before["kata-agent"]
    assert after["agent-protocol-forwarder"] == before["agent-protocol-forwarder"]
    assert component(st, "kata-agent")["restarts"] == 0
    for unit in ("kata-agent.service", "agent-protocol-forwarder.service"):
        assert vm.systemctl("show", "-P", "NRestarts", unit).stdout.strip() == "0"
    text = vm.read_file("/run/systemd/system/kata-agent.service").decode()
    assert "Wants=attestation-agent.service" in text and "Requires=" not in text
