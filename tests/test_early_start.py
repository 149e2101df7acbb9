"""The boot's head start (early_start.py) off the VM: when it must not touch
systemd at all, and how an early job's result reaches whoever takes the
start over. The early starts themselves run under real systemd in
tests/test_e2e_runtime_early.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from podvm_bootstrap.early_start import EarlyStart, head_start
from podvm_bootstrap.paths import Paths
from tests.test_cli_runtime import COMPONENTS, POLICY


def test_an_early_result_reaches_the_taker_whether_it_came_before_or_after() -> None:
    seen: list[str] = []
    before = EarlyStart("a.service", "ka")
    before.finished("done")
    before.then(seen.append)
    after = EarlyStart("b.service", "kb")
    after.then(seen.append)
    assert seen == ["done"]
    after.finished("failed")
    assert seen == ["done", "failed"] and after.result == "failed"


@pytest.fixture()
def paths(tmp_path: Path) -> Paths:
    config = tmp_path / "config"
    config.mkdir()
    (config / "components.yaml").write_text(COMPONENTS)
    (config / "policy.yaml").write_text(POLICY)
    (config / "bootstrap.yaml").write_text("userdata: {provider: none}\n")
    return Paths.build(root=str(tmp_path / "root"), config_dir=str(config))


def no_systemd() -> None:
    raise AssertionError("systemd was asked")


def test_a_restarted_daemon_starts_nothing_early_and_asks_systemd_nothing(paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    previous = {"version": 1, "units": ["kata-agent.service"], "components": {}}
    (paths.state_dir / "state.json").write_text(json.dumps(previous))
    head = head_start(paths, systemd_factory=no_systemd)  # type: ignore[arg-type]
    assert head.started == {} and head.systemd is None and head.previous_state["units"] == ["kata-agent.service"]
    assert not paths.unit_dir.exists()


def test_a_default_by_tag_waits_for_the_policy(paths: Paths) -> None:
    text = (paths.components_yaml.read_text()
            .replace("quay.io/confidential-containers/attestation-agent@sha256:" + "a" * 64,
                     "quay.io/confidential-containers/attestation-agent:v1"))
    assert ":v1" in text
    paths.components_yaml.write_text(text)
    head = head_start(paths, systemd_factory=no_systemd)  # type: ignore[arg-type]
    assert head.started == {} and not paths.unit_dir.exists()


def test_without_a_system_bus_the_boot_goes_on_without_a_head_start(tmp_path: Path, paths: Paths) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "podvm_bootstrap", "--root", str(paths.root), "--config-dir",
         str(paths.components_yaml.parent), "run", "--provider", "none"],
        capture_output=True, text=True, timeout=120, env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent",
                                                          "PATH": "/usr/bin:/bin"})
    assert "no early start: cannot reach systemd on the system bus" in result.stderr
    assert "fetching the user-data, then planning" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "podvm-bootstrap: error: cannot reach systemd on the system bus")
    assert "Traceback" not in result.stderr
