"""`podvm-bootstrap collect` through the real command line on a --root tree:
the tree is made by the daemon's own steps (`run` provisions the planted
secrets, saves the user-data and writes plan.json, then stops for want of
systemd on this machine; `render` writes the units), and the bundle is
searched, member by member, for every planted secret. The booted-VM test
is test_e2e_collect.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from podvm_bootstrap.cli.collect import eventlog_path
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.settings import load_settings
from podvm_bootstrap.runtime.state import write_state
from tests.planted_secrets import (
    AA_TOML,
    AUTH_JSON,
    CDH_TOML,
    KBS_TOKEN,
    OVERRIDE,
    PREFIX,
    assert_manifest_tells_the_truth,
    assert_no_secret_in_bundle,
    bundle_members,
    sha256,
    userdata_text,
)
from tests.test_cli_runtime import COMPONENTS, write_baked_files

REPO = Path(__file__).resolve().parents[1]
UNITS = ("attestation-agent.service", "agent-protocol-forwarder.service")


def cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "podvm_bootstrap", *map(str, args)], capture_output=True,
                          timeout=180, cwd=cwd,
                          env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent"})


def baked_tree(root: Path) -> Path:
    config = write_baked_files(root / "etc" / "podvm-bootstrap")
    unit = root / "usr" / "lib" / "systemd" / "system"
    unit.mkdir(parents=True)
    shutil.copy(REPO / "systemd" / "podvm-bootstrap.service", unit)
    return config


def test_a_bundle_of_a_provisioned_tree_carries_every_part_and_no_secret(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = baked_tree(root)
    userdata = tmp_path / "user-data"
    userdata.write_bytes(userdata_text())
    run = cli("--root", root, "run", "--user-data", userdata)
    assert run.returncode == 1 and b"cannot reach systemd" in run.stderr  # provisioned and planned, then stopped
    peerpod, state_dir, unit_dir = root / "run/peerpod", root / "run/podvm-bootstrap", root / "run/systemd/system"
    assert (peerpod / "auth.json").read_bytes() == AUTH_JSON and (peerpod / "cdh.toml").read_bytes() == CDH_TOML
    assert cli("--root", root, "render", "--user-data", userdata, "--output", unit_dir).returncode == 0
    # a daemon that once recorded an error quoting a secret value: scrubbed from the copy
    write_state(state_dir, {"daemon": {"pid": 1, "phase": "supervising"}, "boot": {}, "units": list(UNITS),
                            "components": {"attestation-agent": {"unit": UNITS[0], "state": "failed",
                                                                 "last_error": f"token {KBS_TOKEN} refused"}}})
    log = eventlog_path(Paths.build(root=str(root)), load_settings(config / "bootstrap.yaml"))
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"the launch's event log, as the daemon left it\n")

    result = cli("--root", root, "collect", "--output", tmp_path / "bundle.tar.gz")
    assert result.returncode == 0, result.stderr
    bundle = (tmp_path / "bundle.tar.gz").read_bytes()
    assert (tmp_path / "bundle.tar.gz").stat().st_mode & 0o777 == 0o600
    assert_no_secret_in_bundle(bundle)
    members = bundle_members(bundle)
    parts = assert_manifest_tells_the_truth(members, result.stderr)

    assert members["version.txt"].decode().startswith("podvm-bootstrap 0.1.0 manifest sha256:")
    plan = json.loads(members["state/plan.json"])
    assert plan == json.loads((state_dir / "plan.json").read_bytes())
    assert next(c for c in plan["components"] if c["name"] == "agent-protocol-forwarder")["image"] == OVERRIDE
    state = json.loads(members["state/state.json"])
    assert state["components"]["attestation-agent"]["last_error"] == "token <redacted> refused"
    assert parts["state/state.json"]["scrubbed"] == 1
    status = json.loads(members["status.json"])
    assert [c["name"] for c in status["components"]] == ["attestation-agent"]
    assert members["config/components.yaml"].decode() == COMPONENTS
    assert parts["config/components.lock.json"]["absent"].endswith("does not exist")
    for unit in UNITS:
        assert members[f"units/{unit}"] == (unit_dir / unit).read_bytes()
    assert members["units/podvm-bootstrap.service"] == (REPO / "systemd" / "podvm-bootstrap.service").read_bytes()
    # the event log as it is, and its replay as `measurements` gives it
    assert members["eventlog/eventlog"] == log.read_bytes()
    for name, extra in (("replay.txt", ()), ("replay.json", ("--json",))):
        direct = cli("--root", root, "measurements", "--log", log, *extra)
        assert members.get(f"eventlog/{name}", b"") == direct.stdout
        assert parts[f"eventlog/{name}"]["exit_status"] == direct.returncode
    # one journal part per unit of the plan (this machine has no journal under the tree: reasons)
    assert {n for n in parts if n.startswith("journal/")} == {
        f"journal/{u}.log" for u in ("podvm-bootstrap.service", *UNITS)}
    assert parts["podman/ps.txt"]["error"] == f"no container storage at {root / 'var/lib/containers/storage'}"
    tee = json.loads(members["tee.json"])
    assert tee["tee"]["plan"] == plan["tee"] == "none" and tee["tpm"]["used"] is None
    assert "tpm/pcrs.txt" not in parts   # no TPM: nothing to read, and no error

    # the secret-bearing files: named, sizes and digests of what is on disk, no value
    redacted = {f["file"]: f for f in json.loads(members["redacted.json"])["files"]}
    on_disk = {f"/run/peerpod/{n}": peerpod / n for n in ("auth.json", "apf.json", "aa.toml", "cdh.toml", "initdata",
                                                           "policy.rego", "initdata.digest")}
    on_disk["/run/podvm-bootstrap/user-data"] = state_dir / "user-data"
    assert set(redacted) == set(on_disk)
    for name, path in on_disk.items():
        data = path.read_bytes()
        assert (redacted[name]["size"], redacted[name]["sha256"]) == (len(data), sha256(data)), name
    assert redacted["/run/peerpod/aa.toml"]["shape"]["token_configs"]["kbs"]["token"].startswith("<redacted: string")
    assert redacted["/run/peerpod/aa.toml"]["size"] == len(AA_TOML)
    assert redacted["/run/peerpod/initdata.digest"]["value"] == (peerpod / "initdata.digest").read_text()
    assert redacted["/run/podvm-bootstrap/user-data"]["user-data"]["overrides_requested"] == [
        "agent-protocol-forwarder"]


@pytest.fixture()
def short_root() -> Iterator[Path]:
    """A tree whose path is short enough for podman's runroot (at most 50 characters)."""
    root = Path(tempfile.mkdtemp(prefix="pvc-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_parts_that_cannot_be_had_are_reasons_and_the_bundle_still_goes_to_stdout(tmp_path: Path,
                                                                                   short_root: Path) -> None:
    config, state = tmp_path / "config", tmp_path / "state"
    config.mkdir()
    state.mkdir()
    (state / "plan.json").write_text("{not json")
    (short_root / "var/lib/containers/storage").mkdir(parents=True)   # an empty store: real podman answers
    result = cli("--root", short_root, "--config-dir", config, "--state-dir", state, "collect", "--output", "-")
    assert result.returncode == 0, result.stderr
    members = bundle_members(result.stdout)
    parts = assert_manifest_tells_the_truth(members, result.stderr)
    assert members["state/plan.json"] == b"{not json"      # kept as it is: a broken record is evidence
    assert parts["state/state.json"]["error"] == f"{state / 'state.json'} does not exist"
    assert parts["config/components.yaml"]["error"] == f"{config / 'components.yaml'} does not exist"
    assert parts["config/bootstrap.yaml"]["absent"] == f"{config / 'bootstrap.yaml'} does not exist"
    assert parts["version.txt"]["exit_status"] == 2 and "components.yaml" in parts["version.txt"]["error"]
    assert parts["podman/inspect.json"]["error"] == "no planned image (no plan.json)"
    assert members["podman/ps.txt"].split()[:2] == [b"CONTAINER", b"ID"], parts["podman/ps.txt"]
    assert "error" not in parts["podman/ps.txt"]
    assert parts["eventlog/eventlog"]["error"].endswith("does not exist") and "eventlog/replay.txt" not in parts
    # no plan, no state, no manifest: only the daemon's own journal is asked for
    assert [n for n in parts if n.startswith("journal/")] == ["journal/podvm-bootstrap.service.log"]
    assert json.loads(members["redacted.json"])["files"] == []


def test_a_bundle_that_cannot_be_written_is_exit_1_and_one_line(tmp_path: Path) -> None:
    result = cli("--root", tmp_path, "collect", "--output", tmp_path / "missing" / "b.tar.gz")
    assert result.returncode == 1
    last = result.stderr.decode().strip().splitlines()[-1]
    assert last.startswith(f"{PREFIX}cannot write the bundle to {tmp_path / 'missing' / 'b.tar.gz'}: ")
    assert "Traceback" not in result.stderr.decode()


def test_the_default_name_says_host_boot_and_time_under_the_current_directory(tmp_path: Path) -> None:
    out = tmp_path / "here"
    out.mkdir()
    result = cli("--root", tmp_path / "root", "collect", cwd=out)
    assert result.returncode == 0
    (written,) = out.iterdir()
    assert written.name.startswith("podvm-collect-") and written.name.endswith(".tar.gz")
    assert result.stderr.decode().strip().splitlines()[-1].startswith(f"{written} (")
    members = bundle_members(written.read_bytes())
    assert json.loads(members["MANIFEST.json"])["bundle"] == written.name.removesuffix(".tar.gz")
