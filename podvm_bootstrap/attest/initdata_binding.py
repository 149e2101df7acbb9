"""Initdata bound into the TPM (docs/measured-launch.md "What is written"): before any
component starts, the digest of this boot's initdata (`/run/peerpod/initdata.digest`,
the adaptor's placeholder's when the user-data carried none) is extended
once into `measure.initdata_pcr` (8), sha256 bank, as the 32 bytes Trustee's
vTPM verifiers compare (initdata.bound_digest). No event record is written
for it: a verifier recomputes sha256(0^32 || digest) from the initdata it sent.

Once per boot, whatever restarts: the register reads zero (not bound yet: the
daemon extends it), or the value this digest gives (bound by an earlier
daemon of this boot: nothing to do), or anything else, which fails closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from podvm_bootstrap.attest.tpm import Tpm
from podvm_bootstrap.common.errors import one_line
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.userdata.initdata import (
    DIGEST_FILE,
    InitdataError,
    bound_digest,
    bound_value,
    parse_initdata,
    placeholder_blob,
)

log = get_logger("measure")

DIGEST_PATH = "/run/peerpod/" + DIGEST_FILE
_ALGORITHM_BY_HEX_SIZE = {64: "sha256", 96: "sha384", 128: "sha512"}


class BindingRefused(Exception):
    """The initdata register holds something this boot's initdata does not explain."""


def describe(pcr: int, digest_hex: str) -> dict[str, Any]:
    """`{"pcr", "digest", "expected"}` for a digest (hex, as initdata.digest
    holds it): the digest with its algorithm, and the register's value once
    it is bound. ValueError when it is no sha256/sha384/sha512 digest."""
    text = digest_hex.strip().lower()
    value = bound_value(bound_digest(text))
    return {"pcr": pcr, "digest": f"{_ALGORITHM_BY_HEX_SIZE[len(text)]}:{text}", "expected": f"sha256:{value.hex()}"}


def predicted(pcr: int | None, blob: bytes | None, max_size: int) -> dict[str, Any] | None:
    """`plan --json`'s `measurement.initdata`: what binding the initdata
    `blob` the user-data carries (None: the placeholder) gives register `pcr`.
    None when nothing is bound (`initdata_pcr: none`, or an initdata that
    cannot be read: it has no digest)."""
    if pcr is None:
        return None
    try:
        parsed = parse_initdata(placeholder_blob() if blob is None else blob, max_size)
    except InitdataError:
        return None
    return describe(pcr, parsed.digest_hex)


def read_digest(path: Path) -> str:
    """This boot's initdata digest (hex) from the digest file provisioning
    wrote. ValueError with the reason when there is none usable."""
    from podvm_bootstrap.common.fsutil import read_regular_file

    try:
        text = read_regular_file(path, 256).decode("ascii", "replace").strip()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist (the user-data's initdata could not be read)") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {one_line(exc)}") from None
    try:
        bound_digest(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return text


def bind(tpm: Tpm, pcr: int, digest_hex: str) -> bool:
    """Bind the digest into register `pcr`, once per boot. True when this
    call extended it, False when an earlier daemon of this boot had. Raises
    BindingRefused when the register holds anything else (before or after)."""
    expected = bound_value(bound_digest(digest_hex))
    value = tpm.read(pcr)
    if value == expected:
        return False
    if value != bytes(len(value)):
        raise BindingRefused(f"PCR {pcr} reads sha256:{value.hex()}, neither zero nor sha256:{expected.hex()} "
                             "(this boot's initdata bound from zero): extended by something else, or the "
                             "initdata changed since it was bound")
    tpm.extend(pcr, bound_digest(digest_hex))
    value = tpm.read(pcr)
    if value != expected:
        raise BindingRefused(f"PCR {pcr} reads sha256:{value.hex()} after the extend, not sha256:{expected.hex()}")
    return True
