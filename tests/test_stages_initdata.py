"""The overrides the pod's owner asks for in the initdata, as the daemon reads
them: after provisioning, from the initdata file it wrote under --root (the
one whose digest is bound), reached without following a symlink; and as
`plan` reads them: from the content the user-data would provision. Both give
the same plan; anything unusable is one error line and no request."""

from __future__ import annotations

import base64
import gzip
import logging
import os
from pathlib import Path

import pytest

from podvm_bootstrap.common.errors import UserDataError
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.runtime import stages
from podvm_bootstrap.userdata.provision import INITDATA_PATH, read_provisioned

CONFIG = Path(__file__).resolve().parent.parent / "image" / "config"
APF = "agent-protocol-forwarder"
REQUESTED = f"127.0.0.1:5000/podvm/{APF}@sha256:" + "5" * 64


def initdata_blob(entry: str) -> str:
    toml = f'algorithm = "sha256"\nversion = "0.1.0"\n[data]\n"podvm-bootstrap.yaml" = \'\'\'\n{entry}\'\'\'\n'
    return base64.b64encode(gzip.compress(toml.encode(), mtime=0)).decode()


def user_data(tmp_path: Path, blob: str) -> Path:
    path = tmp_path / "user-data"
    path.write_text(f"#cloud-config\nwrite_files:\n  - path: /run/peerpod/initdata\n    content: {blob}\n")
    return path


def boot_plan(tmp_path: Path, ud: Path, *, provision: bool) -> stages.BootPlan:
    (tmp_path / "root").mkdir(exist_ok=True)
    paths = Paths.build(root=str(tmp_path / "root"), config_dir=str(CONFIG))
    return stages.plan(paths, stages.UserDataSource(file=str(ud)), provision_files=provision)


def logged(caplog: pytest.LogCaptureFixture, fn):
    """fn()'s result and its log records (handler attached directly: the CLI's
    setup_logging may have turned propagation off)."""
    logger = logging.getLogger("podvm_bootstrap")
    attach = not logger.propagate   # else the record reaches caplog's handler twice
    if attach:
        logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="podvm_bootstrap"):
            result = fn()
    finally:
        if attach:
            logger.removeHandler(caplog.handler)
    return result, [(r.levelname, r.getMessage()) for r in caplog.records]


@pytest.mark.parametrize("provision", [True, False], ids=["run", "plan"])
def test_the_initdata_request_is_read_by_run_and_plan_alike(tmp_path, provision):
    ud = user_data(tmp_path, initdata_blob(f"images:\n  {APF}: {REQUESTED}\n"))
    planned = boot_plan(tmp_path, ud, provision=provision).plan.get(APF)
    assert planned is not None and planned.source == "override" and str(planned.image) == REQUESTED
    assert planned.override is not None and planned.override.requested_by == "initdata"
    assert (tmp_path / "root/run/peerpod/initdata").exists() == provision


def test_run_reads_the_file_it_provisioned_not_the_user_data(tmp_path):
    # The daemon honours what is on disk after provisioning: the initdata whose
    # digest the boot binds. Here provisioning cannot write it (run/peerpod is
    # a symlink, refused), so a file planted behind the symlink is not read.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "initdata").write_text(initdata_blob(f"images:\n  {APF}: {REQUESTED}\n"))
    (tmp_path / "root/run").mkdir(parents=True)
    (tmp_path / "root/run/peerpod").symlink_to(elsewhere)
    ud = user_data(tmp_path, initdata_blob(f"images:\n  {APF}: {REQUESTED}\n"))
    resolved = boot_plan(tmp_path, ud, provision=True)
    assert resolved.plan.get(APF).source == "default" and resolved.plan.get(APF).override is None
    assert any("is a symlink" in r.line() for r in resolved.provisioned)


def test_an_unusable_initdata_is_one_error_line_in_run(tmp_path, caplog):
    ud = user_data(tmp_path, "bm90IGd6aXA=")   # base64 of "not gzip"
    resolved, records = logged(caplog, lambda: boot_plan(tmp_path, ud, provision=True))
    assert resolved.plan.get(APF).source == "default"
    errors = [m for level, m in records if level == "ERROR"]
    assert errors == ['provision: cannot extract /run/peerpod/initdata: files not extracted: '
                      'initdata is not base64 of gzip data'], records


def test_a_malformed_requests_entry_is_one_error_line_and_the_defaults_run(tmp_path, caplog):
    ud = user_data(tmp_path, initdata_blob("images: [\n"))
    resolved, records = logged(caplog, lambda: boot_plan(tmp_path, ud, provision=True))
    assert all(p.source == "default" for p in resolved.plan.components)
    errors = [m for level, m in records if level == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("initdata podvm-bootstrap.yaml is not valid YAML: ")
    assert errors[0].endswith("; the initdata asks for no override")


def test_read_provisioned_reads_only_a_regular_file_bounded_and_never_blocks(tmp_path):
    root = tmp_path / "root"
    peerpod = root / "run/peerpod"
    peerpod.mkdir(parents=True)
    assert read_provisioned(root, INITDATA_PATH, 10) is None
    (peerpod / "initdata").write_bytes(b"x" * 10)
    assert read_provisioned(root, INITDATA_PATH, 10) == b"x" * 10
    (peerpod / "initdata").write_bytes(b"x" * 11)
    with pytest.raises(UserDataError, match="larger than 10 bytes"):
        read_provisioned(root, INITDATA_PATH, 10)
    (peerpod / "initdata").unlink()
    os.mkfifo(peerpod / "initdata")   # would block an open without O_NONBLOCK
    with pytest.raises(UserDataError, match="is a FIFO, not a regular file"):
        read_provisioned(root, INITDATA_PATH, 10)
    (peerpod / "initdata").unlink()
    (peerpod / "initdata").symlink_to(tmp_path / "target")
    (tmp_path / "target").write_text("x")
    with pytest.raises(UserDataError, match="a symbolic link"):
        read_provisioned(root, INITDATA_PATH, 10)
