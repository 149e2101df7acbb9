"""README "For the cloud-api-adaptor": the documented override example is run
as written. Its config map and pod annotation are merged the way the README
tells the adaptor to (the annotation wins per component), the result must be
the README's user-data, and `podvm-bootstrap plan --json` on that user-data,
with the sample baked configuration, must do what the README says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
ANNOTATION = "io.katacontainers.config.podvm_bootstrap.images"
CONFIG_MAP_KEY = "PODVM_BOOTSTRAP_IMAGES"


def example(name: str) -> str:
    """The fenced block right after `<!-- adaptor-example: NAME -->`."""
    text = README.read_text()
    match = re.search(rf"<!-- adaptor-example: {re.escape(name)} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert match, f"README lost its adaptor example {name!r}"
    return match.group(1) + "\n"


def adaptor_requests(config_map: dict, pod: dict) -> dict[str, str]:
    """The README's rule: the config map's requests, then the pod's
    annotation over them, component by component."""
    merged = dict(json.loads(config_map["data"].get(CONFIG_MAP_KEY, "{}")))
    merged.update(json.loads(pod["metadata"].get("annotations", {}).get(ANNOTATION, "{}")))
    return merged


def test_the_readme_example_merges_into_its_user_data_and_plans_as_documented(tmp_path):
    config_map = yaml.safe_load(example("configmap"))
    pod = yaml.safe_load(example("pod"))
    userdata_text = example("user-data")
    userdata = yaml.safe_load(userdata_text)
    assert userdata_text.startswith("#cloud-config\n")
    requests = adaptor_requests(config_map, pod)
    assert userdata["podvm_bootstrap"]["images"] == requests
    assert set(requests) == {"agent-protocol-forwarder", "attestation-agent"}
    # both ask for the forwarder: the pod's annotation wins
    cluster = json.loads(config_map["data"][CONFIG_MAP_KEY])["agent-protocol-forwarder"]
    assert requests["agent-protocol-forwarder"] != cluster

    ud = tmp_path / "user-data"
    ud.write_text(userdata_text)
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-m", "podvm_bootstrap", "--root", str(tmp_path / "root"),
                             "--config-dir", str(REPO / "image/config"), "plan", "--json", "--user-data", str(ud)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    by_name = {c["name"]: c for c in plan["components"]}
    apf, aa = by_name["agent-protocol-forwarder"], by_name["attestation-agent"]
    assert apf["source"] == "override" and apf["image"] == requests["agent-protocol-forwarder"]
    assert apf["override"]["accepted"] is True
    assert aa["source"] == "default" and aa["image"] != requests["attestation-agent"]
    assert aa["override"] == {"requested": requests["attestation-agent"], "accepted": False,
                              "reason": "the policy allows no override for attestation-agent (repositories is empty)",
                              "requested_by": "user-data"}
    # the README quotes that reason word for word
    assert aa["override"]["reason"] in " ".join(README.read_text().split())
    assert plan["version"] and plan["tee"] == "none"
