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
from tests.test_runtime_cli import COMPONENTS, POLICY


def test_an_early_result_reaches_the_taker_whether_it_came_before_or_after() -> None:
    seen: list[str] = []
    before = EarlyStart("a.service")
    before.finished("done")
    before.then(seen.append)
    after = EarlyStart("b.service")
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


class FakeSystemd:
    """What the head start asks systemd (its unit states) and what it sends
    (its StartUnit calls); the real ones run in tests/test_e2e_runtime_early.py."""

    def __init__(self, held: dict[str, tuple[str, str]]) -> None:
        self.held = held
        self.started: list[str] = []

    def unit_loads(self, units: list[str]) -> dict[str, tuple[str, str]]:
        return {u: self.held[u] for u in units if u in self.held}

    def start_all(self, units: list[str], on_done) -> None:
        self.started += units


def prebake(paths: Paths) -> dict[str, str]:
    """bake's prebaked files for the fixture's manifest, written into its root."""
    from podvm_bootstrap.bake import prebaked_units, write_prebaked
    from podvm_bootstrap.manifest import load_manifest

    files = prebaked_units(load_manifest(paths.components_yaml), ("/run/peerpod/apf.json",))
    assert write_prebaked(paths.root, files)
    return files


UNITS = ["attestation-agent.service", "agent-protocol-forwarder.service"]


@pytest.mark.parametrize("active", ["activating", "active"])
def test_prebaked_units_started_with_the_daemon_are_taken_over(paths: Paths, active: str) -> None:
    files = prebake(paths)
    fake = FakeSystemd({u: ("loaded", active) for u in UNITS})
    head = head_start(paths, systemd_factory=lambda: fake)  # type: ignore[arg-type,return-value]
    assert sorted(head.started) == ["agent-protocol-forwarder", "attestation-agent"]
    assert fake.started == UNITS   # joined (the same job), in start order
    for unit in UNITS:   # the daemon's own file, the very text systemd runs
        assert (paths.unit_dir / unit).read_text() == files[f"usr/lib/systemd/system/{unit}"]
    for name in ("attestation-agent", "agent-protocol-forwarder"):
        assert (paths.state_dir / "gates" / f"{name}.fifo").is_fifo()


def test_a_prebaked_unit_of_another_text_is_taken_over_to_be_ended_not_written(paths: Paths) -> None:
    prebake(paths)
    other = paths.root / "usr/lib/systemd/system/attestation-agent.service"
    other.write_text(other.read_text() + "# a TEE-less default the final plan replaces\n")
    fake = FakeSystemd({UNITS[0]: ("loaded", "active"), UNITS[1]: ("loaded", "activating")})
    head = head_start(paths, systemd_factory=lambda: fake)  # type: ignore[arg-type,return-value]
    assert sorted(head.started) == ["agent-protocol-forwarder", "attestation-agent"]
    # No file in /run for it: the final plan writes its own, so it is ended at its gate (daemon.py).
    assert not (paths.unit_dir / UNITS[0]).exists() and (paths.unit_dir / UNITS[1]).exists()


def test_a_prebaked_unit_of_another_text_that_systemd_did_not_start_is_not_started(paths: Paths) -> None:
    prebake(paths)
    other = paths.root / "usr/lib/systemd/system/attestation-agent.service"
    other.write_text(other.read_text() + "# changed\n")
    fake = FakeSystemd({UNITS[0]: ("loaded", "inactive"), UNITS[1]: ("loaded", "inactive")})
    head = head_start(paths, systemd_factory=lambda: fake)  # type: ignore[arg-type,return-value]
    assert list(head.started) == ["agent-protocol-forwarder"] and fake.started == [UNITS[1]]


def test_a_restarted_daemon_takes_over_prebaked_units_its_start_pulled_in_again(paths: Paths) -> None:
    prebake(paths)
    paths.state_dir.mkdir(parents=True)
    (paths.state_dir / "state.json").write_text(json.dumps({"version": 1, "units": [UNITS[1]], "components": {}}))
    paths.unit_dir.mkdir(parents=True)
    (paths.unit_dir / UNITS[1]).write_text("the previous daemon's\n")   # it ran this one: adopted later, not here
    fake = FakeSystemd({UNITS[0]: ("loaded", "activating"), UNITS[1]: ("loaded", "active")})
    head = head_start(paths, systemd_factory=lambda: fake)  # type: ignore[arg-type,return-value]
    assert list(head.started) == ["attestation-agent"] and fake.started == [UNITS[0]]
    assert (paths.unit_dir / UNITS[1]).read_text() == "the previous daemon's\n"


def test_a_restarted_daemon_whose_units_are_all_in_run_asks_systemd_nothing(paths: Paths) -> None:
    prebake(paths)
    paths.state_dir.mkdir(parents=True)
    (paths.state_dir / "state.json").write_text(json.dumps({"version": 1, "units": UNITS, "components": {}}))
    paths.unit_dir.mkdir(parents=True)
    for unit in UNITS:
        (paths.unit_dir / unit).write_text("the previous daemon's\n")
    head = head_start(paths, systemd_factory=no_systemd)  # type: ignore[arg-type]
    assert head.started == {} and head.systemd is None


def test_a_baked_file_that_does_not_load_stops_the_prebaked_units_no_daemon_took_over(paths: Paths) -> None:
    from podvm_bootstrap.errors import ConfigError

    prebake(paths)
    paths.unit_dir.mkdir(parents=True)
    (paths.unit_dir / UNITS[1]).write_text("a daemon's own\n")   # not a prebaked start waiting for this daemon
    paths.bootstrap_yaml.write_text("userdata: {provider: nowhere}\n")
    stopped: list[str] = []

    class Stopping(FakeSystemd):
        def stop(self, unit: str, on_done) -> None:
            stopped.append(unit)
    with pytest.raises(ConfigError, match="userdata.provider"):
        head_start(paths, systemd_factory=lambda: Stopping({}))  # type: ignore[arg-type,return-value]
    assert stopped == [UNITS[0]]
