"""Measured launch in the booted pod VM (tests/bed) with a software TPM on
127.0.0.1 (swtpm, the host's; the VM shares the network), read back on the
host with tpm2-tools: `plan --json` predicts the PCR before boot, the log in
the VM replays to the PCR a checked quote shows and names exactly the digests
that run (the override as `override`); a crashed component and a SIGKILLed
daemon change nothing; an edited, reordered or truncated copy of the log
fails `measurements`; a TPM that cannot be reached starts nothing; without a
TPM the log is still written and `status` says the launch is unmeasured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bed.keys import copy_baked_keys
from tests.bed.proc import free_port
from tests.bed.userdata import cloud_config
from tests.bed.vm import PodVM
from tests.test_e2e_runtime import all_ready, baked, component, daemon_pid, wait_status

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parent.parent
NAMES = ("attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder", "api-server-rest")
BOOTSTRAP = "/etc/podvm-bootstrap/bootstrap.yaml"
EVENTLOG = "/run/podvm-bootstrap/eventlog"


def measured_bootstrap(podvm_image: Any, tpm: str) -> str:
    settings = baked(podvm_image, BOOTSTRAP)
    settings.setdefault("userdata", {}).update({"provider": "file", "timeout": "20s"})
    settings["measure"] = {"tpm": tpm, "pcr": 23}
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


def measurements(vm: PodVM, expect: str, log: str = EVENTLOG) -> Any:
    return vm.run(["podvm-bootstrap", "measurements", "--log", log, "--expect-pcr", expect], check=False)


def test_measured_launch_replays_to_the_tpm_and_survives_crashes(boot_pod_vm, podvm_image, standin_images, swtpm,
                                                                  tmp_path):
    v2 = standin_images[("agent-protocol-forwarder", "v2")].digest
    override = f"quay.io/confidential-containers/agent-protocol-forwarder@{v2}"
    userdata = cloud_config(images={"agent-protocol-forwarder": override})
    bootstrap = measured_bootstrap(podvm_image, swtpm.tcti)
    predicted = predict_on_host(podvm_image, tmp_path, bootstrap, userdata)
    assert swtpm.pcrread(23) == bytes(32)  # a fresh TPM: the plan's all-zero start holds

    vm = boot_pod_vm(userdata=userdata, files={BOOTSTRAP: bootstrap}, wait="started")
    st = wait_status(vm, all_ready, 120, "every component ready")

    pcr = swtpm.pcrread(23)
    assert "sha256:" + pcr.hex() == predicted["expected"]
    assert swtpm.quoted_pcr(23) == pcr                      # what a relying party's quote shows
    ok = measurements(vm, pcr.hex())
    assert ok.returncode == 0, ok.stderr
    log = vm.read_file(EVENTLOG).decode()
    assert log.splitlines() == predicted["events"]
    launched = [json.loads(line.split(" ")[2]) for line in log.splitlines()[1:-1]]
    assert [e["component"] for e in launched] == list(NAMES)
    for entry in launched:  # exactly what runs
        c = component(st, entry["component"])
        assert entry["digest"] == c["digest"] and entry["image"] == c["image"] and c["measured"] is True
        running = vm.podman("inspect", "--format", "{{.ImageDigest}}", entry["component"]).stdout.strip()
        assert running == entry["digest"]
    assert {e["component"]: e["source"] for e in launched} == {
        **{name: "default" for name in NAMES}, "agent-protocol-forwarder": "override"}
    assert launched[NAMES.index("agent-protocol-forwarder")]["digest"] == v2
    assert st["measurement"]["measured"] is True and st["measurement"]["tpm"] == swtpm.tcti

    # a crashed component comes back with the same digest: nothing measured again
    restarts = component(st, "agent-protocol-forwarder")["restarts"]
    vm.podman("kill", "--signal", "USR1", "agent-protocol-forwarder")
    wait_status(vm, lambda s: all_ready(s) and component(s, "agent-protocol-forwarder")["restarts"] > restarts,
                90, "the forwarder restarted")
    assert swtpm.pcrread(23) == pcr and vm.read_file(EVENTLOG).decode() == log

    # a SIGKILLed daemon: systemd restarts it, it finds this boot's log and does not measure again
    before = daemon_pid(vm)
    vm.systemctl("kill", "--kill-who=main", "--signal=SIGKILL", "podvm-bootstrap.service")
    st = wait_status(vm, lambda s: all_ready(s) and s["daemon"]["pid"] not in (before, 0)
                     and s["daemon"]["pid"] == daemon_pid(vm) and s["daemon"]["ready"], 90, "the restarted daemon")
    assert swtpm.pcrread(23) == pcr and vm.read_file(EVENTLOG).decode() == log
    assert all(c["measured"] is True for c in st["components"])
    assert "not measuring again" in vm.journal("podvm-bootstrap.service")

    # a verifier's copy that was edited, reordered or truncated does not replay to the PCR
    lines = log.splitlines()
    forged = {
        "edited": [lines[0], lines[1], lines[2], lines[3].replace(v2, standin_images[
            ("agent-protocol-forwarder", "v1")].digest), lines[4]],
        "reordered": [lines[0], lines[2], lines[1], lines[3], lines[4]],
        "truncated": lines[:-1],
    }
    for name, text in forged.items():
        vm.write_file(f"/tmp/{name}", "\n".join(text) + "\n")
        out = measurements(vm, pcr.hex(), f"/tmp/{name}")
        assert out.returncode == 1, (name, out.stdout, out.stderr)


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
    assert vm.read_file(EVENTLOG).decode().splitlines() == predicted["events"]
    assert st["measurement"]["measured"] is False and st["measurement"]["tpm"].startswith("none")
    assert st["measurement"]["value"] == predicted["expected"]
    assert [c["measured"] for c in st["components"]] == [False] * len(NAMES)
    assert "measured launch: NOT measured" in vm.run(["podvm-bootstrap", "status"], check=False).stdout
    assert "launch NOT measured" in vm.journal("podvm-bootstrap.service")
    assert measurements(vm, predicted["expected"]).returncode == 0
