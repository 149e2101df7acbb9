"""Hostile user-data through the real command line: one error line, and
`plan` goes on with the baked defaults (what `run` does with it too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cloudconfig import LIBRARY_MISHANDLED_TAGS

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "image" / "config"


def plan_json(tmp_path: Path, userdata: bytes) -> subprocess.CompletedProcess:
    ud = tmp_path / "user-data"
    ud.write_bytes(userdata)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "podvm_bootstrap", "--root", str(tmp_path), "--config-dir",
                           str(CONFIG), "plan", "--json", "--user-data", str(ud)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("value", LIBRARY_MISHANDLED_TAGS[:6], ids=lambda v: v.decode())
def test_plan_goes_on_with_the_defaults_after_a_mishandled_yaml_tag_in_user_data(tmp_path, value):
    userdata = (b"#cloud-config\npodvm_bootstrap:\n  images:\n    agent-protocol-forwarder: x\n"
                b"when: " + value + b"\n")
    result = plan_json(tmp_path, userdata)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "user-data ignored" in line]
    assert len(errors) == 1 and "is not valid YAML" in errors[0], result.stderr
    plan = json.loads(result.stdout)
    assert {c["source"] for c in plan["components"]} == {"default"}
    assert all(c["override"] is None for c in plan["components"])
