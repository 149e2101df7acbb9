"""In the booted pod VM (real systemd, real podman, the image's prefetched
stand-ins): today's five-component peer-pods chain starts in its order, and a
baked `tee:` runs the attestation agent's variant for that TEE (its stand-in
says which it is), whatever user-data says."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
import yaml

from tests.bed.userdata import MINIMAL_USERDATA
from tests.bed.vm import PodVM
from tests.standins import images as standins
from tests.test_e2e_runtime import baked, daemon_journal, first, wait_status

pytestmark = pytest.mark.vm

CHAIN = ("attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder", "api-server-rest")
AA = "attestation-agent"
AA_SOCKET = "/run/confidential-containers/attestation-agent/attestation-agent.sock"


def all_ready(st: dict) -> bool:
    return len(st["components"]) == len(CHAIN) and all(
        c["state"] == "ready" and c["active_state"] == "active" for c in st["components"])


def bootstrap_with_tee(podvm_image: Any, tee: str) -> str:
    settings = baked(podvm_image, "/etc/podvm-bootstrap/bootstrap.yaml")
    settings.setdefault("userdata", {}).update({"provider": "file", "timeout": "20s"})
    settings["tee"] = tee
    return yaml.safe_dump(settings)


def version_of(vm: PodVM, name: str) -> str:
    """What the running container's stand-in says it is."""
    return vm.podman("exec", name, name, "--version").stdout.strip()


def test_the_five_component_chain_starts_in_order(boot_pod_vm, podvm_image, standin_images) -> None:
    vm = boot_pod_vm(userdata=MINIMAL_USERDATA, wait="started")
    st = wait_status(vm, all_ready, 180, "the five components ready")
    assert [c["name"] for c in st["components"]] == list(CHAIN)
    assert st["ok"] is True and st["daemon"]["ready"] is True
    for c in st["components"]:
        assert c["source"] == "default" and c["variant"] is None
        assert c["digest"] == podvm_image.default_digests[c["name"]]
    plan = json.loads(vm.read_file("/run/podvm-bootstrap/plan.json"))
    assert plan["start_order"] == [[name] for name in CHAIN]
    assert plan["tee"] == st["tee"] == "none"  # an nspawn VM on this machine is no TEE
    # the journal: each component is ready only after the one before it ...
    lines = daemon_journal(vm)
    ready = [first(lines, rf"^{name}: ready probe passed") for name in CHAIN]
    assert ready == sorted(ready), ready  # (journal line, monotonic time) pairs, in chain order
    # ... and none ran before what it needs: the stand-ins of the data hub, the
    # forwarder and api-server-rest refuse to start without the socket of the
    # one before them, which would show as a restart
    assert all(c["restarts"] == 0 for c in st["components"]), st["components"]
    first(lines, r"^TEE: none \(")
    # each answers at its interface, as the real one would
    for name in CHAIN:
        assert version_of(vm, name) == f"{name} standin v1"
    assert vm.podman("exec", "confidential-data-hub", "standin", "probe", "unix",
                     "/run/confidential-containers/cdh.sock").stdout == "confidential-data-hub standin v1\n"
    http = vm.run(["python3", "-c", "import urllib.request as u; r = u.urlopen("
                   "'http://127.0.0.1:8006/cdh/resource/default/key/1', timeout=10); "
                   "print(r.status, r.read().decode())"])
    assert http.stdout.split() == ["200", "api-server-rest", "standin", "v1"]
    # every TEE variant of the baked manifest is prefetched, pinned to its stand-in's digest
    variants = yaml.safe_load(vm.read_file("/etc/podvm-bootstrap/components.yaml"))["components"][AA]["variants"]
    assert sorted(variants) == sorted(standins.AA_TEE_VARIANTS)
    for tee, entry in variants.items():
        assert entry["image"].endswith("@" + standin_images[(AA, tee)].digest)
        assert "container" not in entry  # the test bed drops the TEE devices: none exists in a test VM
        assert vm.podman("image", "exists", entry["image"], check=False).returncode == 0, entry["image"]
    # the adaptor side can tell which daemon and which manifest this image carries
    manifest = vm.read_file("/etc/podvm-bootstrap/components.yaml")
    version = vm.run(["podvm-bootstrap", "--version"]).stdout.split()
    assert version[2:] == ["manifest", "sha256:" + hashlib.sha256(manifest).hexdigest()]
    assert version[1] == st["version"] == plan["version"]


def test_a_baked_tee_runs_its_attestation_agent_variant_and_user_data_cannot_choose(
        boot_pod_vm, podvm_image, standin_images) -> None:
    userdata = MINIMAL_USERDATA + "tee: az-snp-vtpm\n"  # untrusted: ignored
    vm = boot_pod_vm(userdata=userdata, wait="started",
                     files={"/etc/podvm-bootstrap/bootstrap.yaml": bootstrap_with_tee(podvm_image, "tdx")})
    st = wait_status(vm, all_ready, 180, "the five components ready")
    assert st["tee"] == "tdx"
    tdx = standin_images[(AA, "tdx")]
    aa = next(c for c in st["components"] if c["name"] == AA)
    assert (aa["source"], aa["variant"], aa["digest"]) == ("variant", "tdx", tdx.digest)
    assert aa["image"] == f"quay.io/{tdx.repository}@{tdx.digest}"
    # the container runs the tdx build: it says so on its socket and to --version
    assert version_of(vm, AA) == tdx.version_line == "attestation-agent standin v1 tdx"
    assert vm.podman("exec", AA, "standin", "probe", "unix", AA_SOCKET).stdout == tdx.version_line + "\n"
    for c in st["components"]:
        if c["name"] != AA:
            assert c["source"] == "default" and c["variant"] is None
            assert version_of(vm, c["name"]) == f"{c['name']} standin v1"
    journal = vm.journal("podvm-bootstrap.service")
    assert "TEE: tdx (bootstrap.yaml tee: tdx)" in journal
    assert "user-data: tee ignored" in journal
    assert re.search(rf"attestation-agent: tdx variant, image quay\.io/\S+@{tdx.digest} \(variant\)", journal)
    unit = vm.read_file("/run/systemd/system/attestation-agent.service").decode()
    assert "# Image source: variant (tdx)" in unit and tdx.digest in unit
    verify = vm.run(["podvm-bootstrap", "verify"]).stdout
    assert f"ok attestation-agent quay.io/{tdx.repository}@{tdx.digest}" in verify
    human = vm.run(["podvm-bootstrap", "status"]).stdout
    assert "variant (tdx)" in human and "tee: tdx" in human
