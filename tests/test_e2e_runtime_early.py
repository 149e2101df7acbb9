"""The baked defaults' units start before the user-data is fetched (the
boot's head start), in a booted pod VM (tests/bed): their containers are set
up while the daemon fetches, and nothing of them runs before the final plan
is provisioned, verified and measured. A unit the user-data changes (an
override) is ended at its gate, never released, and replaced.

The order assertions read the daemon's own journal lines: each is written
after the step it reports, so their order is the order of the steps."""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest
import yaml

from tests.bed.vm import PodVM, booted
from tests.test_e2e_runtime import (NAMES, all_ready, answer, bed_components, bootstrap_yaml, component,
                                    daemon_journal, first, userdata, wait_status)

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


# --- prebaked units (bake): started by systemd with the daemon's own start ---

UNITS = [f"{name}.service" for name in NAMES]
TMPFILES = "/usr/lib/tmpfiles.d/podvm-bootstrap-gates.conf"
TEST_DROPIN = "/run/systemd/system/podvm-bootstrap.service.d/zz-test.conf"


def fresh_boot_state(vm: PodVM) -> None:
    """As just booted: no daemon, no component, no generated unit or state;
    the gates' FIFOs from tmpfiles.d, as systemd-tmpfiles-setup makes them."""
    vm.systemctl("stop", "podvm-bootstrap.service", *UNITS, check=False)
    vm.run("rm -f /run/systemd/system/*.service && rm -rf /run/podvm-bootstrap")
    vm.systemctl("daemon-reload")
    vm.systemctl("reset-failed", check=False)
    vm.run(["systemd-tmpfiles", "--create", TMPFILES])


def states(vm: PodVM) -> dict[str, str]:
    out = vm.run(["systemctl", "show", "-p", "Id,ActiveState", *UNITS]).stdout
    return {m.group(1): m.group(2) for m in re.finditer(r"Id=(\S+)\nActiveState=(\S+)", out)}


def test_the_daemons_start_pulls_in_the_prebaked_units_held_at_their_gates_without_it(
        vm: PodVM, request: pytest.FixtureRequest) -> None:
    request.node._podvm_vms = [vm]
    wants = vm.run(["systemctl", "show", "-P", "Wants", "podvm-bootstrap.service"]).stdout.split()
    assert set(UNITS) <= set(wants)
    fresh_boot_state(vm)
    for name in NAMES:   # made at boot by tmpfiles.d, before any service
        assert vm.run(["test", "-p", f"/run/podvm-bootstrap/gates/{name}.fifo"], check=False).returncode == 0
    # No daemon at all behind the start: only systemd and the prebaked units.
    vm.write_file(TEST_DROPIN, "[Service]\nType=simple\nExecStart=\nExecStart=/bin/sleep infinity\n")
    vm.systemctl("daemon-reload")
    try:
        vm.systemctl("start", "podvm-bootstrap.service")
        vm.wait_until(["sh", "-c", "! systemctl show -P ActiveState " + " ".join(UNITS) + " | grep -vx active"],
                      60, "every prebaked unit up")
        for name in NAMES:   # each container up, its PID 1 still the gate (a release execs the component)
            pid = vm.podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
            argv = vm.read_file(f"/proc/{pid}/cmdline").split(b"\0")
            assert argv[:2] == [b"/.podvm-gate/busybox", b"sh"] and b"podvm-gate" in argv, (name, argv)
    finally:
        vm.run(["rm", "-f", TEST_DROPIN])
        vm.systemctl("daemon-reload")


def test_a_daemon_that_cannot_load_its_baked_files_leaves_no_prebaked_unit_waiting(
        vm: PodVM, request: pytest.FixtureRequest) -> None:
    request.node._podvm_vms = [vm]
    fresh_boot_state(vm)
    vm.write_file("/etc/podvm-bootstrap/bootstrap.yaml", "userdata: {provider: nowhere}\n")
    started = vm.systemctl("start", "podvm-bootstrap.service", check=False)
    assert started.returncode != 0
    assert "ExecMainStatus=2" in vm.run(["systemctl", "show", "-p", "ExecMainStatus", "podvm-bootstrap.service"]).stdout
    lines = [text for _, text in daemon_journal(vm)]
    assert any("userdata.provider" in text for text in lines)
    vm.wait_until(["sh", "-c", "! systemctl show -P ActiveState " + " ".join(UNITS) + " | grep -Evx 'inactive|failed'"],
                  90, "every prebaked unit stopped")
    assert vm.podman("ps", "--quiet").stdout.strip() == ""
