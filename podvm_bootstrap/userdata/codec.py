"""The transport codecs of untrusted payloads: strict base64 and bounded gunzip.
Pure. User-data (cloudconfig), a provider's base64 body (userdata.transport)
and initdata all decode through here, so each rule is written once:

- base64 is strict (only the alphabet and correct padding), except that white
  space (line breaks, surrounding blanks) is ignored, as every encoder wraps;
- gunzip never inflates more than its caller's bound: a gzip bomb is refused,
  not expanded.

Failures are CodecError, a UserDataError: one line, no payload dumped."""

from __future__ import annotations

import base64
import binascii
import zlib

from podvm_bootstrap.common.errors import UserDataError

GZIP_MAGIC = b"\x1f\x8b"
MAX_GZIP_MEMBERS = 16


class CodecError(UserDataError):
    """A payload is not what its encoding says (one line)."""


def b64decode_strict(data: bytes, what: str = "data") -> bytes:
    """The bytes that base64 text `data` encodes, its white space ignored.
    CodecError ("<what> is not valid base64") for anything else."""
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CodecError(f"{what} is not valid base64") from None


def gunzip_bounded(data: bytes, max_size: int, what: str = "gzip data") -> bytes:
    """Decompress gzip `data` (several members allowed, trailing zero padding
    tolerated like gzip(1)), never inflating more than `max_size` bytes."""
    out = bytearray()
    rest = data
    for _ in range(MAX_GZIP_MEMBERS):
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            chunk = d.decompress(rest, max_size - len(out) + 1)
        except zlib.error as exc:
            raise CodecError(f"{what} is not valid gzip ({exc})") from None
        out += chunk
        if len(out) > max_size or d.unconsumed_tail:
            raise CodecError(f"{what} decompresses to more than {max_size} bytes")
        if not d.eof:
            raise CodecError(f"{what} is not valid gzip (truncated)")
        rest = d.unused_data
        if not rest.strip(b"\0"):
            return bytes(out)
        if not rest.startswith(GZIP_MAGIC):
            raise CodecError(f"{what} is not valid gzip (trailing garbage)")
    raise CodecError(f"{what} has more than {MAX_GZIP_MEMBERS} gzip members")
