"""Azure CVM detection against a real (software) TPM: swtpm on loopback holds
an HCL report in NV index 0x01400001, written there with tpm2-tools the way
Azure's paravisor provisions it; the detection reads it back through
tpm2-pytss, the edge the pod VM uses on /dev/tpmrm0."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from podvm_bootstrap.tee import (HCL_REPORT_NV_INDEX, MAX_NV_READ, RootFiles, detect_for_root, detect_tee,
                                 tpm_nv_reader)
from tests.bed.proc import Service, free_port, port_open
from tests.test_tee import hcl_report, make_root

import tpm2_pytss  # noqa: E402,F401  (make deps installs it: no silent skip when it is missing)

NV_INDEX = f"0x{HCL_REPORT_NV_INDEX:08x}"


@contextmanager
def swtpm(workdir: Path) -> Iterator[str]:
    """A software TPM on 127.0.0.1 (free ports), stopped by its PID; yields its TCTI."""
    state = workdir / "state"
    state.mkdir(parents=True)
    for _ in range(20):  # the swtpm TCTI expects the control channel at port + 1
        port = free_port()
        if not port_open(port + 1):
            break
    service = Service("swtpm", ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
                                "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                                "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                                "--flags", "not-need-init,startup-clear"], workdir / "swtpm.log")
    try:
        service.wait_ready(lambda: port_open(port + 1), 20, "listening")
        yield f"swtpm:host=127.0.0.1,port={port}"
    finally:
        service.stop()


def tpm2(tcti: str, *argv: str) -> None:
    out = subprocess.run(list(argv), env={**os.environ, "TPM2TOOLS_TCTI": tcti}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, f"{' '.join(argv)}: {out.stderr}"


def provision_hcl_report(tcti: str, workdir: Path, report: bytes) -> None:
    """What Azure's paravisor does at boot: an owner-readable NV index holding the report."""
    (workdir / "report.bin").write_bytes(report)
    tpm2(tcti, "tpm2_nvdefine", NV_INDEX, "-C", "o", "-s", str(len(report)), "-a", "ownerread|ownerwrite")
    tpm2(tcti, "tpm2_nvwrite", NV_INDEX, "-C", "o", "-i", str(workdir / "report.bin"))


@pytest.mark.parametrize("report_type, tee", [(2, "az-snp-vtpm"), (4, "az-tdx-vtpm")])
def test_an_azure_cvm_is_told_by_the_vtpm_hcl_report(tmp_path, report_type, tee):
    # swtpm's NV indices hold at most 2 KiB: a report cut after the isolation
    # type (what detection reads) is enough; the real one is about 2.5 KiB.
    report = hcl_report(report_type, size=1400)
    with swtpm(tmp_path) as tcti:
        read = tpm_nv_reader(tmp_path, tcti=tcti)
        assert read(HCL_REPORT_NV_INDEX, MAX_NV_READ) is None  # nothing provisioned yet: no report, no error
        provision_hcl_report(tcti, tmp_path, report)
        assert read(HCL_REPORT_NV_INDEX, MAX_NV_READ) == report
        assert read(HCL_REPORT_NV_INDEX, 100) == report[:100]
        root = make_root(tmp_path, "/dev/tpmrm0", azure=True)
        choice = detect_tee(RootFiles(root), read)
        assert choice.tee == tee and "HCL report" in choice.reason
        # the same TPM seen from a VM that is not on Azure: never asked, nothing detected
        other = make_root(tmp_path / "other", "/dev/tpmrm0")
        assert detect_tee(RootFiles(other), read).tee == "none"
        # the baked setting still wins
        assert detect_for_root("tdx", root, read).tee == "tdx"


def test_an_unreachable_tpm_is_no_report(tmp_path):
    port = free_port()
    read = tpm_nv_reader(tmp_path, tcti=f"swtpm:host=127.0.0.1,port={port}")
    assert read(HCL_REPORT_NV_INDEX, MAX_NV_READ) is None
