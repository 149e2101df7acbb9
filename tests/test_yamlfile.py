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

from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.config.manifest import load_manifest
from podvm_bootstrap.config.policy import load_policy
from podvm_bootstrap.config.settings import load_settings
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


@pytest.mark.parametrize("name", ["bootstrap.yaml", "components.yaml", "policy.yaml"])
def test_baked_files_load_through_libyaml_with_the_reference_loaders_result(monkeypatch, name):
    """The baked files are parsed by libyaml (the boot's first work; about ten
    times faster than the pure-Python parser) into exactly what the reference
    loader builds; the pure-Python loader is then not used at all."""
    import yaml

    from podvm_bootstrap.config import yamlfile

    if not getattr(yaml, "__with_libyaml__", False):
        pytest.fail("PyYAML without libyaml: Debian's python3-yaml ships it (scripts/host-deps.sh)")
    text = (REPO / "image" / "config" / name).read_text()
    reference = yaml.load(text, Loader=yamlfile._SafeLoader)  # noqa: S506
    assert issubclass(yamlfile._FastSafeLoader, yaml.CSafeLoader)

    def refused(*args, **kwargs):
        raise AssertionError("the pure-Python loader was used")
    monkeypatch.setattr(yamlfile, "_SafeLoader", refused)
    assert yamlfile.load_yaml_text(text) == reference


def test_a_text_libyaml_refuses_is_worded_by_the_reference_loader():
    from podvm_bootstrap.config.yamlfile import YamlProblem, load_yaml_text

    with pytest.raises(YamlProblem) as info:
        load_yaml_text("a: [1, 2\nb: 3\n")
    assert str(info.value).startswith("expected ',' or ']', but got ':' at line ")
