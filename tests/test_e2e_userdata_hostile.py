"""End to end in the booted pod VM, on the image's own HTTP stack (Debian's
python3-requests with urllib3 1.26): a hostile metadata service (a raw-socket
server on 127.0.0.1, shared with the VM) costs the boot at most the user-data
timeout and one error line; the baked defaults come up."""

from __future__ import annotations

import gzip
from typing import Any

import pytest
import yaml

from tests.bed.vm import BOOTSTRAP_YAML
from tests.fakes.metadata import drip, head, running_raw_server, send_then_close
from tests.test_e2e_runtime import all_ready, baked, bed_components, component, wait_status

pytestmark = pytest.mark.vm

STACKED = gzip.compress(gzip.compress(b"#cloud-config\n" + b"#" * (64 * 1024 * 1024), 9), 9)
ANSWERS = {
    "headers that never end": (drip(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a"), "cut at the deadline"),
    "stacked gzip encoding": (send_then_close(head(headers={"Content-Encoding": "gzip, gzip",
                                                            "Content-Length": str(len(STACKED))}) + STACKED),
                              "has Content-Encoding 'gzip, gzip'"),
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_a_hostile_metadata_service_costs_one_error_line_and_the_defaults_run(
        podvm_image: Any, boot_pod_vm: Any, name: str) -> None:
    answer, reason = ANSWERS[name]
    # Without user-data there is no aa.toml: run the attestation-agent
    # stand-in without its config (it only checks a config it is given).
    manifest = bed_components(podvm_image)
    manifest["components"]["attestation-agent"]["container"]["command"] = ["attestation-agent"]
    with running_raw_server(answer) as server:
        settings = baked(podvm_image, BOOTSTRAP_YAML)
        settings["userdata"].update({"provider": "alibaba", "timeout": "3s"})
        settings["userdata"]["endpoints"]["alibaba"] = server.url
        vm = boot_pod_vm(files={BOOTSTRAP_YAML: yaml.safe_dump(settings, sort_keys=False),
                                "/etc/podvm-bootstrap/components.yaml": yaml.safe_dump(manifest, sort_keys=False)})
        st = wait_status(vm, all_ready, 120, "every component ready")
    for image_name in podvm_image.defaults:
        assert component(st, image_name)["source"] == "default"
    journal = vm.journal("podvm-bootstrap.service")
    ignored = [line for line in journal.splitlines() if "user-data ignored" in line]
    assert len(ignored) == 1 and reason in ignored[0], journal[-3000:]
    assert "Traceback" not in journal
    assert server.connections >= 1
