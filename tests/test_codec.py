"""codec: strict base64 and bounded gunzip, the one home of both (pure)."""

from __future__ import annotations

import base64
import gzip
import subprocess
import sys

import pytest

from podvm_bootstrap.common.errors import UserDataError
from podvm_bootstrap.userdata.codec import GZIP_MAGIC, MAX_GZIP_MEMBERS, CodecError, b64decode_strict, gunzip_bounded


def test_base64_ignores_white_space_and_nothing_else():
    data = bytes(range(256)) * 3
    assert b64decode_strict(base64.encodebytes(data)) == data          # wrapped at 76 columns
    assert b64decode_strict(b"  " + base64.b64encode(data) + b"\r\n") == data
    for bad in (b"abc$", b"YWJ", b"YW Jj*", b"-_-_", "é".encode()):
        with pytest.raises(CodecError, match="^initdata is not valid base64$"):
            b64decode_strict(bad, "initdata")


def test_base64_refusal_is_a_one_line_user_data_error():
    with pytest.raises(UserDataError) as info:
        b64decode_strict(b"not\nbase64!")
    assert str(info.value) == "data is not valid base64"


def test_gunzip_is_bounded_in_total_over_members():
    data = gzip.compress(b"a" * 600) + gzip.compress(b"b" * 600)
    assert gunzip_bounded(data, 1200) == b"a" * 600 + b"b" * 600
    with pytest.raises(CodecError, match="^content decompresses to more than 1000 bytes$"):
        gunzip_bounded(data, 1000, "content")


def test_gunzip_never_inflates_a_bomb():
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))
    with pytest.raises(CodecError, match="more than 4096 bytes"):
        gunzip_bounded(bomb, 4096)


@pytest.mark.parametrize(("data", "reason"), [
    (gzip.compress(b"x")[:-4], "truncated"),
    (gzip.compress(b"x") + b"garbage", "trailing garbage"),
    (GZIP_MAGIC + b"\x08\x00not deflate at all", "not valid gzip"),
    (gzip.compress(b"x") * (MAX_GZIP_MEMBERS + 1), f"more than {MAX_GZIP_MEMBERS} gzip members"),
])
def test_gunzip_refuses_what_is_not_gzip(data: bytes, reason: str):
    with pytest.raises(CodecError, match=reason):
        gunzip_bounded(data, 1024)


def test_gunzip_tolerates_trailing_zero_padding():
    assert gunzip_bounded(gzip.compress(b"x") * 2 + b"\0" * 512, 10) == b"xx"


def test_initdata_decodes_without_the_cloud_config_parser():
    """initdata takes its codec from codec, not from cloudconfig."""
    code = "import sys, podvm_bootstrap.userdata.initdata; print('podvm_bootstrap.userdata.cloudconfig' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
