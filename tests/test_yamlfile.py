"""The baked YAML files (bootstrap.yaml, components.yaml, policy.yaml) with
values the YAML library mishandles: a config error naming the file, never a
traceback; through the loaders and through the command line (exit 2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from podvm_bootstrap.errors import ConfigError
from podvm_bootstrap.manifest import load_manifest
from podvm_bootstrap.policy import load_policy
from podvm_bootstrap.settings import load_settings
from tests.test_cloudconfig import LIBRARY_MISHANDLED_TAGS

REPO = Path(__file__).resolve().parent.parent
D = "sha256:" + "1" * 64

BAKED = {
    "bootstrap.yaml": (load_settings, "userdata:\n  timeout: {value}\n"),
    "components.yaml": (load_manifest,
                        "version: 1\ncomponents:\n  apf:\n    image: quay.io/org/apf@" + D
                        + "\n    stop_timeout: {value}\n"),
    "policy.yaml": (load_policy, "version: 1\nmutable_tags: {value}\n"),
}


@pytest.mark.parametrize("value", LIBRARY_MISHANDLED_TAGS, ids=lambda v: v.decode())
@pytest.mark.parametrize("name", sorted(BAKED))
def test_mishandled_tags_in_a_baked_file_are_a_config_error_naming_the_file(tmp_path, name, value):
    loader, template = BAKED[name]
    path = tmp_path / name
    path.write_text(template.format(value=value.decode()))
    with pytest.raises(ConfigError) as info:
        loader(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [b"!!int ''", b"!!bool 'maybe'", b"!!timestamp 1", b"!!float '.'"],
                         ids=lambda v: v.decode())
@pytest.mark.parametrize("name", sorted(BAKED))
def test_plan_exits_2_with_one_line_for_a_mishandled_tag_in_a_baked_file(tmp_path, name, value):
    config = tmp_path / "config"
    shutil.copytree(REPO / "image" / "config", config)
    (config / name).write_text(BAKED[name][1].format(value=value.decode()))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "podvm_bootstrap", "--root", str(tmp_path), "--config-dir",
                             str(config), "plan", "--provider", "none"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"podvm-bootstrap: error: {config / name}: "), result.stderr
