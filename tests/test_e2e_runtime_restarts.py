"""Restarts in a booted pod VM (tests/bed): one component's restart never
touches another's container, and every start, systemd's own included, runs
only an image verified for that start (issue 10).

One module-scoped VM with the image's own manifest; each test starts from
"everything ready"."""

from __future__ import annotations

import json

import pytest

from tests import test_e2e_runtime
from tests.bed.proc import wait_until
from tests.bed.vm import PodVM
from tests.test_e2e_runtime import all_ready, component, containers, status, wait_status

pytestmark = pytest.mark.vm


# One booted VM per module, running the image's own manifest: test_e2e_runtime's fixtures.
vm = test_e2e_runtime.vm
ready_vm = test_e2e_runtime.ready_vm


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
    assert "\nWants=" in text and "Requires=" not in text and "BindsTo=" not in text


def test_a_tampered_image_is_never_run_again_after_a_crash(ready_vm: PodVM) -> None:
    """The store is tampered with the way podman itself does not notice at
    run time: images.json now says the forwarder's image is made of another
    image's layer (podman would run that filesystem under the forwarder's
    name). Then its container is killed. systemd's Restart= sets up a new
    container from the tampered store; its gate is not released (the layer
    chain no longer matches the config's diff IDs for that start), the daemon
    stops the unit, and nothing of it runs again. (A rewritten config is
    refused by podman itself: "config.json digest ... does not match".)
    Last in this module: it restores the store and the daemon."""
    vm = ready_vm
    name = "agent-protocol-forwarder"
    ids = {c: vm.podman("image", "inspect", "--format", "{{.Id}}", component(status(vm), c)["image"]).stdout.strip()
           for c in (name, "kata-agent")}
    # The store that holds it: podman's own, or a read-only additional one (an image build's --store).
    index_path = next(p for p in ("/var/lib/containers/storage/vfs-images/images.json",
                                  "/usr/share/containers/storage/vfs-images/images.json")
                      if vm.run(["grep", "-q", ids[name], p], check=False).returncode == 0)
    original = vm.read_file(index_path)
    index = json.loads(original)
    layers = {i["id"]: i["layer"] for i in index}
    for image in index:
        if image["id"] == ids[name]:
            image["layer"] = layers[ids["kata-agent"]]
    # Written from the host, through the VM's root mount: inside the VM the
    # image build's store is mounted read-only (as a dm-verity /usr would be),
    # and the tampering stands for what the block layer would otherwise stop.
    host_index = vm.merged / index_path.lstrip("/")
    host_index.write_bytes(json.dumps(index).encode())
    runs_before = vm.journal(f"{name}.service").count("agent-protocol-forwarder standin v1: listening")
    try:
        vm.podman("kill", "--signal", "KILL", name)
        st = wait_status(vm, lambda s: component(s, name)["state"] == "failed", 60, "the forwarder refused")
        assert "do not match its config's diff IDs" in component(st, name)["last_error"]
        journal = vm.journal("podvm-bootstrap.service")
        assert f"{name}: image does not verify, its process is not started" in journal
        wait_until(lambda: vm.systemctl("is-active", f"{name}.service", check=False).stdout.strip()
                   in ("inactive", "failed"), 60, "the daemon to stop the unit")
        unit_log = vm.journal(f"{name}.service")
        assert "podvm-gate: not released" in unit_log            # the container came, its gate stayed shut
        assert unit_log.count("agent-protocol-forwarder standin v1: listening") == runs_before
        assert name not in containers(vm)
        assert component(status(vm), "kata-agent")["state"] == "ready"
    finally:
        host_index.write_bytes(original)
    vm.systemctl("restart", "podvm-bootstrap.service")
    wait_status(vm, all_ready, 90, "the restored store runs again")
