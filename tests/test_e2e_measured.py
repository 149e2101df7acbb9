"""Measured launch in the booted pod VM (tests/bed) with a software TPM on
127.0.0.1 (swtpm, the host's; the VM shares the network), read back on the
host with tpm2-tools: `plan --json` predicts PCR 8 (the initdata, here the
adaptor's placeholder) and PCR 23 (the launch set) before boot; the records in
/run/attestation-agent/eventlog are the predicted ones, replay to the PCR a
checked quote shows and name exactly the digests that run (the override as
`override`, requested by the user-data); the attestation agent's container
sees the same file; a crashed component and a SIGKILLed daemon measure
nothing twice; an edited, reordered or truncated copy does not verify; a TPM
that cannot be reached starts nothing; without a TPM the records are still
written and `status` says the launch is unmeasured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from podvm_bootstrap.attest.launch_set import read_launch
from podvm_bootstrap.attest.tcg_log import MalformedLog, parse_records, replay
from tests.bed.keys import copy_baked_keys
from tests.bed.proc import free_port
from tests.bed.userdata import cloud_config
from tests.test_e2e_runtime import all_ready, baked, component, daemon_pid, wait_status

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parent.parent
NAMES = ("attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder", "api-server-rest")
BOOTSTRAP = "/etc/podvm-bootstrap/bootstrap.yaml"
EVENTLOG = "/run/attestation-agent/eventlog"


def measured_bootstrap(podvm_image: Any, tpm: str) -> str:
    settings = baked(podvm_image, BOOTSTRAP)
    settings.setdefault("userdata", {}).update({"provider": "file", "timeout": "20s"})
    settings["measure"] = {"tpm": tpm, "pcr": 23, "initdata_pcr": 8}
    return yaml.safe_dump(settings)


def predict_on_host(podvm_image: Any, tmp_path: Path, bootstrap: str, userdata: str) -> dict:
    """`plan --json` on the host, before boot, from the image's baked files."""
    config = tmp_path / "config"
    config.mkdir()
    for name in ("components.yaml", "policy.yaml"):
        (config / name).write_text(yaml.safe_dump(baked(podvm_image, f"/etc/podvm-bootstrap/{name}")))
    (config / "bootstrap.yaml").write_text(bootstrap)
    (tmp_path / "user-data").write_text(userdata)
    (tmp_path / "root").mkdir()
    copy_baked_keys(podvm_image, tmp_path / "root")  # the policy's key files are under --root
    out = subprocess.run([sys.executable, "-m", "podvm_bootstrap", "--root", str(tmp_path / "root"),
                          "--config-dir", str(config), "plan", "--json", "--user-data", str(tmp_path / "user-data")],
                         cwd=REPO, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                                                    "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["measurement"]


def verifies(data: bytes, pcr: bytes) -> bool:
    """What a relying party checks of a copy of the records: every launch
    record's digest is its event's, the launch is complete, and the records
    replay to the quoted register."""
    try:
        log = parse_records(data)
        return read_launch(log, 23).complete and replay(log.records, 23) == pcr
    except MalformedLog:
        return False


def test_measured_launch_replays_to_the_tpm_and_survives_crashes(boot_pod_vm, podvm_image, standin_images, swtpm,
                                                                  tmp_path):
    v2 = standin_images[("agent-protocol-forwarder", "v2")].digest
    override = f"quay.io/confidential-containers/agent-protocol-forwarder@{v2}"
    userdata = cloud_config(images={"agent-protocol-forwarder": override})
    bootstrap = measured_bootstrap(podvm_image, swtpm.tcti)
    predicted = predict_on_host(podvm_image, tmp_path, bootstrap, userdata)
    assert swtpm.pcrread(23) == bytes(32) and swtpm.pcrread(8) == bytes(32)  # a fresh TPM

    vm = boot_pod_vm(userdata=userdata, files={BOOTSTRAP: bootstrap}, wait="started")
    st = wait_status(vm, all_ready, 120, "every component ready")

    pcr = swtpm.pcrread(23)
    assert "sha256:" + pcr.hex() == predicted["expected"]
    assert "sha256:" + swtpm.pcrread(8).hex() == predicted["initdata"]["expected"]   # the placeholder's digest
    assert swtpm.quoted_pcr(23) == pcr                      # what a relying party's quote shows
    data = vm.read_file(EVENTLOG)
    assert data.hex() == "".join(predicted["records"])
    assert verifies(data, pcr)
    launched = [c.content() for c in read_launch(parse_records(data), 23).components]
    assert [e["component"] for e in launched] == list(NAMES)
    for entry in launched:  # exactly what runs
        c = component(st, entry["component"])
        assert entry["digest"] == c["digest"] and entry["image"] == c["image"] and c["measured"] is True
        running = vm.podman("inspect", "--format", "{{.ImageDigest}}", entry["component"]).stdout.strip()
        assert running == entry["digest"]
    assert {e["component"]: e["source"] for e in launched} == {
        **{name: "default" for name in NAMES}, "agent-protocol-forwarder": "override"}
    apf = launched[NAMES.index("agent-protocol-forwarder")]
    assert apf["digest"] == v2 and apf["requested_by"] == "user-data"
    assert st["measurement"]["measured"] is True and st["measurement"]["tpm"] == swtpm.tcti
    assert st["measurement"]["initdata"]["bound"] is True
    # the attestation agent's container has the same directory, writable: it continues the same file
    listed = vm.podman("exec", "attestation-agent", "ls", "-ln", EVENTLOG).stdout.split()
    assert str(len(data)) in listed, listed
    vm.podman("exec", "attestation-agent", "touch", "/run/attestation-agent/written-by-the-agent")
    assert vm.read_file("/run/attestation-agent/written-by-the-agent") == b""

    # a crashed component comes back with the same digest: nothing measured again
    restarts = component(st, "agent-protocol-forwarder")["restarts"]
    vm.podman("kill", "--signal", "USR1", "agent-protocol-forwarder")
    wait_status(vm, lambda s: all_ready(s) and component(s, "agent-protocol-forwarder")["restarts"] > restarts,
                90, "the forwarder restarted")
    assert swtpm.pcrread(23) == pcr and vm.read_file(EVENTLOG) == data

    # a SIGKILLed daemon: systemd restarts it, it finds this boot's records and measures nothing twice
    pcr8 = swtpm.pcrread(8)
    before = daemon_pid(vm)
    vm.systemctl("kill", "--kill-who=main", "--signal=SIGKILL", "podvm-bootstrap.service")
    st = wait_status(vm, lambda s: all_ready(s) and s["daemon"]["pid"] not in (before, 0)
                     and s["daemon"]["pid"] == daemon_pid(vm) and s["daemon"]["ready"], 90, "the restarted daemon")
    assert swtpm.pcrread(23) == pcr and swtpm.pcrread(8) == pcr8 and vm.read_file(EVENTLOG) == data
    assert all(c["measured"] is True for c in st["components"])
    journal = vm.journal("podvm-bootstrap.service")
    assert "not measuring again" in journal and "already bound in PCR 8" in journal

    # a verifier's copy that was edited, reordered or truncated does not verify
    records = [bytes.fromhex(r) for r in predicted["records"]]
    v1 = standin_images[("agent-protocol-forwarder", "v1")].digest
    forged = {
        "edited": b"".join(records).replace(v2.encode(), v1.encode()),
        "reordered": b"".join([records[1], records[0], *records[2:]]),
        "truncated": b"".join(records[:-1]),
    }
    for name, copy in forged.items():
        assert not verifies(copy, pcr), name


def test_unreachable_tpm_starts_no_component(boot_pod_vm, podvm_image):
    vm = boot_pod_vm(userdata=cloud_config(), wait="started",
                     files={BOOTSTRAP: measured_bootstrap(podvm_image, f"swtpm:host=127.0.0.1,port={free_port()}")})
    vm.wait_until("journalctl -u podvm-bootstrap | grep -q 'measured launch failed, nothing started'", 90,
                  "the measurement error in the journal")
    errors = [line for line in vm.journal("podvm-bootstrap.service").splitlines() if "measured launch failed" in line]
    assert errors and all("cannot open it" in line for line in errors)
    for name in NAMES:
        assert vm.unit_state(f"{name}.service") in ("inactive", ""), name
    assert vm.podman("ps", "-q").stdout.strip() == ""
    journal = vm.journal("podvm-bootstrap.service")
    assert "Traceback" not in journal and "ERROR:tcti" not in journal  # one line of ours, not the TSS's


def test_without_a_tpm_the_log_is_written_and_status_says_unmeasured(boot_pod_vm, podvm_image, tmp_path):
    userdata = cloud_config()
    bootstrap = measured_bootstrap(podvm_image, "auto")  # the VM has no /dev/tpmrm0
    predicted = predict_on_host(podvm_image, tmp_path, bootstrap, userdata)
    vm = boot_pod_vm(userdata=userdata, files={BOOTSTRAP: bootstrap}, wait="started")
    st = wait_status(vm, all_ready, 120, "every component ready")  # an unmeasured launch still boots
    assert vm.read_file(EVENTLOG).hex() == "".join(predicted["records"])
    assert st["measurement"]["measured"] is False and st["measurement"]["tpm"].startswith("none")
    assert st["measurement"]["initdata"]["bound"] is False
    assert st["measurement"]["value"] == predicted["expected"]
    assert [c["measured"] for c in st["components"]] == [False] * len(NAMES)
    assert "measured launch: NOT measured" in vm.run(["podvm-bootstrap", "status"], check=False).stdout
    assert "launch NOT measured" in vm.journal("podvm-bootstrap.service")
    assert "initdata: NOT bound into PCR 8" in vm.run(["podvm-bootstrap", "status"], check=False).stdout
