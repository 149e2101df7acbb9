"""`plan --json`'s `measurement` through the real command line; the `measure`
keys of bootstrap.yaml. (`measurements` itself: tests/test_cli_measurements_log.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from podvm_bootstrap.eventlog import ZERO, LaunchEntry, launch_lines, replay
from tests.plan_command import APF, CONFIG, LOOPBACK_APF, USERDATA_OVERRIDES, copy_config, run_plan

REPO = Path(__file__).resolve().parent.parent
D = {c: "sha256:" + hashlib.sha256(c.encode()).hexdigest() for c in ("aa", "ka")}
LINES = launch_lines(ZERO, [LaunchEntry("aa", f"quay.io/x/aa@{D['aa']}", D["aa"], "default"),
                            LaunchEntry("ka", f"quay.io/x/ka@{D['ka']}", D["ka"], "override")])
VALUE = replay(ZERO, LINES)[-1]


def cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "podvm_bootstrap", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def write_log(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "eventlog"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_plan_predicts_the_log_and_the_pcr_from_zero(tmp_path):
    result = run_plan(tmp_path, CONFIG, USERDATA_OVERRIDES, "--json")
    assert result.returncode == 0, result.stderr
    m = json.loads(result.stdout)["measurement"]
    assert m["pcr"] == 23
    events = m["events"]
    assert events[0] == "INIT sha256/" + "0" * 64 and events[-1].endswith('LaunchComplete {"components":5}')
    names = [json.loads(e.split(" ")[2])["component"] for e in events[1:-1]]
    assert names == ["attestation-agent", "confidential-data-hub", "kata-agent", APF, "api-server-rest"]  # start order
    apf = json.loads(events[4].split(" ")[2])
    assert apf == {"component": APF, "digest": LOOPBACK_APF.split("@")[1], "image": LOOPBACK_APF, "source": "override"}
    assert m["expected"] == "sha256:" + replay(ZERO, events)[-1].hex()


def test_plan_prediction_equals_the_log_run_writes(tmp_path):
    from podvm_bootstrap.launch_measurement import measure_launch
    from podvm_bootstrap.paths import Paths
    from podvm_bootstrap.stages import UserDataSource, plan

    result = run_plan(tmp_path, CONFIG, USERDATA_OVERRIDES, "--json")
    predicted = json.loads(result.stdout)["measurement"]
    paths = Paths.build(root=str(tmp_path / "root"), config_dir=str(CONFIG))
    resolved = plan(paths, UserDataSource(file=str(tmp_path / "user-data")))
    record = measure_launch(paths, resolved.settings, resolved.plan.start_order, resolved.plan.components,
                            lambda *a: None)  # measure.tpm auto, no TPM under the root: the log only
    assert (paths.state_dir / "eventlog").read_text().splitlines() == predicted["events"]
    assert record["value"] == predicted["expected"] and record["measured"] is False


@pytest.mark.parametrize("measure, key", [
    ("measure:\n  tpm: tpm0\n", "measure.tpm"),
    ("measure:\n  tpm: 'swtpm:host=127.0.0.1'\n", "measure.tpm"),
    ("measure:\n  tpm: 'device:dev/tpmrm0'\n", "measure.tpm"),
    ("measure:\n  pcr: 24\n", "measure.pcr"),
    ("measure:\n  pcr: -1\n", "measure.pcr"),
    ("measure:\n  hash: sha1\n", "measure.hash"),
])
def test_bad_measure_settings_exit_2_naming_the_key(tmp_path, measure, key):
    config = copy_config(tmp_path)
    bootstrap = config / "bootstrap.yaml"
    bootstrap.write_text(bootstrap.read_text() + measure)
    result = run_plan(tmp_path, config, USERDATA_OVERRIDES, "--json")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"podvm-bootstrap: error: {bootstrap}: {key}: ")
    assert result.stderr.count("\n") == 1


def test_measure_settings_accepted(tmp_path):
    from podvm_bootstrap.settings import load_settings

    path = tmp_path / "bootstrap.yaml"
    path.write_text("measure:\n  tpm: 'swtpm:host=127.0.0.1,port=2321'\n  pcr: 16\n")
    s = load_settings(path)
    assert (s.measure.tpm, s.measure.pcr) == ("swtpm:host=127.0.0.1,port=2321", 16)


def test_no_prediction_for_an_image_given_by_tag():
    from podvm_bootstrap.imageref import parse_reference
    from podvm_bootstrap.launch_measurement import predicted_measurement
    from podvm_bootstrap.model import Component, Plan, PlannedComponent

    pinned = parse_reference(f"quay.io/x/aa@{D['aa']}")
    tagged = parse_reference("quay.io/x/ka:latest")
    plan = Plan((PlannedComponent(Component("aa", pinned, "aa.service"), pinned, "default"),
                 PlannedComponent(Component("ka", tagged, "ka.service"), tagged, "default")), (("aa", "ka"),))
    assert predicted_measurement(plan, 16) == {"pcr": 16, "events": [], "expected": None}
    pinned_only = Plan(plan.components[:1], (("aa",),))
    assert predicted_measurement(pinned_only, 16)["expected"].startswith("sha256:")
