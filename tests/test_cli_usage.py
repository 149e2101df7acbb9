"""Command-line usage errors: exit 2 with a usage line, never a silently
ignored flag or a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


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


# --- URLs that cannot be parsed: a usage or config error (exit 2), one line, never a traceback ---

BAD_URLS = ["http://[::1", "http://127.0.0.1:99999", "http://127.0.0.1:port", "http://127.0.0.1:0",
            "http://127.0.0.1 /x", "ftp://127.0.0.1", "http://", "http://127.0.0.1/?q=1"]


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("command", ["userdata", "plan", "run", "provision"])
def test_an_unparsable_endpoint_on_the_command_line_is_a_usage_error(tmp_path, command, url):
    result = run("--root", str(tmp_path), "--config-dir", str(tmp_path), command, "--provider", "aws",
                 "--endpoint", url)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "argument --endpoint: expected an http:// or https:// URL" in result.stderr


@pytest.mark.parametrize("url", BAD_URLS)
def test_an_unparsable_baked_endpoint_is_a_config_error_naming_file_and_key(tmp_path, url):
    (tmp_path / "bootstrap.yaml").write_text(f"userdata:\n  provider: aws\n  endpoints:\n    aws: '{url}'\n")
    result = run("--root", str(tmp_path), "--config-dir", str(tmp_path), "userdata")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"podvm-bootstrap: error: {tmp_path / 'bootstrap.yaml'}: userdata.endpoints.aws: ")
