"""Which TEE this pod VM runs in (bootstrap.yaml `tee:`), detected the way the
confidential-containers attestation agent's attesters detect their platform.

Detection only looks at files under --root (device nodes, sysfs, DMI) and, on
an Azure confidential VM, at the header of the HCL report that Azure's
paravisor stores in the vTPM's NV index 0x01400001. The order is the
attester's: tdx, the Azure vTPM flavours, snp, se. The TPM is reached through
an `NvReader` so that tests give a fake root a fake NV store; the real reader
(tpm2-pytss over /dev/tpmrm0) is a thin optional edge: without tpm2-pytss an
Azure CVM is simply not recognised, and the baked `tee:` covers it.

User-data never takes part: the TEE decides which baked image runs."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from podvm_bootstrap.common.errors import one_line
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.common.paths import under_root

if TYPE_CHECKING:
    from podvm_bootstrap.userdata.cloudconfig import UserData

log = get_logger("tee")

TDX_DEVICES = ("/dev/tdx_guest", "/dev/tdx-guest", "/dev/tdx-attest")
SNP_DEVICES = ("/dev/sev-guest", "/sys/devices/platform/sev-guest")
SE_UV_DIR = "/sys/firmware/uv"
SE_GUEST_FLAG = "/sys/firmware/uv/prot_virt_guest"   # "1" in a Secure Execution guest
TPM_DEVICES = ("/dev/tpmrm0", "/dev/tpm0")
# Azure's DMI data, as podvm_bootstrap.userdata.sources.detect reads it for the cloud
# (the same values, test_tee checks; not imported from there: importing that
# package loads every metadata client, requests included, ~60 ms per boot).
DMI_DIR = "/sys/class/dmi/id"
AZURE_CHASSIS_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"

# Azure's HCL report (azure-cvm-tooling, az-cvm-vtpm/src/hcl): a 32-byte
# header whose first u32 is the signature 'HCLA', the hardware report padded
# to 1184 bytes (an SNP report; a TDX report is smaller), then the IGVM request
# data: data_size, version, report_type (little-endian u32s). report_type is
# the isolation type: 2 = SEV-SNP, 4 = TDX.
HCL_REPORT_NV_INDEX = 0x01400001
HCL_SIGNATURE = b"HCLA"
HCL_HEADER_SIZE = 32
HCL_HW_REPORT_SIZE = 1184
HCL_REPORT_TYPE_OFFSET = HCL_HEADER_SIZE + HCL_HW_REPORT_SIZE + 8
HCL_ISOLATION_TYPES = {2: "az-snp-vtpm", 4: "az-tdx-vtpm"}
MAX_NV_READ = 16 * 1024  # the report is about 2.5 KiB; never read more than this

NvReader = Callable[[int, int], "bytes | None"]  # (NV index, max bytes) -> contents, None: unreadable


class PlatformFiles(Protocol):
    """The files detection looks at, as the pod VM sees them."""

    def exists(self, path: str) -> bool: ...

    def read(self, path: str, limit: int) -> bytes | None: ...


@dataclass(frozen=True)
class RootFiles:
    """PlatformFiles under a --root prefix."""

    root: Path

    def exists(self, path: str) -> bool:
        return under_root(self.root, path).exists()

    def read(self, path: str, limit: int) -> bytes | None:
        try:
            with open(under_root(self.root, path), "rb") as f:
                return f.read(limit)
        except OSError:
            return None


@dataclass(frozen=True)
class TeeChoice:
    """The TEE this boot uses and one line saying why."""

    tee: str      # "none" or one of TEES
    reason: str


def hcl_isolation_type(report: bytes) -> str | None:
    """The TEE an Azure HCL report states, or None when `report` is not one."""
    if len(report) < HCL_REPORT_TYPE_OFFSET + 4 or report[:4] != HCL_SIGNATURE:
        return None
    (report_type,) = struct.unpack_from("<I", report, HCL_REPORT_TYPE_OFFSET)
    return HCL_ISOLATION_TYPES.get(report_type)


def _azure_dmi(files: PlatformFiles) -> bool:
    def dmi(name: str) -> str:
        data = files.read(f"{DMI_DIR}/{name}", 256)
        return data.decode("utf-8", "replace").strip() if data else ""

    return dmi("chassis_asset_tag") == AZURE_CHASSIS_ASSET_TAG or dmi("sys_vendor") == "Microsoft Corporation"


def _azure_cvm(files: PlatformFiles, read_nv: NvReader) -> TeeChoice | None:
    if not _azure_dmi(files):
        return None
    tpm = next((d for d in TPM_DEVICES if files.exists(d)), None)
    if tpm is None:
        return None
    report = read_nv(HCL_REPORT_NV_INDEX, MAX_NV_READ)
    if report is None:
        return None
    tee = hcl_isolation_type(report)
    if tee is None:
        log.info("Azure VM with a TPM, but NV index 0x%08x holds no HCL report of a known isolation type: "
                 "not a confidential VM", HCL_REPORT_NV_INDEX)
        return None
    return TeeChoice(tee, f"Azure DMI data and the HCL report in the vTPM {tpm} (NV index 0x{HCL_REPORT_NV_INDEX:08x})")


def _secure_execution(files: PlatformFiles) -> bool:
    if not files.exists(SE_UV_DIR):
        return False
    flag = files.read(SE_GUEST_FLAG, 16)
    # The flag says "0" on an s390x guest that is not protected; when the
    # kernel has no such file, the ultravisor directory alone decides.
    return flag is None or flag.strip() == b"1"


def detect_tee(files: PlatformFiles, read_nv: NvReader) -> TeeChoice:
    """The platform's TEE, in the attestation agent's order of detection."""
    for device in TDX_DEVICES:
        if files.exists(device):
            return TeeChoice("tdx", f"{device} exists")
    azure = _azure_cvm(files, read_nv)
    if azure is not None:
        return azure
    for device in SNP_DEVICES:
        if files.exists(device):
            return TeeChoice("snp", f"{device} exists")
    if _secure_execution(files):
        return TeeChoice("se", f"{SE_UV_DIR} exists (IBM Secure Execution guest)")
    return TeeChoice("none", "no TEE device, Azure CVM vTPM report or ultravisor found")


def choose_tee(setting: str, files: PlatformFiles, read_nv: NvReader) -> TeeChoice:
    """The baked setting wins; `auto` detects."""
    if setting != "auto":
        return TeeChoice(setting, f"bootstrap.yaml tee: {setting}")
    return detect_tee(files, read_nv)


def tpm_nv_reader(root: Path, tcti: str | None = None) -> NvReader:
    """Reads an NV index of the TPM with tpm2-pytss (ESAPI, as the attesters
    do with tss-esapi): the TPM device under `root` (a character device;
    anything else is no TPM), or `tcti` ("swtpm:host=...,port=..." in tests)."""

    def read(index: int, limit: int) -> bytes | None:
        if tcti is not None:
            name, _, conf = tcti.partition(":")
        else:
            device = next((under_root(root, d) for d in TPM_DEVICES if under_root(root, d).exists()), None)
            if device is None or not device.is_char_device():
                return None
            name, conf = "device", str(device)
        # The TSS logs its own errors to stderr, several lines each: an absent
        # index is an expected answer here, and ours is the one line.
        os.environ.setdefault("TSS2_LOG", "all+NONE")
        try:
            from tpm2_pytss import ESAPI, TCTILdr  # optional: Debian's python3-tpm2-pytss
            from tpm2_pytss.constants import ESYS_TR
        except ImportError:
            log.info("tpm2-pytss is not installed: the vTPM's HCL report is not read "
                     "(set tee: in bootstrap.yaml on Azure confidential VMs)")
            return None
        tcti_ctx = esapi = None
        try:
            tcti_ctx = TCTILdr(name, conf)
            esapi = ESAPI(tcti_ctx)
            return read_nv_index(esapi, ESYS_TR.OWNER, index, limit)
        except Exception as exc:  # noqa: BLE001 - the TSS raises TSS2_Exception and others
            log.info("cannot open the TPM %s:%s: %s", name, conf, one_line(exc, 200))
            return None
        finally:
            for thing in (esapi, tcti_ctx):
                if thing is not None:
                    try:
                        thing.close()
                    except Exception:  # noqa: BLE001 - closing must not hide the answer
                        pass

    return read


def read_nv_index(esapi: object, owner: object, index: int, limit: int) -> bytes | None:
    """The contents of NV `index` through an open ESAPI, with owner
    authorisation, at most `limit` bytes, in reads of at most 1 KiB (the usual
    TPM2_PT_NV_BUFFER_MAX); None when the index is absent or unreadable."""
    try:
        handle = esapi.tr_from_tpmpublic(index)  # type: ignore[attr-defined]
        public, _name = esapi.nv_read_public(handle)  # type: ignore[attr-defined]
        size = min(int(public.nvPublic.dataSize), limit)
        data = b""
        while len(data) < size:
            chunk = bytes(esapi.nv_read(handle, min(1024, size - len(data)), len(data),  # type: ignore[attr-defined]
                                        auth_handle=owner))
            if not chunk:
                break
            data += chunk
        return data
    except Exception as exc:  # noqa: BLE001 - tpm2-pytss raises TSS2_Exception for an absent index
        log.info("cannot read TPM NV index 0x%08x: %s", index, one_line(exc, 200))
        return None


def userdata_tee_notice(userdata: UserData) -> str | None:
    """One line when user-data tries to choose the TEE (a top-level `tee` key;
    `podvm_bootstrap.tee` is already reported as an unknown key): it is ignored."""
    if "tee" in userdata.ignored_keys:
        return ("user-data: tee ignored: the TEE is detected or set in bootstrap.yaml, "
                "user-data cannot choose it")
    return None


def detect_for_root(setting: str, root: Path, read_nv: NvReader | None = None) -> TeeChoice:
    """choose_tee over the pod VM's files under `root` and its real TPM."""
    return choose_tee(setting, RootFiles(root), read_nv if read_nv is not None else tpm_nv_reader(root))
