"""End to end in the booted pod VM: what untrusted or missing user-data does
to a boot. A refused override runs the baked default and says why (status and
journal); a metadata service that is down still boots the defaults once the
user-data timeout has passed; an override from a password-protected registry
is pulled with the auth.json that user-data provisions, and without it falls
back to the verified default."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.bed.userdata import cloud_config
from tests.test_e2e_runtime import all_ready, bed_components, component, wait_status

pytestmark = pytest.mark.vm

APF = "agent-protocol-forwarder"
KATA = "kata-agent"

# Overrides are allowed for both, but only from their own repositories.
POLICY = """\
version: 1
mutable_tags: false
on_rejected_override: use-default
components:
  agent-protocol-forwarder:
    repositories: [quay.io/confidential-containers/agent-protocol-forwarder]
  kata-agent:
    repositories: [quay.io/confidential-containers/kata-agent]
"""


def container_image(vm: Any, name: str) -> str:
    return vm.podman("container", "inspect", "--format", "{{.ImageName}}", name).stdout.strip()


def test_refused_overrides_run_the_defaults_and_say_why(podvm_image: Any, boot_pod_vm: Any) -> None:
    kata_digest = podvm_image.default_digests[KATA]
    requested = {
        APF: "quay.io/confidential-containers/agent-protocol-forwarder:v2",       # a tag, no digest
        KATA: f"quay.io/confidential-containers-evil/kata-agent@{kata_digest}",  # a foreign repository
    }
    vm = boot_pod_vm(userdata=cloud_config(images=requested),
                     files={"/etc/podvm-bootstrap/policy.yaml": POLICY})
    st = wait_status(vm, all_ready, 120, "every component ready")

    for name, why in ((APF, "digest"), (KATA, "repositor")):
        entry = component(st, name)
        assert entry["source"] == "default", entry
        assert entry["override"]["requested"] == requested[name]
        assert entry["override"]["accepted"] is False
        assert why in entry["override"]["reason"], entry["override"]
        assert container_image(vm, name) == podvm_image.defaults[name]

    journal = vm.journal("podvm-bootstrap.service")
    for name in (APF, KATA):
        assert f"override for {name} refused" in journal, journal[-3000:]


def test_metadata_service_down_still_boots_the_defaults(podvm_image: Any, boot_pod_vm: Any) -> None:
    # Without user-data there is no aa.toml: run the attestation-agent
    # stand-in without its config (it only checks a config it is given).
    manifest = bed_components(podvm_image)
    manifest["components"]["attestation-agent"]["container"]["command"] = ["attestation-agent"]
    # The bed points every metadata endpoint at 127.0.0.1:9, where nothing listens.
    vm = boot_pod_vm(provider="aws", userdata_timeout="5s",
                     files={"/etc/podvm-bootstrap/components.yaml": yaml.safe_dump(manifest, sort_keys=False)})
    st = wait_status(vm, all_ready, 120, "every component ready")

    for name, image in podvm_image.defaults.items():
        assert component(st, name)["source"] == "default"
        assert container_image(vm, name) == image
    journal = vm.journal("podvm-bootstrap.service")
    assert "user-data ignored" in journal and "aws" in journal, journal[-3000:]
    assert vm.run(["test", "-e", "/run/peerpod/apf.json"], check=False).returncode == 1


def auth_policy(registry_host: str) -> str:
    return ("version: 1\nmutable_tags: false\non_rejected_override: use-default\ncomponents:\n"
            f"  agent-protocol-forwarder:\n    repositories: [{registry_host}/confidential-containers/*]\n")


@pytest.mark.parametrize("with_auth", [True, False], ids=["auth.json", "no-auth.json"])
def test_override_from_a_password_protected_registry_needs_auth_json(
        podvm_image: Any, boot_pod_vm: Any, auth_registry: Any, standin_images: Any, with_auth: bool) -> None:
    v2 = standin_images[(APF, "v2")]
    ref = f"{auth_registry.host}/confidential-containers/{APF}@{v2.digest}"
    files = {"/run/peerpod/auth.json": json.dumps(auth_registry.auth_json())} if with_auth else {}
    vm = boot_pod_vm(userdata=cloud_config(images={APF: ref}, files=files),
                     insecure_registries=[auth_registry.host],
                     files={"/etc/podvm-bootstrap/policy.yaml": auth_policy(auth_registry.host)})
    st = wait_status(vm, all_ready, 180, "every component ready")
    entry = component(st, APF)
    if with_auth:
        assert entry["source"] == "override", entry
        assert container_image(vm, APF) == ref
        assert vm.podman("exec", APF, APF, "--version").stdout.strip().endswith("v2")
    else:
        # The pull is refused (401): the verified default runs, and says why.
        assert entry["source"] == "default", entry
        assert container_image(vm, APF) == podvm_image.defaults[APF]
        journal = vm.journal("podvm-bootstrap.service")
        assert f"override {ref} unusable" in journal, journal[-3000:]
