"""Test bed VMs booted per test (boot_pod_vm): files and user-data placed
before boot, the metadata service, pristine boots, teardown."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.bed.proc import BedError
from tests.bed.userdata import MINIMAL_USERDATA, cloud_config

pytestmark = pytest.mark.vm


def test_files_and_userdata_are_placed_before_boot(podvm_image, boot_pod_vm):
    vm = boot_pod_vm(userdata="#cloud-config\nwrite_files: []\n", files={"/etc/podvm-bed-marker": "x"},
                     wait="started")  # no aa.toml: attestation-agent cannot come up, nor the boot finish
    assert vm.read_file("/media/cidata/user-data") == b"#cloud-config\nwrite_files: []\n"
    assert vm.read_file("/etc/podvm-bed-marker") == b"x"
    settings = yaml.safe_load(vm.read_file("/etc/podvm-bootstrap/bootstrap.yaml"))
    assert settings["userdata"]["provider"] == "file"
    vm.write_file("/run/peerpod/apf.json", b"{}")
    assert vm.read_file("/run/peerpod/apf.json") == b"{}"


def test_metadata_boot_points_the_provider_at_loopback(boot_pod_vm):
    vm = boot_pod_vm(userdata=MINIMAL_USERDATA, metadata="aws")
    settings = yaml.safe_load(vm.read_file("/etc/podvm-bootstrap/bootstrap.yaml"))
    assert settings["userdata"]["provider"] == "aws"
    assert settings["userdata"]["endpoints"]["aws"] == vm.metadata_url
    assert vm.metadata_url.startswith("http://127.0.0.1:")
    for cloud, url in settings["userdata"]["endpoints"].items():
        assert url.startswith("http://127.0.0.1:"), (cloud, url)
    fetched = vm.run(["podvm-bootstrap", "userdata"], timeout=60)
    assert fetched.stdout == MINIMAL_USERDATA
    assert any(r.path == "/latest/user-data" for r in vm.metadata_server.requests)


def test_every_vm_is_pristine_and_torn_down(podvm_image, boot_pod_vm):
    first = boot_pod_vm(userdata=MINIMAL_USERDATA)
    first.write_file("/etc/left-behind", "x")
    pid1, merged = first.pid1, first.merged
    first.destroy()
    assert not Path(f"/proc/{pid1}").exists()
    assert not merged.exists()
    second = boot_pod_vm(userdata=MINIMAL_USERDATA)
    assert second.run(["test", "-e", "/etc/left-behind"], check=False).returncode == 1
    with pytest.raises(BedError):
        first.run(["true"])


def test_override_from_user_data_runs_the_v2_stand_in(boot_pod_vm, standin_images):
    v2 = standin_images[("agent-protocol-forwarder", "v2")]
    ref = f"quay.io/{v2.repository}@{v2.digest}"
    vm = boot_pod_vm(userdata=cloud_config(images={"agent-protocol-forwarder": ref}))
    answer = vm.run(["podman", "exec", "agent-protocol-forwarder", "standin", "probe", "tcp", "127.0.0.1:15150"])
    assert answer.stdout == "agent-protocol-forwarder standin v2\n"
