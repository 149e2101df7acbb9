"""`run`, `status` and `verify` on this machine, through the real command line.

There is no system bus here (no systemd as PID 1): `run` gets as far as
provisioning and the plan, then stops with one line; `status` falls back to
state.json with a note. The full daemon is exercised in the pod VM
(test_e2e_runtime.py)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from podvm_bootstrap.runtime.state import write_state
from tests.bed.registry import Registry, running_registry
from tests.runtime_podman import Podman

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
DIGEST_C = "sha256:" + "c" * 64
COMPONENTS = f"""\
version: 1
components:
  attestation-agent:
    image: quay.io/confidential-containers/attestation-agent@{DIGEST_A}
    ready: {{unix_socket: /run/confidential-containers/aa.sock}}
  agent-protocol-forwarder:
    image: quay.io/confidential-containers/agent-protocol-forwarder@{DIGEST_B}
    after: [attestation-agent]
    essential: true
    ready: {{tcp: 127.0.0.1:15150}}
"""
POLICY = """\
version: 1
mutable_tags: false
on_rejected_override: use-default
components:
  agent-protocol-forwarder:
    repositories: [ghcr.io/example/*]
"""


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podvm_bootstrap", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent",
                                            **(env or {})})


def write_baked_files(config: Path) -> Path:
    """The three baked files of these tests (no user-data provider) in `config`."""
    config.mkdir(parents=True, exist_ok=True)
    (config / "components.yaml").write_text(COMPONENTS)
    (config / "policy.yaml").write_text(POLICY)
    (config / "bootstrap.yaml").write_text("userdata: {provider: none}\n")
    return config


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    return write_baked_files(tmp_path / "config")


def test_run_provisions_saves_user_data_and_plan_then_needs_systemd(tmp_path: Path, config: Path) -> None:
    root = tmp_path / "root"
    userdata = tmp_path / "user-data"
    userdata.write_text("#cloud-config\nwrite_files:\n  - path: /run/peerpod/apf.json\n    content: '{}'\n"
                        "  - path: /etc/shadow\n    content: x\n"
                        f"podvm_bootstrap:\n  images:\n    agent-protocol-forwarder: ghcr.io/example/apf@{DIGEST_C}\n")
    result = cli("--root", str(root), "--config-dir", str(config), "run", "--user-data", str(userdata))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors[-1].startswith("podvm-bootstrap: error: cannot reach systemd on the system bus")
    assert "Traceback" not in result.stderr
    state_dir = root / "run" / "podvm-bootstrap"
    saved = state_dir / "user-data"
    assert saved.read_bytes() == userdata.read_bytes() and (saved.stat().st_mode & 0o777) == 0o600
    assert (root / "run" / "peerpod" / "apf.json").read_text() == "{}"
    assert not (root / "etc" / "shadow").exists()
    plan = json.loads((state_dir / "plan.json").read_text())
    apf = next(c for c in plan["components"] if c["name"] == "agent-protocol-forwarder")
    assert apf["source"] == "override" and apf["digest"] == DIGEST_C
    assert plan["start_order"] == [["attestation-agent"], ["agent-protocol-forwarder"]]


def initdata_blob(images: dict[str, str]) -> str:
    entry = "images:\n" + "".join(f"  {name}: {ref}\n" for name, ref in images.items())
    toml = f'algorithm = "sha256"\nversion = "0.1.0"\n[data]\n"podvm-bootstrap.yaml" = \'\'\'\n{entry}\'\'\'\n'
    return base64.b64encode(gzip.compress(toml.encode(), mtime=0)).decode()


def test_run_takes_the_initdata_request_over_the_user_data_one(tmp_path: Path, config: Path) -> None:
    root = tmp_path / "root"
    owner, host = f"ghcr.io/example/apf@{DIGEST_C}", f"ghcr.io/example/other@{DIGEST_A}"
    userdata = tmp_path / "user-data"
    userdata.write_text("#cloud-config\nwrite_files:\n  - path: /run/peerpod/initdata\n"
                        f"    content: {initdata_blob({'agent-protocol-forwarder': owner})}\n"
                        f"podvm_bootstrap:\n  images:\n    agent-protocol-forwarder: {host}\n"
                        f"    attestation-agent: {host}\n")
    result = cli("--root", str(root), "--config-dir", str(config), "run", "--user-data", str(userdata))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert ("podvm-bootstrap: info: override for agent-protocol-forwarder accepted (asked in the initdata): "
            "allowed by ghcr.io/example/*; the user-data asked too, the initdata wins; "
            f"image {owner}") in result.stderr.splitlines()
    plan = json.loads((root / "run/podvm-bootstrap/plan.json").read_text())
    by_name = {c["name"]: c for c in plan["components"]}
    assert by_name["agent-protocol-forwarder"]["image"] == owner
    assert by_name["agent-protocol-forwarder"]["override"] == {
        "requested": owner, "accepted": True, "requested_by": "initdata",
        "reason": "allowed by ghcr.io/example/*; the user-data asked too, the initdata wins"}
    assert by_name["attestation-agent"]["override"]["requested_by"] == "user-data"
    assert by_name["attestation-agent"]["override"]["accepted"] is False


def test_status_says_which_source_asked(tmp_path: Path, config: Path) -> None:
    from podvm_bootstrap.config.manifest import load_manifest
    from podvm_bootstrap.config.planner import make_plan
    from podvm_bootstrap.config.policy import load_policy
    from podvm_bootstrap.runtime.state import state_record

    owner, host = f"ghcr.io/example/apf@{DIGEST_C}", f"ghcr.io/example/aa@{DIGEST_C}"
    plan = make_plan(load_manifest(config / "components.yaml"), load_policy(config / "policy.yaml"),
                     {"attestation-agent": host}, initdata_overrides={"agent-protocol-forwarder": owner})
    planned = {p.name: p for p in plan.components}
    snapshot = {name: {"state": "ready", "health": "passing", "essential": True, "restarts": 0} for name in planned}
    write_state(tmp_path, state_record(
        daemon={"pid": os.getpid(), "phase": "supervising", "ready": True, "status": "x"}, boot={},
        units=[p.unit for p in plan.components], planned=planned, snapshot=snapshot, resolved_from={},
        unit_hashes={}, live={}))
    status = json.loads(cli("--state-dir", str(tmp_path), "status", "--json").stdout)
    by_name = {c["name"]: c for c in status["components"]}
    assert by_name["agent-protocol-forwarder"]["override"]["requested_by"] == "initdata"
    assert by_name["attestation-agent"]["override"]["requested_by"] == "user-data"
    human = cli("--state-dir", str(tmp_path), "status").stdout.splitlines()
    apf_row = next(line for line in human if line.startswith("agent-protocol-forwarder*"))
    assert " override from initdata " in apf_row and apf_row.split()[-2] == owner
    assert ("refused override for attestation-agent (asked in the user-data): "
            f"{host}: the policy allows no override for attestation-agent") in human


def _state(state_dir: Path, apf_state: str, restarts: int = 0, pid: int | None = None) -> None:
    def entry(unit: str, image: str, state: str, essential: bool, restarts: int = 0) -> dict:
        return {"unit": unit, "image": image, "digest": image.split("@")[1], "source": "default", "override": None,
                "state": state, "health": "passing" if state == "ready" else "failing", "essential": essential,
                "restarts": restarts, "crash_loop": state == "crash-loop",
                "last_error": None if state == "ready" else "unit agent-protocol-forwarder.service is failed",
                "started": None, "ready": None, "unit_hash": None, "active_state": "active", "sub_state": "running"}
    write_state(state_dir, {
        "daemon": {"pid": pid or os.getpid(), "phase": "supervising", "ready": apf_state == "ready",
                   "status": "x"},
        "boot": {}, "units": ["attestation-agent.service", "agent-protocol-forwarder.service"],
        "components": {
            "attestation-agent": entry("attestation-agent.service", f"quay.io/c/aa@{DIGEST_A}", "ready", False),
            "agent-protocol-forwarder": entry("agent-protocol-forwarder.service", f"quay.io/c/apf@{DIGEST_B}",
                                              apf_state, True, restarts),
        }})


def test_status_without_state_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = cli("--state-dir", str(tmp_path / "none"), "status")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"podvm-bootstrap: error: no daemon state: {tmp_path / 'none' / 'state.json'} does not exist or is "
        "unreadable (has `run` started?)"]


def test_status_reads_state_and_says_the_bus_is_missing(tmp_path: Path) -> None:
    _state(tmp_path, "ready")
    result = cli("--state-dir", str(tmp_path), "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["ok"] is True and status["live"] is False
    assert "system bus unavailable" in status["note"] and status["daemon"]["running"] is True
    names = {c["name"]: c for c in status["components"]}
    assert names["agent-protocol-forwarder"]["state"] == "ready" and names["attestation-agent"]["digest"] == DIGEST_A
    human = cli("--state-dir", str(tmp_path), "status")
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert lines[0].startswith(f"daemon: pid {os.getpid()} running, supervising, READY sent")
    assert lines[1].startswith("note: system bus unavailable")
    assert lines[2].split() == ["COMPONENT", "UNIT", "STATE", "HEALTH", "RESTARTS", "ACTIVE", "SOURCE", "SIGNED-BY",
                                "IMAGE", "LAST", "ERROR"]
    assert lines[4].split()[:5] == ["agent-protocol-forwarder*", "agent-protocol-forwarder.service", "ready",
                                    "passing", "0"]


def test_status_exit_1_when_an_essential_component_is_not_ready(tmp_path: Path) -> None:
    _state(tmp_path, "crash-loop", restarts=7, pid=2 ** 22 + 1)
    result = cli("--state-dir", str(tmp_path), "status", "--json")
    assert result.returncode == 1
    status = json.loads(result.stdout)
    apf = next(c for c in status["components"] if c["name"] == "agent-protocol-forwarder")
    assert apf["state"] == "crash-loop" and apf["restarts"] == 7 and apf["crash_loop"] is True
    assert status["daemon"]["running"] is False


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.mark.podman
def test_verify_one_line_per_image_and_exit_code(tmp_path: Path, config: Path, registry: Registry) -> None:
    with Podman.running([registry.host]) as podman:
        local = podman.make_image("verify")
        digest = registry.push_podman_image(local, "c/aa", "1", podman=podman.argv)
        good = f"{registry.host}/c/aa@{digest}"
        podman.cli("pull", "--quiet", good)
        (config / "bootstrap.yaml").write_text(f"runtime: {{podman_socket: {podman.socket}}}\n")
        state_dir = tmp_path / "state"
        _state(state_dir, "ready")
        state = json.loads((state_dir / "state.json").read_text())
        state["components"]["attestation-agent"]["image"] = good
        (state_dir / "state.json").write_text(json.dumps(state))
        args = ("--config-dir", str(config), "--state-dir", str(state_dir), "verify")
        # The store this podman keeps, as a pod VM's storage.conf says it.
        env = {"CONTAINERS_STORAGE_CONF": str(podman.storage_conf())}
        result = cli(*args, env=env)
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            f"ok attestation-agent {good} (image {podman.cli('image', 'inspect', '--format', '{{.Id}}', good)[:12]})",
            f"FAILED agent-protocol-forwarder quay.io/c/apf@{DIGEST_B}: quay.io/c/apf@{DIGEST_B} is not in local "
            "storage"]
        del state["components"]["agent-protocol-forwarder"]
        (state_dir / "state.json").write_text(json.dumps(state))
        assert cli(*args, env=env).returncode == 0
