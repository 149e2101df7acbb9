"""Signed component images in the booted pod VM (tests/bed): the image bakes
the test bed's release key and a policy that requires its signature for every
component; the stand-ins were signed at image build and their signatures
prefetched. Overrides are pushed to the loopback registry with cosign-format
signatures (tests/bed/cosign.py) and pulled by the VM's real podman with the
baked registries.d file. Each kind of bad signature is refused with its
reason while the verified default runs (the override is refused, a default
recorded in the boot's launch set runs on: daemon re-runs in one boot); a
byte flipped in a default's stored signature fails that component. A signed
override running, then refused its next start once a byte of its stored
signature is flipped, needs a boot that has it from the start:
test_e2e_runtime_early.py. Tests run in file order on one VM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from podvm_bootstrap.images.storage import big_data_path
from tests import test_e2e_runtime
from tests.bed import cosign
from tests.bed.cosign import SignatureLayer, SigningKey, payload_for
from tests.bed.keys import release_key
from tests.bed.vm import PodVM
from tests.test_e2e_runtime import all_ready, component, containers, status, userdata, wait_status

pytestmark = pytest.mark.vm

APF = "agent-protocol-forwarder"
NAMES = ("attestation-agent", "kata-agent", APF)
REPO = f"confidential-containers/{APF}"      # in the loopback registry
NAME = f"quay.io/{REPO}"                     # what the VM pulls (through its mirror) and what is signed


# One booted VM per module, running the image's own manifest: test_e2e_runtime's fixtures.
vm = test_e2e_runtime.vm
ready_vm = test_e2e_runtime.ready_vm


def rerun_with(vm: PodVM, override: str | None) -> dict:
    """New user-data, the daemon restarted (a new boot's run), its status once it is READY."""
    vm.write_file("/media/cidata/user-data", userdata(override))
    # Many re-runs in a row would hit the unit's start rate limit (5 in 10 s).
    vm.systemctl("reset-failed", "podvm-bootstrap.service", check=False)
    vm.systemctl("restart", "podvm-bootstrap.service")  # returns once the new daemon is READY
    pid = int(vm.systemctl("show", "-P", "MainPID", "podvm-bootstrap.service").stdout.strip())
    return wait_status(vm, lambda s: s["daemon"]["pid"] == pid and all_ready(s), 90, "the re-run daemon ready")


def running_version(vm: PodVM) -> str:
    return vm.podman("exec", APF, APF, "--version").stdout.strip()


def stored_signature_path(vm: PodVM, image: str) -> str:
    """Where the VM keeps the image's signature item: podman's own store (a
    pulled override) or the image build's read-only store (a baked default)."""
    image_id = vm.podman("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
    digest_hex = image.split("@sha256:", 1)[1]
    for store in ("/var/lib/containers/storage", "/usr/share/containers/storage"):
        path = str(big_data_path(Path(store) / "vfs-images" / image_id, f"signature-{digest_hex}"))
        if vm.run(["test", "-e", path], check=False).returncode == 0:
            return path
    raise AssertionError(f"no stored signature of {image} in the VM")


def flip_a_signed_byte(vm: PodVM, image: str) -> None:
    """Change one character of the stored payload's base64: still well-formed,
    no longer the bytes that were signed. Written from the host through the
    VM's root mount: inside the VM the baked store is mounted read-only, and
    the tampering stands for what the block layer would otherwise stop."""
    path = stored_signature_path(vm, image)
    data = bytearray(vm.read_file(path))
    at = data.index(b'"payload":"') + len(b'"payload":"') + 20
    data[at] = ord("A") if data[at] != ord("A") else ord("B")
    (vm.merged / path.lstrip("/")).write_bytes(bytes(data))


def test_baked_defaults_are_verified_with_the_baked_key(ready_vm: PodVM, podvm_image: Any) -> None:
    vm = ready_vm
    st = status(vm)
    for name in NAMES:
        c = component(st, name)
        assert c["source"] == "default" and c["digest"] == podvm_image.default_digests[name]
        assert c["signature"] == {"key": "release"}, c
    plan = json.loads(vm.read_file("/run/podvm-bootstrap/plan.json"))
    assert {c["name"]: c["signed_by"] for c in plan["components"]} == {n: ["release"] for n in podvm_image.defaults}
    out = vm.run(["podvm-bootstrap", "verify"])
    assert out.stdout.count(", signed by release)\n") == len(podvm_image.defaults), out.stdout
    assert "SIGNED-BY" in vm.run(["podvm-bootstrap", "status"]).stdout
    journal = vm.journal("podvm-bootstrap.service")
    for name in NAMES:
        assert f"{name}: image {podvm_image.defaults[name]} verified (default, signed by release)" in journal


BAD_KINDS = [
    ("no signature", "no signature"),
    ("unknown key", "not signed by any key the policy trusts for it (release)"),
    ("other digest", "signed for another digest"),
    ("other repository", "signed for another repository (quay.io/confidential-containers/kata-agent)"),
    ("payload not JSON", "signed payload is not JSON"),
    ("wrong critical.type", "critical.type"),
    ("no signature annotation", "malformed signature: no dev.cosignproject.cosign/signature annotation"),
]


def push_badly_signed(registry: Any, standin_images: Any, kind: str) -> str:
    """A new image (the v2 stand-in's content, its own digest) in the
    forwarder's repository, with the bad signature `kind`; its reference."""
    v2 = standin_images[(APF, "v2")]
    digest = cosign.push_unsigned_copy(registry.host, REPO, v2.digest, kind.replace(" ", "-").replace(".", "-"),
                                       kind)
    release, stranger = release_key(), SigningKey.generate("stranger")
    good = payload_for(NAME, digest)
    layers = {
        "no signature": [],
        "unknown key": [stranger.sign_payload(good)],
        "other digest": [release.sign_payload(payload_for(NAME, v2.digest))],
        "other repository": [release.sign_payload(payload_for("quay.io/confidential-containers/kata-agent", digest))],
        "payload not JSON": [release.sign_payload(b"not JSON")],
        "wrong critical.type": [release.sign_payload(payload_for(NAME, digest, kind="atomic container signature"))],
        "no signature annotation": [SignatureLayer(good, "", {"note": "no signature"})],
    }[kind]
    if kind == "no signature annotation":
        manifest = json.loads(cosign.signature_manifest(registry.host, REPO, layers))
        del manifest["layers"][0]["annotations"][cosign.SIGNATURE_ANNOTATION]
        cosign.push_raw_signature_manifest(registry.host, REPO, digest, json.dumps(manifest).encode())
    elif layers:
        cosign.push_signatures(registry.host, REPO, digest, layers)
    return f"{NAME}@{digest}"


def test_each_kind_of_bad_signature_is_refused_with_its_reason_and_the_default_runs(
        ready_vm: PodVM, bed_registry: Any, standin_images: Any, podvm_image: Any) -> None:
    vm = ready_vm
    for kind, words in BAD_KINDS:
        override = push_badly_signed(bed_registry, standin_images, kind)
        st = rerun_with(vm, override)
        apf = component(st, APF)
        assert apf["source"] == "default" and apf["image"] == podvm_image.defaults[APF], (kind, apf)
        assert apf["signature"] == {"key": "release"}
        assert apf["override"]["requested"] == override and apf["override"]["accepted"] is False, (kind, apf)
        assert words in apf["override"]["reason"] and "refused" in apf["override"]["reason"], (kind, apf)
        assert running_version(vm) == f"{APF} standin v1", kind
        journal = vm.journal("podvm-bootstrap.service")
        assert f"{APF}: override {override} unusable" in journal and words in journal, (kind, journal[-2000:])


def test_under_a_fail_policy_an_unsigned_override_fails_its_component(
        ready_vm: PodVM, bed_registry: Any, standin_images: Any) -> None:
    vm = ready_vm
    baked = vm.read_file("/etc/podvm-bootstrap/policy.yaml").decode()
    policy = yaml.safe_load(baked)
    policy["on_rejected_override"] = "fail"
    vm.write_file("/etc/podvm-bootstrap/policy.yaml", yaml.safe_dump(policy))
    try:
        override = push_badly_signed(bed_registry, standin_images, "no signature")
        vm.write_file("/media/cidata/user-data", userdata(override))
        vm.systemctl("reset-failed", "podvm-bootstrap.service", check=False)
        vm.systemctl("restart", "podvm-bootstrap.service")
        st = wait_status(vm, lambda s: component(s, APF)["state"] == "failed"
                         and component(s, "kata-agent")["state"] == "ready", 90, "the forwarder failed")
        error = component(st, APF)["last_error"]
        assert "the policy says fail" in error and "no signature" in error, error
        assert APF not in containers(vm)
    finally:
        vm.write_file("/etc/podvm-bootstrap/policy.yaml", baked)
    assert component(rerun_with(vm, None), APF)["source"] == "default"


def test_default_without_a_valid_signature_is_that_components_error_and_the_rest_runs(
        vm: PodVM, podvm_image: Any, request: pytest.FixtureRequest) -> None:
    request.node._podvm_vms = [vm]
    flip_a_signed_byte(vm, podvm_image.defaults[APF])
    vm.write_file("/media/cidata/user-data", userdata())
    vm.systemctl("reset-failed", "podvm-bootstrap.service", check=False)
    vm.systemctl("restart", "podvm-bootstrap.service")
    pid = int(vm.systemctl("show", "-P", "MainPID", "podvm-bootstrap.service").stdout.strip())
    st = wait_status(vm, lambda s: s["daemon"]["pid"] == pid and component(s, "kata-agent")["state"] == "ready"
                     and component(s, APF)["state"] == "failed", 90, "the forwarder failed, the others ready")
    apf = component(st, APF)
    assert "signature" in apf["last_error"] and "not signed by any key" in apf["last_error"], apf
    assert apf["signature"] is None
    assert vm.run(["test", "-e", f"/run/systemd/system/{APF}.service"], check=False).returncode == 1
    assert APF not in containers(vm)
    assert component(st, "attestation-agent")["state"] == "ready"
