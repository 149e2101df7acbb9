"""`podvm-bootstrap plan` end to end through the real command line, on the sample
baked configuration (image/config) and user-data files."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from podvm_bootstrap.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "image" / "config"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
APF = "agent-protocol-forwarder"
CHAIN = ["attestation-agent", "confidential-data-hub", "kata-agent", APF, "api-server-rest"]
LOOPBACK_APF = f"127.0.0.1:5000/podvm/agent-protocol-forwarder@{D1}"

USERDATA_NO_OVERRIDES = """#cloud-config
write_files:
  - path: /run/peerpod/apf.json
    content: '{"pod-network": {}}'
"""

USERDATA_OVERRIDES = f"""#cloud-config
write_files:
  - path: /run/peerpod/apf.json
    content: '{{"pod-network": {{}}}}'
podvm_bootstrap:
  images:
    {APF}: {LOOPBACK_APF}
    kata-agent: quay.io/evil/kata-agent@{D2}
"""


def run_plan(tmp_path: Path, config_dir: Path, userdata: str, *extra: str) -> subprocess.CompletedProcess:
    ud = tmp_path / "user-data"
    ud.write_text(userdata)
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "podvm_bootstrap", "--root", str(root), "--config-dir", str(config_dir),
         "plan", *extra, "--user-data", str(ud)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def copy_config(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(CONFIG, target)
    return target


def assert_one_error_line(result: subprocess.CompletedProcess, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("podvm-bootstrap: error: ")
    for word in words:
        assert word in lines[0]


def test_plan_json_without_overrides(tmp_path):
    result = run_plan(tmp_path, CONFIG, USERDATA_NO_OVERRIDES, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"version", "tee", "components", "start_order", "errors", "measurement"}
    assert doc["tee"] == "none"  # nothing under the empty --root says otherwise
    assert [c["name"] for c in doc["components"]] == CHAIN
    for c in doc["components"]:
        assert set(c) == {"name", "unit", "image", "digest", "source", "variant", "signed_by", "override", "after"}
        assert c["signed_by"] == []
        assert c["source"] == "default" and c["override"] is None and c["variant"] is None
        assert c["image"] == f"quay.io/confidential-containers/{c['name']}@{c['digest']}"
        assert c["unit"] == f"{c['name']}.service"
    assert doc["start_order"] == [[name] for name in CHAIN]
    assert doc["errors"] == []
    # plan has no side effects: nothing provisioned, no state written
    assert list((tmp_path / "root").rglob("*")) == []


def test_plan_json_with_overrides(tmp_path):
    result = run_plan(tmp_path, CONFIG, USERDATA_OVERRIDES, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    by_name = {c["name"]: c for c in doc["components"]}
    apf = by_name[APF]
    assert apf["source"] == "override" and apf["image"] == LOOPBACK_APF and apf["digest"] == D1
    assert apf["override"]["accepted"] is True
    kata = by_name["kata-agent"]
    assert kata["source"] == "default" and kata["digest"] != D2
    assert kata["override"] == {"requested": f"quay.io/evil/kata-agent@{D2}", "accepted": False,
                                "reason": "the policy allows no override for kata-agent (repositories is empty)"}
    assert len(doc["errors"]) == 1 and doc["errors"][0].startswith("override for kata-agent refused")
    # the refusal is also logged, as one line
    assert "override for kata-agent refused" in result.stderr
    assert list((tmp_path / "root").rglob("*")) == []


def test_plan_table(tmp_path):
    result = run_plan(tmp_path, CONFIG, USERDATA_OVERRIDES)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["COMPONENT", "UNIT", "SOURCE", "IMAGE"]
    assert f"{APF}.service" in result.stdout and LOOPBACK_APF in result.stdout
    assert any(line.startswith("refused override for kata-agent") for line in lines)
    assert lines[-1] == "start order: " + " -> ".join(CHAIN)
    assert lines[-2] == "tee: none"


def test_fail_policy_exits_3(tmp_path):
    config = copy_config(tmp_path)
    policy = config / "policy.yaml"
    policy.write_text(policy.read_text().replace("on_rejected_override: use-default",
                                                 "on_rejected_override: fail"))
    result = run_plan(tmp_path, config, USERDATA_OVERRIDES, "--json")
    assert result.returncode == 3, result.stderr
    doc = json.loads(result.stdout)
    assert doc["errors"] and "kata-agent" in doc["errors"][0]
    # without a refused override the same policy plans normally
    assert run_plan(tmp_path, config, USERDATA_NO_OVERRIDES, "--json").returncode == 0


def test_fail_policy_applies_to_a_request_that_is_not_a_string(tmp_path):
    config = copy_config(tmp_path)
    policy = config / "policy.yaml"
    policy.write_text(policy.read_text().replace("on_rejected_override: use-default",
                                                 "on_rejected_override: fail"))
    userdata = f"#cloud-config\npodvm_bootstrap:\n  images:\n    {APF}: [not, a, string]\n"
    result = run_plan(tmp_path, config, userdata, "--json")
    assert result.returncode == 3, result.stderr
    apf = next(c for c in json.loads(result.stdout)["components"] if c["name"] == APF)
    assert apf["source"] == "default" and apf["override"]["accepted"] is False


@pytest.mark.parametrize("edit, key", [
    (lambda t: t.replace("    essential: true", "    essential: true\n    priority: 1"),
     "components.kata-agent.priority"),
    (lambda t: t.replace("    after: [confidential-data-hub]", "    after: [agent-protocol-forwarder]"),
     "components.kata-agent.after"),
    (lambda t: t.replace("    after: [kata-agent]", "    after: [kata-agnet]"),
     "components.agent-protocol-forwarder.after[0]"),
    (lambda t: t.replace("kata-agent@sha256:" + "0" * 63 + "2", "kata-agent:latest"),
     "components.kata-agent.image"),
    (lambda t: t.replace("version: 1 ", "version: 3 "), "version"),
])
def test_broken_components_yaml_exits_2(tmp_path, edit, key):
    config = copy_config(tmp_path)
    components = config / "components.yaml"
    original = components.read_text()
    components.write_text(edit(original))
    assert components.read_text() != original
    result = run_plan(tmp_path, config, USERDATA_OVERRIDES, "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_error_line(result, f"{components}: {key}: ")


def test_cycle_is_reported_by_name(tmp_path):
    config = copy_config(tmp_path)
    components = config / "components.yaml"
    components.write_text(components.read_text().replace("    after: [confidential-data-hub]",
                                                         "    after: [agent-protocol-forwarder]"))
    result = run_plan(tmp_path, config, USERDATA_NO_OVERRIDES)
    assert result.returncode == 2
    assert_one_error_line(result, "cycle kata-agent -> agent-protocol-forwarder -> kata-agent")


def test_broken_policy_yaml_exits_2(tmp_path):
    config = copy_config(tmp_path)
    policy = config / "policy.yaml"
    policy.write_text(policy.read_text().replace("127.0.0.1:5000/podvm/*", "127.0.0.1:5000/podvm*"))
    result = run_plan(tmp_path, config, USERDATA_NO_OVERRIDES, "--json")
    assert result.returncode == 2
    assert_one_error_line(result, f"{policy}: components.{APF}.repositories[1]: ")


def test_missing_policy_refuses_every_override(tmp_path):
    config = copy_config(tmp_path)
    (config / "policy.yaml").unlink()
    result = run_plan(tmp_path, config, USERDATA_OVERRIDES, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert all(c["source"] == "default" for c in doc["components"])
    assert len(doc["errors"]) == 2
    assert "no image override is allowed" in result.stderr


def test_sample_bootstrap_yaml_is_the_defaults():
    assert load_settings(CONFIG / "bootstrap.yaml") == Settings()
