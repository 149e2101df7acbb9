"""Running `podvm-bootstrap plan` through the real command line on a config
dir and a user-data text, for the tests that check one aspect of it (the
measurement, signatures); the plain plan and render outputs are the cases of
tests/cases/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "image" / "config"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
APF = "agent-protocol-forwarder"
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
