"""The file provider and --user-data read only a regular file: without
blocking on a FIFO, never from a device or a directory, bounded in size; the
file provider never follows a symbolic link (the cidata medium is the host's)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from podvm_bootstrap.common.errors import UserDataError
from podvm_bootstrap.config.settings import UserDataSettings
from podvm_bootstrap.userdata.sources import fetch_userdata
from podvm_bootstrap.userdata.untrusted_file import read_userdata_file
from tests.test_userdata_providers import bounded

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "image" / "config"
CIDATA = "/media/cidata/user-data"
USER_DATA = b"#cloud-config\nwrite_files: []\n"


def plant(root: Path, kind: str) -> Path:
    """Something other than a regular file at the file provider's path."""
    path = root / CIDATA.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's: endless
    elif kind == "device-link":
        os.symlink("/dev/zero", path)
    elif kind == "symlink":
        target = root / "elsewhere"
        target.write_bytes(USER_DATA)
        os.symlink(target, path)
    return path


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "podvm_bootstrap", "--root", str(root), "--config-dir", str(CONFIG),
                           *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_a_regular_file_is_read_whole_and_an_absent_one_is_none(tmp_path):
    (tmp_path / "f").write_bytes(USER_DATA)
    assert read_userdata_file(tmp_path / "f", len(USER_DATA), what="x", follow_symlinks=False) == USER_DATA
    assert read_userdata_file(tmp_path / "absent", 10, what="x", follow_symlinks=False) is None


def test_a_file_larger_than_max_size_is_refused(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 101)
    with pytest.raises(UserDataError, match="is larger than max_size \\(100 bytes\\)"):
        read_userdata_file(tmp_path / "f", 100, what="x", follow_symlinks=True)


@pytest.mark.parametrize("kind, reason", [
    ("fifo", "is a FIFO, not a regular file"),
    ("directory", "is a directory, not a regular file"),
    ("device", "is a character device, not a regular file"),
    ("device-link", "is a symbolic link"),
    ("symlink", "is a symbolic link"),
])
def test_the_file_provider_refuses_what_is_not_a_regular_file_without_blocking(tmp_path, kind, reason):
    path = plant(tmp_path, kind)
    try:
        with pytest.raises(UserDataError, match=f"^file: user-data .* {reason}"):
            bounded(lambda: fetch_userdata(UserDataSettings(provider="file", file=CIDATA), root=tmp_path))
    finally:
        if kind == "fifo":  # a reader blocked in open() (the bug) is released by a writer's open
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # no reader waiting: the expected case


@pytest.mark.parametrize("target, reason", [
    ("/dev/zero", "is a character device, not a regular file"),
    ("fifo", "is a FIFO, not a regular file"),
])
def test_a_user_data_file_argument_follows_links_but_reads_only_a_regular_file(tmp_path, target, reason):
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
        target = str(tmp_path / "fifo")
    os.symlink(target, tmp_path / "ud")
    result = run_cli(tmp_path, "provision", "--user-data", str(tmp_path / "ud"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"podvm-bootstrap: error: user-data file {tmp_path / 'ud'} {reason}; refused"]


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_userdata_exits_1_with_one_line_and_plan_goes_on_with_the_defaults(tmp_path, kind):
    plant(tmp_path, kind)
    result = run_cli(tmp_path, "userdata", "--provider", "file")
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "refused" in result.stderr
    result = run_cli(tmp_path, "plan", "--json", "--provider", "auto")
    assert result.returncode == 0, result.stderr
    assert "user-data ignored: file: user-data" in result.stderr
    assert {c["source"] for c in json.loads(result.stdout)["components"]} == {"default"}
