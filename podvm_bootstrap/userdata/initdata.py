"""Initdata (the CoCo initdata spec as peer-pods carries it): pure parsing.

``/run/peerpod/initdata`` holds base64 of a gzipped TOML document::

    algorithm = "sha384"          # sha256 | sha384 | sha512
    version = "0.1.0"
    [data]
    "aa.toml" = '''...'''
    "cdh.toml" = '''...'''
    "policy.rego" = '''...'''

Its digest is the named hash of the decompressed TOML bytes, as hex. Keys of
[data] other than the three known files and "podvm-bootstrap.yaml" are
ignored (nothing here consumes them, and a name from user-data never becomes
a file name).

"podvm-bootstrap.yaml" is the pod owner's image requests (the same `images:`
mapping as the user-data's `podvm_bootstrap`): read by `image_requests`,
never written as a file. A problem with that entry alone leaves the rest of
the initdata usable.

When the user-data carries no initdata, the cloud-api-adaptor's
process-user-data writes a placeholder (PLACEHOLDER_TOML, byte for byte), so
its digest is one a relying party knows. That digest is bound into a TPM PCR
(sha256 bank) as the 32 bytes Trustee's vTPM verifiers compare: a sha384 or
sha512 digest is cut to its first 32 bytes (the adaptor's image extends
`8:sha256=$(head -c64 initdata.digest)`), and the register then reads
sha256(0^32 || those 32 bytes).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from podvm_bootstrap.common.errors import UserDataError, one_line, show
from podvm_bootstrap.userdata.codec import GZIP_MAGIC, CodecError, b64decode_strict, gunzip_bounded
from podvm_bootstrap.userdata.tomlbounds import TomlBoundsError, check_toml_bounds

if TYPE_CHECKING:   # the YAML reader of the requests loads only when an initdata carries some
    from podvm_bootstrap.userdata.cloudconfig import ImageRequests

ALGORITHMS = ("sha256", "sha384", "sha512")
DATA_FILES = ("aa.toml", "cdh.toml", "policy.rego")
REQUESTS_ENTRY = "podvm-bootstrap.yaml"
DIGEST_FILE = "initdata.digest"
# Every file extract() may produce, all beside the initdata file.
DERIVED_FILES = (*DATA_FILES, DIGEST_FILE)

# cloud-api-adaptor src/cloud-api-adaptor/pkg/userdata/provision.go,
# generateDummyInitdata: its Go raw string, byte for byte (no final newline).
PLACEHOLDER_TOML = b'algorithm = "sha256"\nversion = "0.1.0"\n\n[data]\n"aa.toml" = \'\'\'\n\'\'\''
BOUND_SIZE = 32   # bytes of the digest extended into the sha256 bank


class InitdataError(UserDataError):
    """The initdata blob is unusable (one line, no content dumped)."""


@dataclass(frozen=True)
class Initdata:
    algorithm: str
    version: str
    files: dict[str, bytes]  # known [data] names -> content
    digest_hex: str
    requests: object = None  # [data] "podvm-bootstrap.yaml" as the TOML gave it (None: absent)


def parse_initdata(blob: bytes, max_size: int) -> Initdata:
    """Parse the initdata file's content; InitdataError when it is unusable.
    `max_size` bounds the decompressed TOML."""
    if not blob.strip():
        raise InitdataError("initdata is empty")
    try:
        gz = b64decode_strict(blob, "initdata")
        if not gz.startswith(GZIP_MAGIC):
            raise InitdataError("initdata is not base64 of gzip data")
        toml_bytes = gunzip_bounded(gz, max_size, "initdata")
    except CodecError as exc:
        raise InitdataError(str(exc)) from None
    try:
        text = toml_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise InitdataError("initdata TOML is not UTF-8 text") from None
    try:
        # tomllib's cost is not linear in every shape of document: its
        # structure is bounded first (see tomlbounds).
        check_toml_bounds(text)
    except TomlBoundsError as exc:
        raise InitdataError(f"initdata TOML refused: {exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InitdataError(f"initdata is not valid TOML: {one_line(exc, 200)}") from None
    except (RecursionError, ValueError, OverflowError) as exc:
        # What tomllib raises past its own checks (a number Python will not
        # convert); the bounds above already keep numbers short.
        raise InitdataError(f"initdata is not valid TOML: {one_line(exc, 200)}") from None

    algorithm = document.get("algorithm")
    if algorithm not in ALGORITHMS:
        shown = show(algorithm, 40, quote=True) if algorithm is not None else "nothing"
        raise InitdataError(f"initdata algorithm must be one of {', '.join(ALGORITHMS)}, got {shown}")
    version = document.get("version")
    if not isinstance(version, str) or not version:
        raise InitdataError("initdata version must be a non-empty string")
    data = document.get("data", {})
    if not isinstance(data, dict):
        raise InitdataError("initdata [data] must be a table")
    files: dict[str, bytes] = {}
    for name in DATA_FILES:
        if name not in data:
            continue
        if not isinstance(data[name], str):
            raise InitdataError(f"initdata data.{name!r} must be a string")
        files[name] = data[name].encode("utf-8")
    return Initdata(algorithm=algorithm, version=version, files=files,
                    digest_hex=hashlib.new(algorithm, toml_bytes).hexdigest(), requests=data.get(REQUESTS_ENTRY))


def image_requests(parsed: Initdata, max_size: int) -> ImageRequests:
    """The overrides the pod's owner asks for in [data] "podvm-bootstrap.yaml"
    (none when absent), read with the user-data's YAML loader and its bounds
    (`max_size`). UserDataError, one line, when the entry is unusable as a
    whole; a bad item inside is one line of `problems`."""
    from podvm_bootstrap.userdata.cloudconfig import ImageRequests, parse_image_requests

    where = f"initdata {REQUESTS_ENTRY}"
    if parsed.requests is None:
        return ImageRequests()
    if not isinstance(parsed.requests, str):
        raise InitdataError(f"{where} must be a string (a YAML document), got {type(parsed.requests).__name__}")
    return parse_image_requests(parsed.requests, where, max_size)


def extract(blob: bytes, max_size: int) -> dict[str, bytes]:
    """The files to write beside the initdata file: its known [data] files and
    ``initdata.digest`` (the hex digest, no trailing newline)."""
    parsed = parse_initdata(blob, max_size)
    return {**parsed.files, DIGEST_FILE: parsed.digest_hex.encode("ascii")}


def placeholder_blob() -> bytes:
    """The placeholder as the initdata file holds it: base64 of gzip (no
    timestamp: the same bytes every boot)."""
    return base64.b64encode(gzip.compress(PLACEHOLDER_TOML, mtime=0))


def bound_digest(digest_hex: str) -> bytes:
    """The 32 bytes of an initdata digest (hex, as initdata.digest holds it)
    that are extended into the sha256 bank: a longer digest's first 32.
    ValueError when it is not the hex of a sha256, sha384 or sha512 digest."""
    text = digest_hex.strip()
    if len(text) not in (64, 96, 128) or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ValueError("not the hex of a sha256, sha384 or sha512 digest")
    return bytes.fromhex(text)[:BOUND_SIZE]


def bound_value(digest: bytes) -> bytes:
    """The register's value after the one extend from zero: sha256(0^32 || digest)."""
    return hashlib.sha256(bytes(BOUND_SIZE) + digest).digest()
