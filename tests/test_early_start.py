"""The boot's head start (early_start.py) off the VM: when it must not touch
systemd at all, and how an early job's result reaches whoever takes the
start over. The early starts themselves run under real systemd in
tests/test_e2e_runtime_early.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.runtime.early_start import EarlyStart, head_start
from tests.test_cli_runtime import COMPONENTS, write_baked_files


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
    config = write_baked_files(tmp_path / "config")
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


def test_without_a_system_bus_the_boot_goes_on_without_a_head_start(tmp_path: Path, paths: Paths,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    conf = _store_with(tmp_path, monkeypatch, list(_defaults().values()))   # so that the head start asks systemd
    result = subprocess.run(
        [sys.executable, "-m", "podvm_bootstrap", "--root", str(paths.root), "--config-dir",
         str(paths.components_yaml.parent), "run", "--provider", "none"],
        capture_output=True, text=True, timeout=120, env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent",
                                                          "PATH": "/usr/bin:/bin", "CONTAINERS_STORAGE_CONF": conf})
    assert "no early start: cannot reach systemd on the system bus" in result.stderr
    assert "fetching the user-data, then planning" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "podvm-bootstrap: error: cannot reach systemd on the system bus")
    assert "Traceback" not in result.stderr


class Units:
    """systemd as the head start uses it (its unit loads, one start of all)."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def unit_loads(self, units: list[str]) -> dict[str, tuple[str | None, str | None]]:
        return {}

    def start_all(self, units: list[str], on_done: object) -> None:
        self.started += units


def _defaults() -> dict[str, str]:
    return {m.group(1): m.group(0) for m in re.finditer(r"quay\.io/\S+/([a-z-]+)@sha256:[0-9a-f]{64}", COMPONENTS)}


def _store_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, references: list[str]) -> str:
    """podman's store (no storage.conf's driver: guessed from its state) holding `references`."""
    graph = tmp_path / "storage"
    (graph / "vfs-images").mkdir(parents=True)
    records = [{"id": f"{i:064x}", "names": [ref], "digest": ref.split("@")[1]} for i, ref in enumerate(references)]
    (graph / "vfs-images" / "images.json").write_text(json.dumps(records))
    conf = tmp_path / "storage.conf"
    conf.write_text(f'[storage]\ngraphroot = "{graph}"\n')
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    monkeypatch.delenv("STORAGE_DRIVER", raising=False)
    return str(conf)


def test_only_the_defaults_already_in_storage_start_early(tmp_path: Path, paths: Paths,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A default not in storage yet would fail `podman run --pull=never`, and
    systemd's Restart= would then race the daemon's start after its pull:
    its unit waits for the daemon."""
    defaults = _defaults()
    assert len(defaults) >= 2
    present = sorted(defaults)[0]
    _store_with(tmp_path, monkeypatch, [defaults[present]])
    units = Units()
    head = head_start(paths, systemd_factory=lambda: units)  # type: ignore[arg-type,return-value]
    assert sorted(head.started) == [present] and units.started == [f"{present}.service"]
    assert sorted(p.name for p in paths.unit_dir.iterdir()) == [f"{present}.service"]


def test_with_no_default_in_storage_systemd_is_not_even_asked(tmp_path: Path, paths: Paths,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _store_with(tmp_path, monkeypatch, [])
    head = head_start(paths, systemd_factory=no_systemd)  # type: ignore[arg-type]
    assert head.started == {} and head.systemd is None and not paths.unit_dir.exists()


def test_an_unreadable_store_index_costs_only_the_head_start(tmp_path: Path, paths: Paths,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _store_with(tmp_path, monkeypatch, [])
    index = tmp_path / "storage" / "vfs-images" / "images.json"
    index.unlink()
    index.mkdir()      # reading it fails (EISDIR): no early start, no traceback
    head = head_start(paths, systemd_factory=no_systemd)  # type: ignore[arg-type]
    assert head.started == {} and head.systemd is None
