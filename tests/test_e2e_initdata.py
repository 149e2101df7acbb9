"""End to end in the booted pod VM: an override the pod's owner asks for in
the initdata ([data] "podvm-bootstrap.yaml", provisioned from the user-data's
write_files as the cloud-api-adaptor writes it) under a baked policy that
takes the forwarder's overrides only from the initdata (`override_from:
initdata`), its images still signed by the release key.

- asked in the initdata: accepted, pulled by digest, verified and running;
- the same image asked only in the user-data: refused, the default runs, and
  status and the journal say why and who asked;
- a malformed podvm-bootstrap.yaml: one error line, the defaults run.

One boot per scenario."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest
import yaml

from tests.bed.userdata import AA_TOML, cloud_config
from tests.test_e2e_runtime import all_ready, baked, component, wait_status
from tests.test_e2e_userdata import container_image

pytestmark = pytest.mark.vm

APF = "agent-protocol-forwarder"
POLICY_PATH = "/etc/podvm-bootstrap/policy.yaml"


def initdata(requests: str) -> str:
    """The initdata file's content as the adaptor writes it: base64 of gzipped
    TOML, with the pod's aa.toml and its image requests."""
    toml = (f'algorithm = "sha384"\nversion = "0.1.0"\n\n[data]\n"aa.toml" = \'\'\'\n{AA_TOML}\'\'\'\n'
            f"\"podvm-bootstrap.yaml\" = '''\n{requests}'''\n")
    return base64.b64encode(gzip.compress(toml.encode())).decode()


def initdata_only_policy(podvm_image: Any) -> str:
    """The image's baked policy (every image signed by the release key), with
    the forwarder's overrides allowed from its own repository, and only from
    the initdata."""
    policy = baked(podvm_image, POLICY_PATH)
    policy["components"][APF].update({"repositories": [f"quay.io/confidential-containers/{APF}"],
                                      "override_from": "initdata"})
    return yaml.safe_dump(policy, sort_keys=False)


def daemon_errors(vm: Any) -> list[str]:
    out = vm.run(["journalctl", "-u", "podvm-bootstrap.service", "-o", "json", "--no-pager"]).stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [str(e.get("MESSAGE")) for e in entries if e.get("PRIORITY") == "3"]


@pytest.mark.parametrize("asked_in", ["initdata", "user-data"])
def test_an_initdata_only_override_runs_when_the_initdata_asks_and_is_refused_from_user_data(
        podvm_image: Any, boot_pod_vm: Any, standin_images: Any, asked_in: str) -> None:
    v2 = standin_images[(APF, "v2")]
    requested = f"quay.io/confidential-containers/{APF}@{v2.digest}"
    if asked_in == "initdata":
        userdata = cloud_config(files={"/run/peerpod/initdata": initdata(f"images:\n  {APF}: {requested}\n")})
    else:
        userdata = cloud_config(images={APF: requested})
    vm = boot_pod_vm(userdata=userdata, files={POLICY_PATH: initdata_only_policy(podvm_image)})
    st = wait_status(vm, all_ready, 180, "every component ready")
    apf = component(st, APF)
    assert apf["override"]["requested"] == requested and apf["override"]["requested_by"] == asked_in, apf
    status_text = vm.run(["podvm-bootstrap", "status"]).stdout
    journal = vm.journal("podvm-bootstrap.service")
    if asked_in == "initdata":
        assert apf["source"] == "override" and apf["override"]["accepted"] is True, apf
        assert apf["signature"] == {"key": "release"}, apf
        assert container_image(vm, APF) == requested
        assert vm.podman("exec", APF, APF, "--version").stdout.strip() == v2.version_line
        assert "override from initdata" in status_text, status_text
        assert f"override for {APF} accepted (asked in the initdata)" in journal, journal[-3000:]
        # the initdata was provisioned as a whole: its aa.toml beside it, its digest for the binding
        assert vm.read_file("/run/peerpod/aa.toml").decode() == AA_TOML
        assert len(vm.read_file("/run/peerpod/initdata.digest")) == 96
    else:
        assert apf["source"] == "default" and apf["override"]["accepted"] is False, apf
        assert "override_from: initdata" in apf["override"]["reason"], apf
        assert container_image(vm, APF) == podvm_image.defaults[APF]
        assert f"refused override for {APF} (asked in the user-data)" in status_text, status_text
        assert any(f"override for {APF} refused: the policy takes overrides for {APF} only from the pod's initdata"
                   in line for line in daemon_errors(vm)), journal[-3000:]


def test_a_malformed_initdata_entry_is_one_error_line_and_the_defaults_run(
        podvm_image: Any, boot_pod_vm: Any) -> None:
    userdata = cloud_config(files={"/run/peerpod/initdata": initdata(f"images: [{APF}\n")})
    vm = boot_pod_vm(userdata=userdata, files={POLICY_PATH: initdata_only_policy(podvm_image)})
    st = wait_status(vm, all_ready, 180, "every component ready")
    for name, image in podvm_image.defaults.items():
        entry = component(st, name)
        assert entry["source"] == "default" and entry["override"] is None, entry
        assert container_image(vm, name) == image
    errors = daemon_errors(vm)
    about_initdata = [line for line in errors if "initdata" in line or "override" in line]
    assert len(about_initdata) == 1, errors
    assert "initdata podvm-bootstrap.yaml is not valid YAML: " in about_initdata[0], errors
    assert about_initdata[0].endswith("; the initdata asks for no override"), errors
    # the rest of the initdata is still provisioned
    assert vm.read_file("/run/peerpod/aa.toml").decode() == AA_TOML
