"""The loopback registry of the test bed: real pushes, digests, auth, stop by PID."""

from __future__ import annotations

import json
import subprocess

from tests.bed.proc import port_open
from tests.bed.registry import running_registry


def skopeo_digest(ref: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["skopeo", "inspect", "--tls-verify=false", *extra, "--format", "{{.Digest}}",
                           f"docker://{ref}"], capture_output=True, text=True, timeout=60)


def test_stand_ins_are_served_by_digest(bed_registry, standin_images):
    for (component, variant), image in standin_images.items():
        if variant == "padded":
            continue
        ref = f"{bed_registry.host}/confidential-containers/{component}@{image.digest}"
        out = skopeo_digest(ref)
        assert (out.returncode, out.stdout.strip()) == (0, image.digest), out.stderr
    assert bed_registry.host.startswith("127.0.0.1:")


def test_padded_stand_in_can_be_pushed_on_demand(bed_registry, standin_images):
    padded = standin_images[("agent-protocol-forwarder", "padded")]
    assert bed_registry.push_standin(padded) == padded.digest
    assert bed_registry.has_manifest(padded.repository, padded.digest)
    assert not bed_registry.has_manifest(padded.repository, "sha256:" + "0" * 64)


def test_auth_registry_requires_the_password(auth_registry, standin_images, tmp_path):
    image = standin_images[("kata-agent", "v1")]
    ref = f"{auth_registry.host}/{image.repository}@{image.digest}"
    anonymous = skopeo_digest(ref)
    assert anonymous.returncode != 0
    assert "unauthorized" in anonymous.stderr or "authentication required" in anonymous.stderr
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps(auth_registry.auth_json()))
    logged_in = skopeo_digest(ref, f"--authfile={authfile}")
    assert (logged_in.returncode, logged_in.stdout.strip()) == (0, image.digest), logged_in.stderr


def test_registry_stops_by_its_pid(tmp_path):
    with running_registry(tmp_path / "reg") as registry:
        assert port_open(registry.port)
        pid = registry.pid
    assert registry.service.popen.returncode is not None
    assert not port_open(registry.port)
    assert pid == registry.service.popen.pid
