"""Command-line usage errors: exit 2 with a usage line, never a silently
ignored flag or a traceback."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podvm_bootstrap", *args], capture_output=True, text=True,
                          timeout=60)


def test_endpoint_with_a_user_data_file_is_refused_not_ignored(tmp_path):
    ud = tmp_path / "user-data"
    ud.write_text("#cloud-config\n")
    result = run("--config-dir", str(tmp_path), "plan", "--user-data", str(ud), "--endpoint", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert "--endpoint goes with a provider" in result.stderr and "Traceback" not in result.stderr


def test_global_options_are_accepted_after_the_command_too(tmp_path):
    result = run("status", "--state-dir", str(tmp_path), "--json")
    assert result.returncode == 1  # no state yet: one line naming the file
    assert str(tmp_path / "state.json") in result.stderr and result.stderr.count("\n") == 1


def test_unknown_command_is_a_usage_error():
    result = run("frobnicate")
    assert result.returncode == 2 and "usage:" in result.stderr
