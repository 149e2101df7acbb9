"""`podvm-bootstrap userdata` as a user runs it, against fake metadata services on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.metadata import running_metadata_server

REPO = Path(__file__).resolve().parent.parent
USER_DATA = b"#cloud-config\nwrite_files:\n  - path: /run/peerpod/apf.json\n    content: '{}'\n"


def run_cli(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "podvm_bootstrap", "--root", str(tmp_path / "root"), "--config-dir", str(config),
         *args], cwd=REPO, env=env, capture_output=True, timeout=timeout)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prints_the_user_data_exactly(tmp_path):
    with running_metadata_server("aws", user_data=USER_DATA) as fake:
        result = run_cli(tmp_path, "userdata", "--provider", "aws", "--endpoint", fake.url)
    assert (result.returncode, result.stdout) == (0, USER_DATA), result.stderr
    assert [r.method for r in fake.requests] == ["PUT", "GET"]


def test_prints_azure_user_data_without_its_base64_transport(tmp_path):
    with running_metadata_server("azure", user_data=USER_DATA) as fake:
        result = run_cli(tmp_path, "userdata", "--provider", "azure", "--endpoint", fake.url)
    assert (result.returncode, result.stdout) == (0, USER_DATA), result.stderr


def test_no_user_data_prints_nothing_and_succeeds(tmp_path):
    with running_metadata_server("aws", user_data=None) as fake:
        result = run_cli(tmp_path, "userdata", "--provider", "aws", "--endpoint", fake.url)
    assert (result.returncode, result.stdout) == (0, b""), result.stderr
    assert b"Traceback" not in result.stderr


def test_unreachable_fails_with_exactly_one_line(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    result = run_cli(tmp_path, "--log-level", "error", "userdata", "--provider", "aws", "--endpoint", url,
                     "--timeout", "1")
    assert result.returncode == 1
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("podvm-bootstrap: error: aws: cannot fetch IMDSv2 token")
    assert "within 1s" in lines[0] and "connection failed" in lines[0]


def test_unreachable_at_default_log_level_logs_retries_then_one_error_line(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    result = run_cli(tmp_path, "userdata", "--provider", "alibaba", "--endpoint", url, "--timeout", "1")
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert b"Traceback" not in result.stderr
    assert lines[-1].startswith("podvm-bootstrap: error: alibaba: cannot fetch user-data")
    retries = lines[:-1]
    assert retries and all(line.startswith("podvm-bootstrap: warning: alibaba: user-data: attempt ")
                           for line in retries), lines


def test_provider_and_endpoint_come_from_bootstrap_yaml(tmp_path):
    with running_metadata_server("gcp", user_data=USER_DATA) as fake:
        (tmp_path / "config").mkdir()
        (tmp_path / "config/bootstrap.yaml").write_text(
            f"userdata:\n  provider: gcp\n  timeout: 5s\n  endpoints:\n    gcp: {fake.url}\n")
        result = run_cli(tmp_path, "userdata")
    assert (result.returncode, result.stdout) == (0, USER_DATA), result.stderr
    assert fake.requests[0].header("Metadata-Flavor") == "Google"


def test_a_bad_bootstrap_yaml_exits_2_naming_file_and_key(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config/bootstrap.yaml").write_text("userdata:\n  endpoints:\n    aws: ftp://x\n")
    result = run_cli(tmp_path, "userdata")
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"podvm-bootstrap: error: {tmp_path}/config/bootstrap.yaml: userdata.endpoints.aws: "
        "expected an http:// or https:// URL with no query, got 'ftp://x'"]


def test_file_provider_reads_under_root(tmp_path):
    (tmp_path / "root/media/cidata").mkdir(parents=True)
    (tmp_path / "root/media/cidata/user-data").write_bytes(USER_DATA)
    result = run_cli(tmp_path, "userdata", "--provider", "file")
    assert (result.returncode, result.stdout) == (0, USER_DATA), result.stderr


def test_auto_detects_the_cloud_under_root(tmp_path):
    dmi = tmp_path / "root/sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_name").write_text("Alibaba Cloud ECS\n")
    with running_metadata_server("alibaba", user_data=USER_DATA) as fake:
        result = run_cli(tmp_path, "userdata", "--endpoint", fake.url)
    assert (result.returncode, result.stdout) == (0, USER_DATA), result.stderr


def test_fake_metadata_service_runs_as_a_script_until_sigterm(tmp_path):
    user_data = tmp_path / "ud"
    user_data.write_bytes(USER_DATA)
    fake = subprocess.Popen([sys.executable, "-m", "tests.fakes.metadata", "--cloud", "aws", "--port", "0",
                             "--user-data", str(user_data)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        url = fake.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:")
        result = run_cli(tmp_path, "userdata", "--provider", "aws", "--endpoint", url, "--timeout", "10")
        assert (result.returncode, result.stdout) == (0, USER_DATA), result.stderr
    finally:
        fake.send_signal(signal.SIGTERM)
        try:
            code = fake.wait(timeout=15)
        except subprocess.TimeoutExpired:
            fake.kill()
            fake.wait(timeout=5)
            pytest.fail("the fake metadata service did not stop on SIGTERM")
    assert code == 0
