"""The baked defaults' units start before the user-data is fetched (the
boot's head start), in a booted pod VM (tests/bed): their containers are set
up while the daemon fetches, and nothing of them runs before the final plan
is provisioned, verified and measured. A unit the user-data changes (an
override) is ended at its gate, never released, and replaced.

The order assertions read the daemon's own journal lines: each is written
after the step it reports, so their order is the order of the steps."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.bed.vm import PodVM, booted
from tests.test_e2e_runtime import (
    NAMES,
    all_ready,
    answer,
    bed_components,
    bootstrap_yaml,
    component,
    daemon_journal,
    first,
    userdata,
    wait_status,
)

pytestmark = pytest.mark.vm

APF = "agent-protocol-forwarder"


@pytest.fixture(scope="module")
def vm(podvm_image: Any, bed_registry: Any, standin_images: Any,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodVM]:
    """First boot with an override of the forwarder in its user-data (v2, not
    prefetched: pulled by digest)."""
    v2 = standin_images[(APF, "v2")].digest
    override = f"quay.io/confidential-containers/{APF}@{v2}"
    with booted(podvm_image, tmp_path_factory.mktemp("early") / "vm", registry=bed_registry, wait="started",
                userdata=userdata(override),
                files={"/etc/podvm-bootstrap/bootstrap.yaml": bootstrap_yaml(podvm_image),
                       "/etc/podvm-bootstrap/components.yaml":
                           yaml.safe_dump(bed_components(podvm_image), sort_keys=False)}) as v:
        v.override = override  # type: ignore[attr-defined]
        yield v


def test_units_start_before_the_fetch_and_no_process_before_provisioning_and_measurement(
        vm: PodVM, request: pytest.FixtureRequest) -> None:
    request.node._podvm_vms = [vm]
    st = wait_status(vm, lambda s: all_ready(s) and component(s, APF)["source"] == "override", 120,
                     "every component ready, the forwarder on its override")
    lines = daemon_journal(vm)
    early = first(lines, r"^baked defaults' units started before the user-data \(held at their gates\): ")
    started = lines[early[0]][1].split(": ", 1)[1].split(", ")
    assert sorted(started) == sorted(NAMES)
    fetch = first(lines, r"^fetching the user-data, then planning")
    provisioned = max(i for i, (_, text) in enumerate(lines) if text.startswith("provision: "))
    measured = first(lines, r"^launch (NOT )?measured")
    assert early[0] < fetch[0] < provisioned < measured[0]
    releases = [i for i, (_, text) in enumerate(lines) if re.match(r"^\S+: gate open: released ", text)]
    assert len(releases) == len(NAMES) and min(releases) > measured[0]
    # The measured launch is the final plan's: the override, not the early default.
    eventlog = vm.read_file("/run/podvm-bootstrap/eventlog").decode()
    assert f'"image":"{vm.override}"' in eventlog and '"source":"override"' in eventlog  # type: ignore[attr-defined]
    assert all(c["restarts"] == 0 for c in st["components"])


def test_an_early_unit_the_user_data_changes_is_ended_at_its_gate_and_replaced(
        vm: PodVM, request: pytest.FixtureRequest) -> None:
    request.node._podvm_vms = [vm]
    st = wait_status(vm, lambda s: all_ready(s) and component(s, APF)["source"] == "override", 120,
                     "the forwarder running its override")
    lines = daemon_journal(vm)
    ended = first(lines, rf"^{APF}: early start of {APF}\.service ended at its gate "
                         r"\(the final plan changed or dropped it\)")
    released = first(lines, rf"^{APF}: gate open: released ")
    assert ended[0] < released[0]
    # The early container read an empty release and exited: nothing of the
    # default image ran; the unit now runs the override's container.
    assert "podvm-gate: not released" in vm.journal(f"{APF}.service")
    assert answer(vm) == f"{APF} standin v2"
    apf = component(st, APF)
    assert apf["image"] == vm.override and apf["override"]["accepted"] is True  # type: ignore[attr-defined]
    for name in NAMES:
        if name != APF:
            assert component(st, name)["source"] == "default"
            assert not any(re.match(rf"^{name}: early start of ", text) for _, text in lines)
