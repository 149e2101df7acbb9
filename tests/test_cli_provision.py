"""`podvm-bootstrap provision --user-data FILE`, run as a real process."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

USER_DATA = b"""\
#cloud-config
write_files:
  - path: /run/peerpod/apf.json
    content: '{"pod-network": {}}'
  - path: /run/peerpod/aa.toml
    encoding: b64
    content: W3Rva2VuX2NvbmZpZ3Nd
    permissions: '0600'
  - path: /etc/shadow
    content: 'root::0:0:::::'
  - path: /run/peerpod/../../etc/passwd
    content: x
  - path: /run/peerpod/auth.json
    encoding: b64
    content: '!!!'
runcmd: [reboot]
"""


# What provisioning adds when the user-data carries no initdata: the
# cloud-api-adaptor's placeholder and its digest (its empty aa.toml only when
# the user-data wrote none).
PLACEHOLDER = ("wrote /run/peerpod/initdata (108 bytes, mode 0644, the cloud-api-adaptor's placeholder: "
               "the user-data carries no initdata)")
PLACEHOLDER_AA = "wrote /run/peerpod/aa.toml (0 bytes, mode 0644)"
PLACEHOLDER_DIGEST = "wrote /run/peerpod/initdata.digest (64 bytes, mode 0644)"
PLACEHOLDER_FILES = ["run/peerpod/initdata", "run/peerpod/initdata.digest"]


def run(root: Path, config: Path, user_data: Path, preexec=None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "podvm_bootstrap", "--root", str(root), "--config-dir", str(config),
         "provision", "--user-data", str(user_data)],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO, preexec_fn=preexec)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    root, config = tmp_path / "root", tmp_path / "config"
    root.mkdir()
    config.mkdir()
    return root, config


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def test_provision_writes_allowed_files_and_reports_each(dirs, tmp_path):
    root, config = dirs
    ud = tmp_path / "user-data"
    ud.write_bytes(USER_DATA)
    proc = run(root, config, ud)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "wrote /run/peerpod/apf.json (19 bytes, mode 0644)",
        "wrote /run/peerpod/aa.toml (15 bytes, mode 0600)",
        "refused /etc/shadow: not in the allow-list",
        "refused /run/peerpod/../../etc/passwd: not in the allow-list",
        PLACEHOLDER, PLACEHOLDER_DIGEST,
    ]
    # the undecodable entry is a problem line on stderr, the rest went on
    assert proc.stderr.splitlines() == [
        "podvm-bootstrap: error: user-data: write_files[4]: (/run/peerpod/auth.json) content is not valid base64; "
        "entry skipped"]
    peerpod = root / "run" / "peerpod"
    assert (peerpod / "apf.json").read_bytes() == b'{"pod-network": {}}'
    assert (peerpod / "aa.toml").read_bytes() == b"[token_configs]"
    assert stat.S_IMODE((peerpod / "aa.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE((peerpod / "apf.json").stat().st_mode) == 0o644
    assert files_under(root) == ["run/peerpod/aa.toml", "run/peerpod/apf.json", *PLACEHOLDER_FILES]


@pytest.mark.parametrize("wrap", [
    lambda b: base64.b64encode(b),
    gzip.compress,
    lambda b: base64.b64encode(gzip.compress(b)),
], ids=["base64", "gzip", "base64-gzip"])
def test_encoded_payloads_are_provisioned_the_same(dirs, tmp_path, wrap):
    root, config = dirs
    ud = tmp_path / "user-data"
    ud.write_bytes(wrap(USER_DATA))
    proc = run(root, config, ud)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["wrote /run/peerpod/apf.json (19 bytes, mode 0644)",
                                            "wrote /run/peerpod/aa.toml (15 bytes, mode 0600)"]
    assert (root / "run/peerpod/aa.toml").read_bytes() == b"[token_configs]"


def test_initdata_is_extracted(dirs, tmp_path):
    root, config = dirs
    toml = b'algorithm = "sha256"\nversion = "0.1.0"\n[data]\n"aa.toml" = "[token_configs]\\n"\n'
    blob = base64.b64encode(gzip.compress(toml)).decode()
    ud = tmp_path / "user-data"
    ud.write_text(f"#cloud-config\nwrite_files:\n  - path: /run/peerpod/initdata\n    content: {blob}\n")
    proc = run(root, config, ud)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"wrote /run/peerpod/initdata ({len(blob)} bytes, mode 0644)",
        "wrote /run/peerpod/aa.toml (16 bytes, mode 0644)",
        "wrote /run/peerpod/initdata.digest (64 bytes, mode 0644)",
    ]
    assert (root / "run/peerpod/initdata.digest").read_text() == hashlib.sha256(toml).hexdigest()


def test_newline_in_a_path_cannot_forge_an_output_line(dirs, tmp_path):
    root, config = dirs
    ud = tmp_path / "user-data"
    ud.write_text('#cloud-config\nwrite_files:\n'
                  '  - {path: "/etc/x\\nwrote /run/peerpod/auth.json (1 bytes, mode 0644)", content: x}\n')
    proc = run(root, config, ud)
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [
        "refused '/etc/x\\nwrote /run/peerpod/auth.json (1 bytes, mode 0644)': not in the allow-list",
        PLACEHOLDER, PLACEHOLDER_AA, PLACEHOLDER_DIGEST]


def test_allow_list_comes_from_bootstrap_yaml(dirs, tmp_path):
    root, config = dirs
    (config / "bootstrap.yaml").write_text("provision:\n  allowed_paths: [/run/peerpod/apf.json]\n")
    ud = tmp_path / "user-data"
    ud.write_bytes(USER_DATA)
    proc = run(root, config, ud)
    assert proc.returncode == 0, proc.stderr
    assert "refused /run/peerpod/aa.toml: not in the allow-list" in proc.stdout.splitlines()
    # the placeholder is not user-data: the allow-list does not apply to it
    assert files_under(root) == ["run/peerpod/aa.toml", "run/peerpod/apf.json", *PLACEHOLDER_FILES]
    assert (root / "run/peerpod/aa.toml").read_bytes() == b""


def test_failed_write_keeps_the_old_file_and_no_temp_file(dirs, tmp_path):
    """A real write failure: the process may not write files past 4 KiB (EFBIG)."""
    root, config = dirs
    peerpod = root / "run" / "peerpod"
    peerpod.mkdir(parents=True)
    (peerpod / "apf.json").write_bytes(b"old content")
    ud = tmp_path / "user-data"
    ud.write_text("#cloud-config\nwrite_files:\n"
                  f"  - {{path: /run/peerpod/apf.json, content: '{'x' * 10000}'}}\n"
                  "  - {path: /run/peerpod/aa.toml, content: small}\n")

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = run(root, config, ud, preexec=limit_file_size)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "failed /run/peerpod/apf.json: cannot write: File too large"
    assert lines[1] == "wrote /run/peerpod/aa.toml (5 bytes, mode 0644)"
    assert (peerpod / "apf.json").read_bytes() == b"old content"
    assert sorted(p.name for p in peerpod.iterdir()) == ["aa.toml", "apf.json", "initdata", "initdata.digest"]


@pytest.mark.parametrize("content, message", [
    (bytes(range(256)) * 4, "user-data is not UTF-8 text"),
    (b"#cloud-config\nwrite_files:\n  - path: /run/peerpod/apf.json\n   content: x\n", "not valid YAML"),
    (b"#!/bin/sh\necho pwned > /run/peerpod/apf.json\n", "script"),
    (gzip.compress(USER_DATA)[:-20], "not valid gzip"),
    (b"#cloud-config\n" + b"#" * (300 * 1024), "larger than max_size"),
    (gzip.compress(b"#cloud-config\n" + b" " * (10 * 1024 * 1024)), "decompresses to more than"),
], ids=["binary", "yaml", "script", "truncated-gzip", "oversize", "gzip-bomb"])
def test_unusable_user_data_is_one_error_line_and_nothing_written(dirs, tmp_path, content, message):
    root, config = dirs
    ud = tmp_path / "user-data"
    ud.write_bytes(content)
    proc = run(root, config, ud)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("podvm-bootstrap: error: ")
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert files_under(root) == []


def test_unreadable_user_data_file_is_one_error_line(dirs, tmp_path):
    root, config = dirs
    proc = run(root, config, tmp_path / "does-not-exist")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"podvm-bootstrap: error: cannot read user-data file {tmp_path / 'does-not-exist'}: No such file or directory"]
    assert files_under(root) == []


def test_without_user_data_the_adaptors_placeholder_is_provisioned(dirs, tmp_path):
    """An empty user-data is none at all: the placeholder is still written,
    as the adaptor's process-user-data writes it for a pod without initdata."""
    root, config = dirs
    ud = tmp_path / "user-data"
    ud.write_bytes(b"")
    proc = run(root, config, ud)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [PLACEHOLDER, PLACEHOLDER_AA, PLACEHOLDER_DIGEST]
    assert (root / "run/peerpod/initdata.digest").read_text() == (
        "adb48cc14fea9403d3d51f3b5f5068fd4d80445a14e94f1b3d5dbabaad66478d")
