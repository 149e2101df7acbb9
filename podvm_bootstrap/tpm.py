"""The TPM edge of measured launch, through tpm2-pytss (the TSS's own Python
bindings: ESAPI over a TCTI loaded by TCTILdr).

`measure.tpm` names the TPM: `auto` (`/dev/tpmrm0` under --root when it
exists, else none), `none`, or a TCTI: `device:/dev/tpmrm0`,
`swtpm:host=127.0.0.1,port=2321` (a software TPM, for tests), `mssim:...`.
The TPM is opened only for the few commands of a measurement and closed
right after: the attestation agent uses it too (and swtpm serves one
connection at a time). tpm2-pytss is imported only then."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from podvm_bootstrap.errors import BootstrapError, one_line
from podvm_bootstrap.log import get_logger
from podvm_bootstrap.paths import under_root

log = get_logger("tpm")

DEFAULT_DEVICE = "/dev/tpmrm0"
_HOST_PORT = re.compile(r"host=([A-Za-z0-9.:\-\[\]]+),port=([0-9]{1,5})")


class TpmError(BootstrapError):
    """The TPM could not be opened, read or extended."""


@dataclass(frozen=True)
class TpmSetting:
    """`measure.tpm`, parsed: kind auto | none | tcti (with name and conf)."""

    kind: str
    name: str = ""
    conf: str = ""

    def __str__(self) -> str:
        return f"{self.name}:{self.conf}" if self.kind == "tcti" else self.kind


def parse_tpm_setting(text: str) -> TpmSetting:
    """Validate `measure.tpm` (ValueError with the reason)."""
    if text in ("auto", "none"):
        return TpmSetting(text)
    name, sep, conf = text.partition(":")
    if name == "device" and sep:
        if not conf.startswith("/") or any(c in conf for c in " ,\n\t"):
            raise ValueError(f"device: needs an absolute device path, got {text!r}")
        return TpmSetting("tcti", name, conf)
    if name in ("swtpm", "mssim") and sep:
        match = _HOST_PORT.fullmatch(conf)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"{name}: needs host=HOST,port=PORT, got {text!r}")
        return TpmSetting("tcti", name, conf)
    raise ValueError(f"expected auto, none, device:PATH or swtpm:host=HOST,port=PORT, got {text!r}")


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
        self._tcti = None
        self._esapi = None
        # How long opening took (seconds): the import of tpm2-pytss (no time
        # once preload_bindings has run; waiting for it when it still runs),
        # then the TCTI and ESAPI set-up. Reported in the measurement's log line.
        self.import_s = 0.0
        self.open_s = 0.0

    def __enter__(self) -> "Tpm":
        # The TSS logs its own errors to stderr, several lines each; ours is the
        # one line that says what failed (TSS2_LOG set by an operator wins).
        os.environ.setdefault("TSS2_LOG", "all+NONE")
        started = time.perf_counter()
        try:
            from tpm2_pytss import ESAPI, TCTILdr
        except ImportError as exc:
            raise TpmError(f"TPM {self.setting}: tpm2-pytss is not installed ({one_line(exc)})") from None
        imported = time.perf_counter()
        self.import_s = imported - started
        try:
            self._tcti = TCTILdr(self.setting.name, self.setting.conf)
            self._esapi = ESAPI(self._tcti)
        except Exception as exc:  # noqa: BLE001 - the TSS raises TSS2_Exception and others
            self.close()
            raise TpmError(f"TPM {self.setting}: cannot open it: {one_line(exc)}") from None
        self.open_s = time.perf_counter() - imported
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for thing in (self._esapi, self._tcti):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing must not hide the real outcome
                    pass
        self._esapi = self._tcti = None

    def read(self, pcr: int) -> bytes:
        """The sha256 bank's value of PCR `pcr`."""
        try:
            _, _, digests = self._esapi.pcr_read(f"sha256:{pcr}")
            values = [bytes(d) for d in digests]
        except Exception as exc:  # noqa: BLE001
            raise TpmError(f"TPM {self.setting}: reading PCR {pcr} failed: {one_line(exc)}") from None
        if len(values) != 1 or len(values[0]) != 32:
            raise TpmError(f"TPM {self.setting}: PCR {pcr} has no sha256 bank")
        return values[0]

    def extend(self, pcr: int, digest: bytes) -> None:
        """Extend the sha256 bank of PCR `pcr` with `digest`."""
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
        from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA

        try:
            values = TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))])
            self._esapi.pcr_extend(getattr(ESYS_TR, f"PCR{pcr}"), values)
        except Exception as exc:  # noqa: BLE001
            raise TpmError(f"TPM {self.setting}: extending PCR {pcr} failed: {one_line(exc)}") from None


def preload_bindings(text: str, root: Path) -> bool:
    """Import tpm2-pytss now when `measure.tpm` (text) resolves to a TPM, and
    say whether it did. Its imports (cryptography's x509 among them) take
    50-90 ms on a small VM, most of what measuring adds to a boot: start-up
    may run this in the background, overlapping the user-data fetch, so the
    measurement itself only talks to the TPM (about 5 ms for five components)."""
    try:
        if resolve_tpm(parse_tpm_setting(text), root) is None:
            return False
        started = time.perf_counter()
        import tpm2_pytss  # noqa: F401
    except (ValueError, ImportError):
        return False  # the measurement reports it, with the context
    log.info("tpm2-pytss loaded ahead of the measurement in %.1f ms", 1000 * (time.perf_counter() - started))
    return True
