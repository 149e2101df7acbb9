"""The test bed's pod VM image is built the supported way (image/build.py:
`make deb` + apt-get + `podvm-bootstrap bake --store`); booted, its daemon
runs the defaults from the read-only store and verifies them there, while an
override is pulled into the writable store."""

from __future__ import annotations

import json

import pytest

from tests.bed.userdata import cloud_config

pytestmark = pytest.mark.vm

RO_STORE = "/usr/share/containers/storage"


def test_defaults_run_from_the_read_only_store_and_verify_there(boot_pod_vm, podvm_image, standin_images):
    v2 = standin_images[("agent-protocol-forwarder", "v2")]
    vm = boot_pod_vm(userdata=cloud_config(images={"agent-protocol-forwarder": f"quay.io/{v2.repository}@{v2.digest}"}))

    # the store of the defaults is mounted read-only, as under a dm-verity /usr
    assert "ro" in vm.run(["findmnt", "-no", "OPTIONS", RO_STORE]).stdout.strip().split(",")
    refused = vm.run(["touch", f"{RO_STORE}/probe"], check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr

    lock = json.loads(vm.read_file("/etc/podvm-bootstrap/components.lock.json"))["images"]
    defaults = [e for e in lock if e["variant"] is None]
    assert {e["component"]: e["reference"] for e in defaults} == {
        c: f"quay.io/confidential-containers/{c}:v1" for c in podvm_image.defaults}
    ids = {e["component"]: e["image_id"] for e in lock}  # variants too
    for image_id in ids.values():  # baked into the read-only store, not the writable one
        vm.run(["test", "-d", f"{RO_STORE}/vfs-images/{image_id}"])
        assert vm.run(["test", "-e", f"/var/lib/containers/storage/vfs-images/{image_id}"], check=False).returncode == 1

    status = json.loads(vm.run(["podvm-bootstrap", "status", "--json"]).stdout)
    by_name = {c["name"]: c for c in status["components"]}
    for component in ("attestation-agent", "kata-agent"):
        assert by_name[component]["state"] == "ready" and by_name[component]["source"] == "default"
    assert by_name["agent-protocol-forwarder"]["source"] == "override"
    assert by_name["agent-protocol-forwarder"]["digest"] == v2.digest

    # verify re-reads every running image where it lies: the defaults in the
    # read-only store, the override in the writable one
    verified = vm.run(["podvm-bootstrap", "verify"])
    assert verified.stdout.count("ok ") == len(podvm_image.defaults), verified.stdout
    assert "FAILED" not in verified.stdout
    v2_id = vm.podman("image", "inspect", "--format", "{{.Id}}", f"quay.io/{v2.repository}@{v2.digest}").stdout.strip()
    vm.run(["test", "-d", f"/var/lib/containers/storage/vfs-images/{v2_id}"])
