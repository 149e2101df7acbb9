"""Removing a provider's transport encoding (base64) from the user-data."""

from __future__ import annotations

from podvm_bootstrap.common.errors import UserDataError
from podvm_bootstrap.userdata.codec import CodecError, b64decode_strict


def decode_base64(provider: str, body: bytes, max_size: int) -> bytes:
    """Strict base64 (line breaks and surrounding blanks allowed), at most max_size bytes decoded."""
    try:
        data = b64decode_strict(body)
    except CodecError:
        raise UserDataError(f"{provider}: user-data is not valid base64 ({len(body)} bytes received)") from None
    if len(data) > max_size:
        raise UserDataError(f"{provider}: user-data is larger than max_size ({max_size} bytes); refused")
    return data
