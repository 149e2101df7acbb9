"""`plan --json`'s `measurement` through the real command line: the records
the launch will write, the launch register's value and the initdata
register's value, predicted from the one user-data; and equal to what the
measurement step then gives a real software TPM (tpm2_pcrread). The `measure`
keys of bootstrap.yaml. (`measurements` itself: tests/test_cli_measurements_log.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podvm_bootstrap.attest.launch_set import read_launch
from podvm_bootstrap.attest.tcg_log import event_digest, parse_records, replay
from tests.plan_command import APF, CONFIG, LOOPBACK_APF, USERDATA_OVERRIDES, copy_config, run_plan

UPSTREAM = Path(__file__).parent / "fixtures" / "upstream" / "cloud-api-adaptor"
ADAPTOR_INITDATA = (UPSTREAM / "provision_test-ccInitData.b64").read_text()
USERDATA_WITH_INITDATA = USERDATA_OVERRIDES.replace(
    "write_files:\n", f"write_files:\n  - path: /run/peerpod/initdata\n    content: {ADAPTOR_INITDATA}\n")


def test_plan_predicts_the_records_and_the_register_from_zero(tmp_path):
    result = run_plan(tmp_path, CONFIG, USERDATA_OVERRIDES, "--json")
    assert result.returncode == 0, result.stderr
    m = json.loads(result.stdout)["measurement"]
    assert list(m) == ["pcr", "events", "records", "expected", "initdata"]
    assert m["pcr"] == 23
    records = b"".join(bytes.fromhex(r) for r in m["records"])
    log = parse_records(records)
    assert [r.aael for r in log.records] == m["events"]
    launch = read_launch(log, 23)
    assert launch.complete
    assert [c.component for c in launch.components] == [
        "attestation-agent", "confidential-data-hub", "kata-agent", APF, "api-server-rest"]  # start order
    apf = launch.by_name()[APF]
    assert apf.content() == {"component": APF, "digest": LOOPBACK_APF.split("@")[1], "image": LOOPBACK_APF,
                             "source": "override", "requested_by": "user-data"}
    assert m["events"][-1] == 'github.com/confidential-containers LaunchComplete {"components":5}'
    assert m["expected"] == "sha256:" + replay(log.records, 23).hex()
    # no initdata in this user-data: the adaptor's placeholder is what is bound
    assert m["initdata"]["digest"] == "sha256:adb48cc14fea9403d3d51f3b5f5068fd4d80445a14e94f1b3d5dbabaad66478d"


def test_plan_prediction_is_what_the_step_gives_a_real_tpm(tmp_path, swtpm):
    """Provision (the initdata the user-data carries), then the step, with
    swtpm: PCR 8 and PCR 23 read back with tpm2_pcrread equal the prediction,
    the file equals the predicted records; a restart changes nothing."""
    from podvm_bootstrap.attest.launch_measurement import measure_launch
    from podvm_bootstrap.common.paths import Paths
    from podvm_bootstrap.runtime.stages import UserDataSource, plan

    config = copy_config(tmp_path)
    bootstrap = config / "bootstrap.yaml"
    bootstrap.write_text(bootstrap.read_text().replace("  tpm: auto ", f"  tpm: '{swtpm.tcti}' "))
    result = run_plan(tmp_path, config, USERDATA_WITH_INITDATA, "--json")
    assert result.returncode == 0, result.stderr
    predicted = json.loads(result.stdout)["measurement"]
    assert predicted["initdata"]["digest"].startswith("sha384:52af3178")   # the adaptor's own vector
    paths = Paths.build(root=str(tmp_path / "root"), config_dir=str(config))
    resolved = plan(paths, UserDataSource(file=str(tmp_path / "user-data")), provision_files=True)

    def step() -> dict:
        return measure_launch(paths, resolved.settings, resolved.plan.start_order, resolved.plan.components,
                              lambda *a: None)
    record = step()
    log = paths.rooted("/run/attestation-agent/eventlog")
    assert log.read_bytes().hex() == "".join(predicted["records"])
    assert "sha256:" + swtpm.pcrread(23).hex() == predicted["expected"] == record["value"]
    assert "sha256:" + swtpm.pcrread(8).hex() == predicted["initdata"]["expected"] == record["initdata"]["expected"]
    assert record["measured"] is True and record["initdata"]["bound"] is True
    before = log.read_bytes(), swtpm.pcrread(8), swtpm.pcrread(23)
    step()
    assert (log.read_bytes(), swtpm.pcrread(8), swtpm.pcrread(23)) == before


def test_each_record_extends_the_digest_of_its_event(tmp_path):
    m = json.loads(run_plan(tmp_path, CONFIG, USERDATA_OVERRIDES, "--json").stdout)["measurement"]
    for text, record in zip(m["events"], m["records"], strict=True):
        assert event_digest(text).hex() in record


@pytest.mark.parametrize("measure, key", [
    ("measure:\n  tpm: tpm0\n", "measure.tpm"),
    ("measure:\n  tpm: 'swtpm:host=127.0.0.1'\n", "measure.tpm"),
    ("measure:\n  tpm: 'device:dev/tpmrm0'\n", "measure.tpm"),
    ("measure:\n  pcr: 24\n", "measure.pcr"),
    ("measure:\n  pcr: -1\n", "measure.pcr"),
    ("measure:\n  eventlog: eventlog\n", "measure.eventlog"),
    ("measure:\n  initdata_pcr: 99\n", "measure.initdata_pcr"),
    ("measure:\n  hash: sha1\n", "measure.hash"),
])
def test_bad_measure_settings_exit_2_naming_the_file_and_key(tmp_path, measure, key):
    config = copy_config(tmp_path)
    bootstrap = config / "bootstrap.yaml"
    bootstrap.write_text(measure)
    result = run_plan(tmp_path, config, USERDATA_OVERRIDES, "--json")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"podvm-bootstrap: error: {bootstrap}: {key}: ")
    assert result.stderr.count("\n") == 1


def test_measure_settings_accepted(tmp_path):
    from podvm_bootstrap.config.settings import load_settings

    path = tmp_path / "bootstrap.yaml"
    path.write_text("measure:\n  tpm: 'swtpm:host=127.0.0.1,port=2321'\n  pcr: 16\n  initdata_pcr: 8\n")
    s = load_settings(path)
    assert (s.measure.tpm, s.measure.pcr, s.measure.initdata_pcr) == ("swtpm:host=127.0.0.1,port=2321", 16, 8)


def test_no_prediction_for_an_image_given_by_tag():
    import hashlib

    from podvm_bootstrap.attest.launch_measurement import predicted_measurement
    from podvm_bootstrap.config.model import Component, Plan, PlannedComponent
    from podvm_bootstrap.images.imageref import parse_reference

    pinned = parse_reference("quay.io/x/aa@sha256:" + hashlib.sha256(b"aa").hexdigest())
    tagged = parse_reference("quay.io/x/ka:latest")
    plan = Plan((PlannedComponent(Component("aa", pinned, "aa.service"), pinned, "default"),
                 PlannedComponent(Component("ka", tagged, "ka.service"), tagged, "default")), (("aa", "ka"),))
    assert predicted_measurement(plan, 16) == {"pcr": 16, "events": [], "records": [], "expected": None}
    pinned_only = Plan(plan.components[:1], (("aa",),))
    assert predicted_measurement(pinned_only, 16)["expected"].startswith("sha256:")
