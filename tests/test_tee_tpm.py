"""Azure CVM detection against a real (software) TPM: swtpm on loopback holds
an HCL report in NV index 0x01400001, written there with tpm2-tools the way
Azure's paravisor provisions it; the detection reads it back through
tpm2-pytss, the edge the pod VM uses on /dev/tpmrm0."""

from __future__ import annotations

from pathlib import Path

import pytest
import tpm2_pytss  # noqa: F401  (make deps installs it: no silent skip when it is missing)

from podvm_bootstrap.attest.tee import (
    HCL_REPORT_NV_INDEX,
    MAX_NV_READ,
    RootFiles,
    detect_for_root,
    detect_tee,
    tpm_nv_reader,
)
from tests.bed.proc import free_port
from tests.bed.swtpm import Swtpm, running_swtpm
from tests.test_tee import hcl_report, make_root

NV_INDEX = f"0x{HCL_REPORT_NV_INDEX:08x}"


def provision_hcl_report(tpm: Swtpm, workdir: Path, report: bytes) -> None:
    """What Azure's paravisor does at boot: an owner-readable NV index holding the report."""
    (workdir / "report.bin").write_bytes(report)
    tpm.tool("tpm2_nvdefine", NV_INDEX, "-C", "o", "-s", str(len(report)), "-a", "ownerread|ownerwrite")
    tpm.tool("tpm2_nvwrite", NV_INDEX, "-C", "o", "-i", str(workdir / "report.bin"))


@pytest.mark.parametrize("report_type, tee", [(2, "az-snp-vtpm"), (4, "az-tdx-vtpm")])
def test_an_azure_cvm_is_told_by_the_vtpm_hcl_report(tmp_path, report_type, tee):
    # swtpm's NV indices hold at most 2 KiB: a report cut after the isolation
    # type (what detection reads) is enough; the real one is about 2.5 KiB.
    report = hcl_report(report_type, size=1400)
    with running_swtpm(tmp_path / "tpm") as tpm:
        read = tpm_nv_reader(tmp_path, tcti=tpm.tcti)
        assert read(HCL_REPORT_NV_INDEX, MAX_NV_READ) is None  # nothing provisioned yet: no report, no error
        provision_hcl_report(tpm, tmp_path, report)
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
