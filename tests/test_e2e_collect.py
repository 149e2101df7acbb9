"""`podvm-bootstrap collect --output -` in a booted pod VM (tests/bed), the
way an operator gets a bundle over a serial line: base64 of it on stdout,
decoded on the host. The VM boots with user-data planting known secrets
(registry credentials, the forwarder's TLS key and certificates, aa.toml and
cdh.toml values, an initdata, a password in runcmd) and a measured launch on
the host's software TPM; one secret is also logged into the daemon's unit
journal. The bundle carries this boot's journal of the daemon and of the five
components, a status, plan and state that parse, the event log with its
replay, podman's view, the TPM's PCRs as the host reads them, and none of
the secrets."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml

from podvm_bootstrap.cli.collect import eventlog_path
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.settings import load_settings
from tests.planted_secrets import (
    AUTH_JSON,
    KBS_TOKEN,
    assert_manifest_tells_the_truth,
    assert_no_secret_in_bundle,
    bundle_members,
    sha256,
    userdata_text,
)
from tests.test_e2e_runtime import baked

pytestmark = pytest.mark.vm

NAMES = ("attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder", "api-server-rest")
BOOTSTRAP = "/etc/podvm-bootstrap/bootstrap.yaml"


def measured_bootstrap(podvm_image: Any, tcti: str) -> str:
    settings = baked(podvm_image, BOOTSTRAP)
    settings.setdefault("userdata", {}).update({"provider": "file", "timeout": "20s"})
    settings.setdefault("measure", {})["tpm"] = tcti
    return yaml.safe_dump(settings)


def test_collect_over_a_serial_line_carries_the_boot_and_no_secret(boot_pod_vm, podvm_image, swtpm, tmp_path):
    bootstrap = measured_bootstrap(podvm_image, swtpm.tcti)
    vm = boot_pod_vm(userdata=userdata_text(override=None), files={BOOTSTRAP: bootstrap})
    vm.wait_until(["podvm-bootstrap", "status"], 120, "every component ready")
    assert vm.read_file("/run/peerpod/auth.json") == AUTH_JSON
    # something in the daemon's unit journal that quotes a secret (logged as a root daemon would about the unit)
    fields = f"MESSAGE=attestation agent refused token {KBS_TOKEN}\\nOBJECT_SYSTEMD_UNIT=podvm-bootstrap.service\\n"
    vm.run(f"printf '{fields}' | logger --journald")
    vm.wait_until(f"journalctl -b -u podvm-bootstrap.service | grep -q {KBS_TOKEN}", 30, "the secret in the journal")

    out = vm.run("podvm-bootstrap collect --output - | base64 -w 76", timeout=150)
    bundle = base64.b64decode(out.stdout)
    assert_no_secret_in_bundle(bundle)
    members = bundle_members(bundle)
    parts = assert_manifest_tells_the_truth(members, out.stderr.encode())
    manifest = json.loads(members["MANIFEST.json"])
    print(f"collect: {len(bundle)} bytes, {manifest['elapsed_s']}s, parts not had:",
          {p["name"]: p["error"] for p in manifest["parts"] if "error" in p})

    # this boot's journal of the daemon and of each component's unit
    for unit in ("podvm-bootstrap.service", *(f"{n}.service" for n in NAMES)):
        journal = members[f"journal/{unit}.log"].decode()
        assert "error" not in parts[f"journal/{unit}.log"] and f"Started {unit}" in journal, unit
    daemon_journal = members["journal/podvm-bootstrap.service.log"].decode()
    assert "attestation agent refused token <redacted>" in daemon_journal
    assert parts["journal/podvm-bootstrap.service.log"]["scrubbed"] == 1

    status = json.loads(members["status.json"])
    assert status["ok"] is True and [c["name"] for c in status["components"]] == list(NAMES)
    plan = json.loads(members["state/plan.json"])
    assert sorted(c["name"] for c in plan["components"]) == sorted(NAMES)
    state = json.loads(members["state/state.json"])
    assert set(state["components"]) == set(NAMES)
    assert members["version.txt"].decode().startswith("podvm-bootstrap ")
    for name in NAMES:
        assert members[f"units/{name}.service"] == vm.read_file(f"/run/systemd/system/{name}.service")

    # the event log as the VM keeps it, and the replay `measurements` gives in the VM
    settings_file = tmp_path / "bootstrap.yaml"
    settings_file.write_text(bootstrap)
    log = eventlog_path(Paths.build(), load_settings(settings_file))
    assert members["eventlog/eventlog"] == vm.read_file(str(log))
    direct = vm.run(["podvm-bootstrap", "measurements"], check=False)
    assert members["eventlog/replay.txt"].decode() == direct.stdout
    json.loads(members["eventlog/replay.json"])

    # podman's view of the components and their images
    ps = members["podman/ps.txt"].decode()
    assert all(name in ps for name in NAMES)
    inspected = json.loads(members["podman/inspect.json"])
    assert sorted(i["Id"] for i in inspected) == sorted(
        vm.podman("image", "inspect", "--format", "{{.Id}}", *(c["image"] for c in plan["components"])).stdout.split())

    # TEE and TPM: what the plan says, the TPM measure.tpm names, its PCRs as the host reads them
    tee = json.loads(members["tee.json"])
    assert tee["tee"]["plan"] == plan["tee"] and tee["tpm"]["used"] == swtpm.tcti
    pcrs = members["tpm/pcrs.txt"].decode()
    assert f"23: 0x{swtpm.pcrread(23).hex().upper()}" in pcrs

    # the secret-bearing files: named, with the size and digest of what the VM holds
    redacted = {f["file"]: f for f in json.loads(members["redacted.json"])["files"]}
    for path in ("/run/peerpod/auth.json", "/run/peerpod/apf.json", "/run/peerpod/aa.toml", "/run/peerpod/cdh.toml",
                 "/run/peerpod/initdata", "/run/podvm-bootstrap/user-data"):
        data = vm.read_file(path)
        assert (redacted[path]["size"], redacted[path]["sha256"]) == (len(data), sha256(data)), path
