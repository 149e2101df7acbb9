"""plan through the real command line with a signing policy: `signed_by` in
--json, keys read under --root, and a bad key is exit 2 naming file and key."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.bed.cosign import SigningKey
from tests.plan_command import APF, USERDATA_NO_OVERRIDES, assert_one_error_line, copy_config, run_plan


def component_names(config: Path) -> list[str]:
    return list(yaml.safe_load((config / "components.yaml").read_text())["components"])


def signing_config(tmp_path: Path, key: SigningKey) -> Path:
    config = copy_config(tmp_path)
    key.write_public(tmp_path / "root/etc/podvm-bootstrap/keys/release.pub")
    policy = yaml.safe_load((config / "policy.yaml").read_text())
    policy["keys"] = {"release": {"path": "/etc/podvm-bootstrap/keys/release.pub"}}
    for name in component_names(config):
        policy["components"].setdefault(name, {})["signed_by"] = ["release"]
    (config / "policy.yaml").write_text(yaml.safe_dump(policy))
    return config


def test_plan_json_names_the_keys_each_component_needs(tmp_path):
    config = signing_config(tmp_path, SigningKey.generate("release"))
    result = run_plan(tmp_path, config, USERDATA_NO_OVERRIDES, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {c["name"]: c["signed_by"] for c in doc["components"]} == {
        name: ["release"] for name in component_names(config)}
    assert APF in component_names(config)


def test_missing_key_file_under_root_is_exit_2(tmp_path):
    config = signing_config(tmp_path, SigningKey.generate("release"))
    (tmp_path / "root/etc/podvm-bootstrap/keys/release.pub").unlink()
    result = run_plan(tmp_path, config, USERDATA_NO_OVERRIDES, "--json")
    assert result.returncode == 2
    assert_one_error_line(result, "policy.yaml", "keys.release.path", "release.pub")
    assert result.stdout == ""
