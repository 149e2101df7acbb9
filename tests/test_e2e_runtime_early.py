"""The baked defaults' units start before the user-data is fetched (the
boot's head start), in a booted pod VM (tests/bed): their containers are set
up while the daemon fetches, and nothing of them runs before the final plan
is provisioned, verified and measured. A unit the user-data changes (an
override) is ended at its gate, never released, and replaced.

The boot has an override of the forwarder in its user-data from the start
(the launch set is recorded once per boot: a changed plan in the same boot
is refused, test_e2e_runtime.py): the override, signed by the release key,
is pulled by digest and runs; a byte flipped in its stored signature makes
its next start refused (last in this module).

The order assertions read the daemon's own journal lines: each is written
after the step it reports, so their order is the order of the steps."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from podvm_bootstrap.attest.launch_set import read_launch
from podvm_bootstrap.attest.tcg_log import parse_records
from tests.bed.proc import wait_until
from tests.bed.vm import PodVM, booted
from tests.systemd_parser import parse_exec, parse_unit
from tests.test_e2e_runtime import (
    NAMES,
    all_ready,
    answer,
    bed_components,
    bootstrap_yaml,
    component,
    containers,
    daemon_journal,
    first,
    userdata,
    wait_status,
)
from tests.test_e2e_signatures import flip_a_signed_byte, stored_signature_path

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
    launched = read_launch(parse_records(vm.read_file("/run/attestation-agent/eventlog")), 23).by_name()
    assert launched[APF].image == vm.override and launched[APF].source == "override"  # type: ignore[attr-defined]
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


def test_the_override_is_pulled_by_digest_verified_and_the_only_change(
        vm: PodVM, podvm_image: Any, request: pytest.FixtureRequest) -> None:
    request.node._podvm_vms = [vm]
    override = vm.override  # type: ignore[attr-defined]
    st = wait_status(vm, lambda s: all_ready(s) and component(s, APF)["source"] == "override", 120,
                     "the forwarder running its override")
    # Not in the image's baked store: pulled into podman's own, by digest.
    assert stored_signature_path(vm, override).startswith("/var/lib/containers/storage/")
    assert re.search(rf"podman\[\d+\]: .* image pull +{re.escape(override)}$", vm.journal(), re.M)
    apf = component(st, APF)
    assert apf["signature"] == {"key": "release"} and apf["override"]["requested_by"] == "user-data"
    assert f"ok {APF} {override} " in vm.run(["podvm-bootstrap", "verify"]).stdout
    for name in NAMES:
        if name != APF:
            assert component(st, name)["image"] == podvm_image.defaults[name]
    assert st["measurement"]["components"] == {**podvm_image.default_digests, APF: override.split("@")[1]}


def _gate_fifo(argv: tuple[str, ...]) -> str:
    [volume] = [w for w in argv if w.endswith(":/.podvm-gate/release:ro")]
    return volume.removeprefix("--volume=").split(":")[0]


def _gate_reader(vm: PodVM, container: str) -> bool:
    """The container's PID 1 is still the gate's shell, blocked opening its
    FIFO: it waits at its gate, nothing of the image runs."""
    pid = vm.podman("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()
    shell = vm.read_file(f"/proc/{pid}/cmdline").split(b"\0")
    return (shell[:2] == [b"/.podvm-gate/busybox", b"sh"] and b"podvm-gate" in shell
            and vm.read_file(f"/proc/{pid}/wchan") == b"wait_for_partner")


def test_a_container_of_the_replaced_definition_still_at_its_gate_is_never_released(
        vm: PodVM, request: pytest.FixtureRequest) -> None:
    """The hole this binding closes: the baked default's container of the
    forwarder (the definition its early start had, which the override
    replaced) waits at its gate while the override's unit starts again and
    is released. Its gate is another FIFO: the verified argv goes into the
    override's container only; the default's never runs anything and ends
    with the gate's exit 75."""
    request.node._podvm_vms = [vm]
    wait_status(vm, lambda s: all_ready(s) and component(s, APF)["source"] == "override", 120,
                "the forwarder running its override")
    # The baked default's unit, as the early start rendered it (no user-data: no override).
    vm.run("printf '#cloud-config\\n{}\\n' > /tmp/no-userdata && rm -rf /tmp/baked-units")
    vm.run(["podvm-bootstrap", "render", "--user-data", "/tmp/no-userdata", "--output", "/tmp/baked-units"])
    baked = {a.key: a.value for a in parse_unit(vm.read_file(f"/tmp/baked-units/{APF}.service"))}
    [start] = parse_exec(baked["ExecStart"])
    now = {a.key: a.value for a in parse_unit(vm.read_file(f"/run/systemd/system/{APF}.service"))}
    [current] = parse_exec(now["ExecStart"])
    old_fifo, new_fifo = _gate_fifo(start.argv), _gate_fifo(current.argv)
    assert old_fifo != new_fifo and old_fifo.rsplit("/", 1)[0] == new_fifo.rsplit("/", 1)[0] == \
        f"/run/podvm-bootstrap/gates/{APF}"
    # The daemon removed the replaced definition's FIFO; the lingering
    # container holds it as it was bound (made here again for the new one).
    assert vm.run(["test", "-e", old_fifo], check=False).returncode != 0
    vm.run(["mkfifo", "-m", "644", old_fifo])
    lingering = f"{APF}-lingering"
    # Its very podman command, under another name (the override's container
    # keeps the component's), kept after it exits, outside systemd.
    argv = ["--sdnotify=ignore" if w.startswith("--sdnotify=") else w for w in start.argv if w != "--rm"]
    argv[argv.index("--name") + 1] = lingering
    vm.run(argv, timeout=120)
    try:
        wait_until(lambda: _gate_reader(vm, lingering), 60, "the default's container at its gate")
        released_before = len([t for _, t in daemon_journal(vm) if t.startswith(f"{APF}: gate open: released ")])
        vm.systemctl("restart", f"{APF}.service")
        wait_until(lambda: len([t for _, t in daemon_journal(vm)
                                if t.startswith(f"{APF}: gate open: released ")]) > released_before,
                   120, "the override's new start released")
        wait_status(vm, lambda s: all_ready(s) and component(s, APF)["source"] == "override", 120,
                    "the forwarder ready again on its override")
        assert answer(vm) == f"{APF} standin v2"      # the new container runs the verified override
        assert _gate_reader(vm, lingering)             # the default's container: still at its gate
        logs = vm.podman("logs", lingering)
        assert logs.stdout + logs.stderr == ""        # nothing of the default's image ran
        # Its unit's stop, as the daemon does it: the FIFO opened and closed, the gate reads nothing.
        vm.run(["timeout", "30", "sh", "-c", f": > {old_fifo}"])
        assert vm.podman("wait", lingering).stdout.strip() == "75"
        logs = vm.podman("logs", lingering)
        assert "podvm-gate: not released" in logs.stdout + logs.stderr and "standin" not in logs.stdout + logs.stderr
    finally:
        vm.podman("rm", "--force", "--ignore", lingering, check=False)
        vm.run(["rm", "-f", old_fifo], check=False)


def test_signed_override_runs_then_a_flipped_stored_byte_refuses_its_next_start(
        vm: PodVM, request: pytest.FixtureRequest) -> None:
    request.node._podvm_vms = [vm]
    override = vm.override  # type: ignore[attr-defined]
    st = wait_status(vm, lambda s: all_ready(s) and component(s, APF)["source"] == "override", 120,
                     "the forwarder running its override")
    apf = component(st, APF)
    assert apf["image"] == override and apf["signature"] == {"key": "release"}
    assert answer(vm) == f"{APF} standin v2"
    assert f"ok {APF} {override} " in vm.run(["podvm-bootstrap", "verify"]).stdout

    flip_a_signed_byte(vm, override)
    out = vm.run(["podvm-bootstrap", "verify"], check=False)
    assert out.returncode == 1
    assert f"FAILED {APF} {override}: signature of {override} refused: not signed by any key" in out.stdout, out
    # The next start the daemon orders (its health probe fails: the stand-in
    # closes its listener) re-verifies, refuses, and stops the component.
    vm.podman("exec", APF, "sh", "-c", f"mkdir -p /run/standin && touch /run/standin/{APF}.unlisten")
    st = wait_status(vm, lambda s: component(s, APF)["state"] == "failed", 90, "the forwarder refused a restart")
    assert "signature" in component(st, APF)["last_error"] and "refused" in component(st, APF)["last_error"]
    assert f"{APF}: image does not verify, its process is not started" in vm.journal("podvm-bootstrap.service")
    # The daemon stops the unit (a systemd job): bounded wait for it to end.
    wait_until(lambda: APF not in containers(vm) and vm.unit_state(f"{APF}.service") in ("inactive", "failed"),
               60, "the forwarder's unit stopped and its container gone")
