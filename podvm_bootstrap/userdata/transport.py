"""Removing a provider's transport encoding (base64) from the user-data."""

from __future__ import annotations

import base64
import binascii

from podvm_bootstrap.errors import UserDataError


def decode_base64(provider: str, body: bytes, max_size: int) -> bytes:
    """Strict base64 (line breaks and surrounding blanks allowed), at most max_size bytes decoded."""
    compact = b"".join(body.split())
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise UserDataError(f"{provider}: user-data is not valid base64 ({len(body)} bytes received)") from None
    if len(data) > max_size:
        raise UserDataError(f"{provider}: user-data is larger than max_size ({max_size} bytes); refused")
    return data
