"""The daemon in a booted pod VM with a variant manifest: a layer of two
components started together, an override that cannot be pulled (falls back to
the default), and an essential component that crash-loops (reported; the
daemon stays up). Helpers are shared with test_e2e_runtime.py."""

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
    daemon_journal,
    daemon_pid,
    daemon_status_text,
    first,
    userdata,
    wait_status,
)

pytestmark = pytest.mark.vm


def variant_components(podvm_image: Any) -> str:
    manifest = bed_components(podvm_image)
    comps = manifest["components"]
    # kata-agent and the forwarder both need only the attestation-agent: one layer, started together.
    comps["agent-protocol-forwarder"]["after"] = ["attestation-agent"]
    comps["kata-agent"]["after"] = ["attestation-agent"]
    comps["agent-protocol-forwarder"]["container"]["command"] = [
        "agent-protocol-forwarder", "--requires", "/run/peerpod/apf.json"]
    # kata-agent can be told to crash from the VM (its control dir is shared).
    comps["kata-agent"]["container"]["volumes"].append("/run/standin:/run/standin")
    comps["kata-agent"]["restart"] = {"delay": "500ms", "max_delay": "2s"}
    return yaml.safe_dump(manifest, sort_keys=False)


@pytest.fixture(scope="module")
def variant_vm(podvm_image: Any, bed_registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodVM]:
    missing = "quay.io/confidential-containers/agent-protocol-forwarder@sha256:" + "9" * 64
    files = {"/etc/podvm-bootstrap/bootstrap.yaml": bootstrap_yaml(
                 podvm_image, pull_retries=1, pull_backoff="100ms", pull_backoff_max="200ms",
                 crash_loop_restarts=3, crash_loop_window="5m"),
             "/etc/podvm-bootstrap/components.yaml": variant_components(podvm_image)}
    with booted(podvm_image, tmp_path_factory.mktemp("rt-variant") / "vm", registry=bed_registry, wait="started",
                userdata=userdata(missing), files=files) as v:
        yield v


def test_a_layer_starts_together_after_its_dependency_and_a_failed_override_falls_back(
        variant_vm: PodVM, podvm_image: Any, request: pytest.FixtureRequest) -> None:
    vm = variant_vm
    request.node._podvm_vms = [vm]
    st = wait_status(vm, all_ready, 120, "every component ready")
    lines = daemon_journal(vm)
    aa_ready = first(lines, r"^attestation-agent: ready probe passed")
    # Every container is set up at once; the gates of a layer are opened together.
    kata_start = first(lines, r"^kata-agent: opening its gate \(dependencies ready\)")
    apf_start = first(lines, r"^agent-protocol-forwarder: opening its gate \(dependencies ready\)")
    kata_ready = first(lines, r"^kata-agent: ready probe passed")
    apf_ready = first(lines, r"^agent-protocol-forwarder: ready probe passed")
    assert aa_ready[1] <= kata_start[1] and aa_ready[1] <= apf_start[1]
    # Both opened before either was ready: concurrently, not one after the other.
    assert max(kata_start[1], apf_start[1]) <= min(kata_ready[1], apf_ready[1])
    assert max(kata_start[0], apf_start[0]) < min(kata_ready[0], apf_ready[0])
    apf = component(st, "agent-protocol-forwarder")
    assert apf["source"] == "default" and apf["digest"] == podvm_image.default_digests["agent-protocol-forwarder"]
    assert apf["override"]["accepted"] is False and "image unusable" in apf["override"]["reason"]
    first(lines, r"^agent-protocol-forwarder: override quay\.io/\S+@sha256:9+ unusable .*falling back to the default")


def test_crash_looping_essential_component_is_reported_and_the_daemon_stays_up(
        variant_vm: PodVM, request: pytest.FixtureRequest) -> None:
    vm = variant_vm
    request.node._podvm_vms = [vm]
    wait_status(vm, all_ready, 120, "every component ready")
    pid = daemon_pid(vm)
    vm.run("mkdir -p /run/standin && touch /run/standin/kata-agent.crash")
    st = wait_status(vm, lambda s: component(s, "kata-agent")["state"] == "crash-loop", 120, "kata-agent crash-loop")
    kata = component(st, "kata-agent")
    assert kata["crash_loop"] is True and kata["restarts"] >= 3 and st["ok"] is False
    assert vm.run(["podvm-bootstrap", "status"], check=False).returncode == 1
    wait_until(lambda: "kata-agent crash-loop" in daemon_status_text(vm), 30, "STATUS= to report the crash loop")
    assert daemon_pid(vm) == pid
    assert vm.systemctl("is-active", "podvm-bootstrap.service", check=False).stdout.strip() == "active"
    # It is still retried: once the cause is gone it comes back.
    vm.run(["rm", "-f", "/run/standin/kata-agent.crash"])
    wait_status(vm, lambda s: component(s, "kata-agent")["state"] == "ready", 120, "kata-agent back")
    assert daemon_pid(vm) == pid
