"""TEE detection (podvm_bootstrap.attest.tee) over a fake --root, for every TEE, and
the bootstrap.yaml `tee:` setting."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from podvm_bootstrap.attest.tee import (
    HCL_REPORT_NV_INDEX,
    HCL_REPORT_TYPE_OFFSET,
    MAX_NV_READ,
    RootFiles,
    choose_tee,
    detect_for_root,
    detect_tee,
    hcl_isolation_type,
    read_nv_index,
    tpm_nv_reader,
)
from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.config.model import TEES
from podvm_bootstrap.config.settings import load_settings

AZURE_TAG = "7783-7084-3265-9085-8269-3286-77"


def test_azure_dmi_values_are_the_cloud_detections():
    from podvm_bootstrap.attest import tee
    from podvm_bootstrap.userdata.sources import detect

    assert (tee.DMI_DIR, tee.AZURE_CHASSIS_ASSET_TAG) == (detect.DMI_DIR, detect.AZURE_CHASSIS_ASSET_TAG) \
        == ("/sys/class/dmi/id", AZURE_TAG)


def hcl_report(report_type: int, signature: bytes = b"HCLA", size: int = 2600) -> bytes:
    """An Azure HCL report as the paravisor lays it out: header (signature,
    version, report size, request type, status, reserved), hardware report,
    then the IGVM request data whose third u32 is the isolation type."""
    report = bytearray(size)
    report[:4] = signature
    struct.pack_into("<IIII", report, 4, 2, size, 2, 0)
    struct.pack_into("<III", report, HCL_REPORT_TYPE_OFFSET - 8, 200, 1, report_type)
    return bytes(report)


def make_root(tmp_path: Path, *files: str, azure: bool = False, **contents: str) -> Path:
    root = tmp_path / "root"
    for f in files:
        path = root / f.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    for key, text in contents.items():
        path = root / key.replace("__", "/").lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if azure:
        dmi = root / "sys/class/dmi/id"
        dmi.mkdir(parents=True, exist_ok=True)
        (dmi / "sys_vendor").write_text("Microsoft Corporation\n")
        (dmi / "chassis_asset_tag").write_text(AZURE_TAG + "\n")
    root.mkdir(parents=True, exist_ok=True)
    return root


class FakeNv:
    """The vTPM's NV store: index -> contents; records what was read."""

    def __init__(self, contents: dict[int, bytes] | None = None) -> None:
        self.contents = contents or {}
        self.reads: list[tuple[int, int]] = []

    def __call__(self, index: int, limit: int) -> bytes | None:
        self.reads.append((index, limit))
        data = self.contents.get(index)
        return None if data is None else data[:limit]


def detect(root: Path, nv: FakeNv | None = None) -> tuple[str, str]:
    choice = detect_tee(RootFiles(root), nv or FakeNv())
    return choice.tee, choice.reason


@pytest.mark.parametrize("device", ["/dev/tdx_guest", "/dev/tdx-guest", "/dev/tdx-attest"])
def test_tdx_from_its_guest_device(tmp_path, device):
    tee, reason = detect(make_root(tmp_path, device))
    assert tee == "tdx" and device in reason


@pytest.mark.parametrize("path", ["/dev/sev-guest", "/sys/devices/platform/sev-guest"])
def test_snp_from_the_sev_guest_device(tmp_path, path):
    tee, reason = detect(make_root(tmp_path, path))
    assert tee == "snp" and path in reason


def test_se_from_the_ultravisor(tmp_path):
    root = make_root(tmp_path)
    (root / "sys/firmware/uv").mkdir(parents=True)
    assert detect(root)[0] == "se"
    (root / "sys/firmware/uv/prot_virt_guest").write_text("1\n")
    assert detect(root)[0] == "se"
    # an s390x guest that is not protected says so
    (root / "sys/firmware/uv/prot_virt_guest").write_text("0\n")
    assert detect(root)[0] == "none"


@pytest.mark.parametrize("report_type, expected", [(2, "az-snp-vtpm"), (4, "az-tdx-vtpm")])
def test_azure_cvm_from_dmi_and_the_vtpm_hcl_report(tmp_path, report_type, expected):
    root = make_root(tmp_path, "/dev/tpmrm0", azure=True)
    nv = FakeNv({HCL_REPORT_NV_INDEX: hcl_report(report_type)})
    tee, reason = detect(root, nv)
    assert tee == expected and "HCL report" in reason and "0x01400001" in reason
    assert nv.reads == [(HCL_REPORT_NV_INDEX, MAX_NV_READ)]


def test_azure_snp_cvm_is_not_taken_for_bare_snp(tmp_path):
    # The attester's order: the Azure vTPM flavours before the bare device.
    root = make_root(tmp_path, "/dev/tpm0", "/dev/sev-guest", azure=True)
    assert detect(root, FakeNv({HCL_REPORT_NV_INDEX: hcl_report(2)}))[0] == "az-snp-vtpm"


def test_tdx_device_comes_first(tmp_path):
    root = make_root(tmp_path, "/dev/tdx_guest", "/dev/tpmrm0", azure=True)
    nv = FakeNv({HCL_REPORT_NV_INDEX: hcl_report(2)})
    assert detect(root, nv)[0] == "tdx" and nv.reads == []


@pytest.mark.parametrize("report", [
    None,                                   # a plain Azure VM with a vTPM (trusted launch): no such index
    b"",                                    # empty index
    hcl_report(2)[:HCL_REPORT_TYPE_OFFSET],  # cut before the isolation type
    hcl_report(2, signature=b"XXXX"),       # not an HCL report
    hcl_report(9),                          # an isolation type nobody knows
])
def test_azure_without_a_valid_hcl_report_is_no_cvm(tmp_path, report):
    root = make_root(tmp_path, "/dev/tpmrm0", azure=True)
    nv = FakeNv({} if report is None else {HCL_REPORT_NV_INDEX: report})
    assert detect(root, nv)[0] == "none"
    assert len(nv.reads) == 1


def test_the_tpm_is_only_asked_on_azure_with_a_tpm(tmp_path):
    nv = FakeNv({HCL_REPORT_NV_INDEX: hcl_report(2)})
    assert detect(make_root(tmp_path / "a", "/dev/tpmrm0"), nv)[0] == "none"   # a TPM, not Azure
    assert detect(make_root(tmp_path / "b", azure=True), nv)[0] == "none"      # Azure, no TPM
    assert nv.reads == []


def test_nothing_is_none(tmp_path):
    tee, reason = detect(make_root(tmp_path))
    assert tee == "none" and reason


def test_hcl_isolation_type_is_bounded_and_strict():
    assert hcl_isolation_type(hcl_report(2)) == "az-snp-vtpm"
    assert hcl_isolation_type(hcl_report(4)) == "az-tdx-vtpm"
    assert hcl_isolation_type(hcl_report(4, size=HCL_REPORT_TYPE_OFFSET + 4)) == "az-tdx-vtpm"
    assert hcl_isolation_type(hcl_report(4)[:HCL_REPORT_TYPE_OFFSET + 3]) is None
    assert hcl_isolation_type(b"HCLA") is None


def test_baked_setting_wins_over_detection(tmp_path):
    root = make_root(tmp_path, "/dev/tdx_guest")
    for setting in (*TEES, "none"):
        choice = choose_tee(setting, RootFiles(root), FakeNv())
        assert choice.tee == setting and "bootstrap.yaml" in choice.reason
    assert choose_tee("auto", RootFiles(root), FakeNv()).tee == "tdx"


def test_the_real_tpm_reader_never_talks_to_a_fake_device(tmp_path):
    # Under a fake root the "device" is a plain file: the reader must not
    # open it as a TPM (nor need tpm2-pytss to say so).
    root = make_root(tmp_path, "/dev/tpmrm0", azure=True)
    assert tpm_nv_reader(root)(HCL_REPORT_NV_INDEX, MAX_NV_READ) is None
    assert detect_for_root("auto", root).tee == "none"
    assert detect_for_root("az-tdx-vtpm", root).tee == "az-tdx-vtpm"


class FakeEsapi:
    """An open ESAPI as read_nv_index uses it: one NV index, answered in
    reads of at most 1 KiB with owner authorisation."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []

    def tr_from_tpmpublic(self, index: int) -> int:
        if index != HCL_REPORT_NV_INDEX:
            raise RuntimeError("0x18b: the handle is not correct for the use")
        return 7

    def nv_read_public(self, handle: int):
        size = len(self.data)

        class Public:
            class nvPublic:
                dataSize = size
        return Public, b"name"

    def nv_read(self, handle: int, size: int, offset: int, auth_handle: object) -> bytes:
        assert handle == 7 and auth_handle == "OWNER"
        self.reads.append((offset, size))
        return self.data[offset:offset + size]


def test_read_nv_index_reads_in_chunks_and_bounds_the_size():
    esapi = FakeEsapi(hcl_report(4))
    assert read_nv_index(esapi, "OWNER", HCL_REPORT_NV_INDEX, MAX_NV_READ) == esapi.data
    assert esapi.reads == [(0, 1024), (1024, 1024), (2048, 552)]
    assert read_nv_index(FakeEsapi(esapi.data), "OWNER", HCL_REPORT_NV_INDEX, 100) == esapi.data[:100]
    # an absent index is "no report", not an error
    assert read_nv_index(esapi, "OWNER", 0x01400002, MAX_NV_READ) is None


def test_settings_tee(tmp_path):
    path = tmp_path / "bootstrap.yaml"
    assert load_settings(path).tee == "auto"
    for value in (*TEES, "none", "auto"):
        path.write_text(f"tee: {value}\n")
        assert load_settings(path).tee == value
    path.write_text("tee: sgx\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.key == "tee" and info.value.file == str(path) and "sgx" in str(info.value)
