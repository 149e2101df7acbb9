"""The TPM edge of measured launch, through tpm2-pytss (the TSS's own Python
bindings): its cffi layer, ESAPI over a TCTI from the TCTI loader, the three
calls a measurement needs (PCR read, PCR extend, the return-code decoder).

`measure.tpm` names the TPM: `auto` (`/dev/tpmrm0` under --root when it
exists, else none), `none`, or a TCTI: `device:/dev/tpmrm0`,
`swtpm:host=127.0.0.1,port=2321` (a software TPM, for tests), `mssim:...`.
The TPM is opened only for the few commands of a measurement and closed
right after: the attestation agent uses it too (and swtpm serves one
connection at a time). tpm2-pytss is loaded only when a TPM is configured."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from podvm_bootstrap.common.errors import BootstrapError, one_line
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.common.paths import under_root
from podvm_bootstrap.config.settings import TpmSetting, parse_tpm_setting

log = get_logger("tpm")

DEFAULT_DEVICE = "/dev/tpmrm0"


class TpmError(BootstrapError):
    """The TPM could not be opened, read or extended."""


def resolve_tpm(setting: TpmSetting, root: Path) -> TpmSetting | None:
    """The TPM to use, or None for an unmeasured launch (`none`, or `auto`
    without a TPM device)."""
    if setting.kind == "none":
        return None
    if setting.kind == "auto":
        device = under_root(root, DEFAULT_DEVICE)
        return TpmSetting("tcti", "device", str(device)) if device.exists() else None
    return setting


class Tpm:
    """An open TPM: `with Tpm(setting) as tpm: tpm.read(23); tpm.extend(23, digest)`.
    Every failure is a TpmError naming the TPM and the command."""

    def __init__(self, setting: TpmSetting) -> None:
        self.setting = setting
        self._lib: Any = None
        self._ffi: Any = None
        self._tcti: Any = None      # TSS2_TCTI_CONTEXT **
        self._esys: Any = None      # ESYS_CONTEXT **
        # How long opening took (seconds): loading tpm2-pytss's bindings (no
        # time once preload_bindings has run; waiting for it when it still
        # runs), then the TCTI and ESAPI set-up. The measurement logs them.
        self.import_s = 0.0
        self.open_s = 0.0

    def __enter__(self) -> Tpm:
        # The TSS logs its own errors to stderr, several lines each; ours is the
        # one line that says what failed (TSS2_LOG set by an operator wins).
        os.environ.setdefault("TSS2_LOG", "all+NONE")
        started = time.perf_counter()
        try:
            self._ffi, self._lib = bindings()
        except ImportError as exc:
            raise TpmError(f"TPM {self.setting}: tpm2-pytss is not installed ({one_line(exc)})") from None
        loaded = time.perf_counter()
        self.import_s = loaded - started
        ffi, lib = self._ffi, self._lib
        try:
            self._tcti = ffi.new("TSS2_TCTI_CONTEXT **")
            self._check(lib.Tss2_TctiLdr_Initialize_Ex(self.setting.name.encode(), self.setting.conf.encode(),
                                                       self._tcti), "cannot open it")
            self._esys = ffi.new("ESYS_CONTEXT **")
            self._check(lib.Esys_Initialize(self._esys, self._tcti[0], ffi.NULL), "cannot open it")
        except TpmError:
            self.close()
            raise
        self.open_s = time.perf_counter() - loaded
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._esys is not None and self._esys[0] != self._ffi.NULL:
            self._lib.Esys_Finalize(self._esys)
        if self._tcti is not None and self._tcti[0] != self._ffi.NULL:
            self._lib.Tss2_TctiLdr_Finalize(self._tcti)
        self._esys = self._tcti = None

    def read(self, pcr: int) -> bytes:
        """The sha256 bank's value of PCR `pcr`."""
        ffi, lib = self._ffi, self._lib
        if not 0 <= pcr <= 23:
            raise TpmError(f"TPM {self.setting}: reading PCR {pcr} failed: no such PCR")
        selection = ffi.new("TPML_PCR_SELECTION *")
        selection.count = 1
        selection.pcrSelections[0].hash = lib.TPM2_ALG_SHA256
        selection.pcrSelections[0].sizeofSelect = 3
        selection.pcrSelections[0].pcrSelect[pcr // 8] = 1 << (pcr % 8)
        counter = ffi.new("UINT32 *")
        selected = ffi.new("TPML_PCR_SELECTION **")
        values = ffi.new("TPML_DIGEST **")
        self._check(lib.Esys_PCR_Read(self._esys[0], lib.ESYS_TR_NONE, lib.ESYS_TR_NONE, lib.ESYS_TR_NONE, selection,
                                      counter, selected, values), f"reading PCR {pcr} failed")
        try:
            digests = [bytes(ffi.buffer(values[0].digests[i].buffer, values[0].digests[i].size))
                       for i in range(values[0].count)]
        finally:
            lib.Esys_Free(selected[0])
            lib.Esys_Free(values[0])
        if len(digests) != 1 or len(digests[0]) != 32:
            raise TpmError(f"TPM {self.setting}: PCR {pcr} has no sha256 bank")
        return digests[0]

    def extend(self, pcr: int, digest: bytes) -> None:
        """Extend the sha256 bank of PCR `pcr` with `digest` (32 bytes)."""
        ffi, lib = self._ffi, self._lib
        if len(digest) != 32 or not 0 <= pcr <= 23:
            raise TpmError(f"TPM {self.setting}: extending PCR {pcr} failed: not a PCR and a sha256 digest")
        values = ffi.new("TPML_DIGEST_VALUES *")
        values.count = 1
        values.digests[0].hashAlg = lib.TPM2_ALG_SHA256
        ffi.memmove(values.digests[0].digest.sha256, digest, 32)
        self._check(lib.Esys_PCR_Extend(self._esys[0], lib.ESYS_TR_PCR0 + pcr, lib.ESYS_TR_PASSWORD, lib.ESYS_TR_NONE,
                                        lib.ESYS_TR_NONE, values), f"extending PCR {pcr} failed")

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            decoded = self._ffi.string(self._lib.Tss2_RC_Decode(rc)).decode("ascii", "replace")
            raise TpmError(f"TPM {self.setting}: {what}: {one_line(decoded)} (0x{rc:x})")


_bindings: tuple[Any, Any] | None = None
_bindings_lock = threading.Lock()


def bindings() -> tuple[Any, Any]:
    """tpm2-pytss's cffi bindings of the TSS (`ffi`, `lib`: ESAPI, the TCTI
    loader, the return-code decoder), loaded once. The extension module is
    loaded by itself: the package's Python layer (ESAPI classes, FAPI, types
    that import cryptography's x509) costs 50-90 ms of CPU here and nothing of
    it is needed for a PCR read and extend. Falls back to the ordinary import
    when the package is laid out otherwise. ImportError when not installed."""
    global _bindings
    with _bindings_lock:   # the background preload and the measurement: one load
        if _bindings is None:
            _bindings = _load_extension()
        return _bindings


def _load_extension() -> tuple[Any, Any]:
    spec = importlib.util.find_spec("tpm2_pytss")   # finds the package without running it
    if spec is None:
        raise ImportError("No module named 'tpm2_pytss'")
    for directory in spec.submodule_search_locations or ():
        for path in sorted(Path(directory).glob("_libtpm2_pytss*.so")):
            ext = importlib.util.spec_from_file_location("tpm2_pytss._libtpm2_pytss", path)
            if ext is not None:
                module = importlib.util.module_from_spec(ext)
                return module.ffi, module.lib
    from tpm2_pytss._libtpm2_pytss import ffi, lib
    return ffi, lib


def preload_bindings(text: str, root: Path) -> bool:
    """Load tpm2-pytss's bindings now when `measure.tpm` (text) resolves to a
    TPM, and say whether it did. Start-up runs this in the background,
    overlapping the user-data fetch, so that the measurement itself only talks
    to the TPM; loading takes about 7 ms (the TSS's shared libraries)."""
    try:
        if resolve_tpm(parse_tpm_setting(text), root) is None:
            return False
        started = time.perf_counter()
        bindings()
    except (ValueError, ImportError):
        return False  # the measurement reports it, with the context
    log.info("tpm2-pytss's bindings loaded ahead of the measurement in %.1f ms",
             1000 * (time.perf_counter() - started))
    return True
