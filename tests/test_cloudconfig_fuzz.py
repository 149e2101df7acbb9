"""Fuzzing the parsers of untrusted input (hypothesis, deterministic: a
derandomized, bounded run): the user-data parser (cloudconfig) and the
initdata parser (tomlbounds + tomllib). Whatever the input, each one returns
or raises its one-line error (never another exception), within a memory
bound (tracemalloc peak) and hypothesis's generous per-example deadline."""

from __future__ import annotations

import base64
import gzip
import tracemalloc
from datetime import timedelta

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from podvm_bootstrap.common.errors import UserDataError
from podvm_bootstrap.userdata.cloudconfig import ImageRequests, UserData, decode_payload, parse_userdata
from podvm_bootstrap.userdata.initdata import Initdata, InitdataError, image_requests, parse_initdata
from podvm_bootstrap.userdata.tomlbounds import TomlBoundsError, check_toml_bounds

MAX_SIZE = 256 * 1024
MEMORY_BOUND = 32 * 1024 * 1024  # inputs are a few KiB: any amplification shows
FUZZ = settings(max_examples=300, derandomize=True, deadline=timedelta(seconds=5), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def within_memory(fn):
    """fn's result (or its exception, returned), with its peak memory."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the test, which says which are allowed
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- user-data: YAML-ish documents built from the pieces attacks are made of ----------

YAML_PIECES = st.sampled_from([
    "#cloud-config\n", "write_files:\n", "  - path: /run/peerpod/apf.json\n", "    content: ", "encoding: b64\n",
    "podvm_bootstrap:\n", "  images:\n", "    apf: ", "quay.io/a/b@sha256:" + "a" * 64, "\n", "  ", "- ", ": ",
    "[", "]", "{", "}", ",", "&a ", "*a", "!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!binary ", "!!str ",
    "!!python/object:os.system ", "!!set ", "!!omap ", "!!pairs ", "!!map ", "!!seq ", "? ", "<<: ", "''", '""',
    "'", '"', "|\n", ">-\n", "---\n", "...\n", "%YAML 1.1\n", "0x", "0o7", "1_0", "1e999", ".inf", ".nan", "~",
    "2001-13-14", "2001-02-03T04:05:06+99:99", "9" * 50, "yes", "maybe", "\\", "\t", "\x00", "\ufeff", "#", "%",
    "@", "`", "\r\n", "é", "\U0001f600",
])
YAML_DOCUMENTS = st.lists(YAML_PIECES | st.text(max_size=8), max_size=60).map("".join)


@FUZZ
@given(YAML_DOCUMENTS)
def test_parse_userdata_returns_or_raises_one_line_within_memory(text):
    result, peak = within_memory(lambda: parse_userdata(text.encode("utf-8", "surrogatepass")))
    assert isinstance(result, (UserData, UserDataError)), repr(result)
    if isinstance(result, UserDataError):
        assert "\n" not in str(result)
    else:
        assert all("\n" not in problem for problem in result.problems)
    assert peak < MEMORY_BOUND


@FUZZ
@given(YAML_DOCUMENTS)
def test_the_initdatas_requests_entry_returns_or_raises_one_line_within_memory(text):
    # the initdata's [data] "podvm-bootstrap.yaml": the same pieces, through its own reader
    parsed = Initdata(algorithm="sha256", version="0.1.0", files={}, digest_hex="", requests=text)
    result, peak = within_memory(lambda: image_requests(parsed, MAX_SIZE))
    assert isinstance(result, (ImageRequests, UserDataError)), repr(result)
    if isinstance(result, UserDataError):
        assert "\n" not in str(result)
    else:
        assert all("\n" not in problem for problem in result.problems)
    assert peak < MEMORY_BOUND


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from(["raw", "gzip", "base64", "base64+gzip"]))
def test_decode_and_parse_of_any_bytes_returns_or_raises_one_line_within_memory(data, wrapping):
    if wrapping in ("gzip", "base64+gzip"):
        data = gzip.compress(data)
    if wrapping.startswith("base64"):
        data = base64.b64encode(data)

    def decode_and_parse():
        return parse_userdata(decode_payload(data, MAX_SIZE))

    result, peak = within_memory(decode_and_parse)
    assert isinstance(result, (UserData, UserDataError)), repr(result)
    assert peak < MEMORY_BOUND


# --- initdata: TOML-ish documents ---------------------------------------------------------

TOML_PIECES = st.sampled_from([
    'algorithm = "sha256"\n', 'version = "0.1.0"\n', "[data]\n", '"aa.toml" = ', "'''", '"""', "'", '"', "\\",
    "\\u00e9", "\\U0010FFFF", "\\x", "a", "b.c", ".", "=", " = ", "[", "]", "[[", "]]", "{", "}", ",", "\n", "\r\n",
    "#", " ", "\t", "1", "1" * 60, "0x_1", "1e9999", "inf", "nan", "+", "-", "true", "1979-05-27T07:32:00Z",
    "1979-13-40", "07:32:00", "[a.b.c.d.e.f.g.h.i]\n", "x.y.z.w.v.u.t.s.r.q = 1\n", "é", "\x00", "\x7f",
])
# A piece repeated thousands of times is what a few bytes of gzip carry.
REPEATED = st.tuples(TOML_PIECES, st.sampled_from([10, 300, 5000])).map(lambda t: t[0] * t[1])
TOML_DOCUMENTS = st.lists(TOML_PIECES | REPEATED | st.text(max_size=6), max_size=40).map("".join)


@FUZZ
@given(TOML_DOCUMENTS)
@example('algorithm = "sha256"\nversion = "1"\n' + "a." * 5000 + "a = 1\n")  # quadratic in key parts
@example('algorithm = "sha256"\nversion = "1"\nn = ' + "1" * 5000 + "\n")     # past int()'s digit limit
def test_parse_initdata_returns_or_raises_one_line_within_memory(text):
    blob = base64.b64encode(gzip.compress(text.encode("utf-8", "surrogatepass")))
    result, peak = within_memory(lambda: parse_initdata(blob, 16 * 1024 * 1024))
    assert isinstance(result, (Initdata, InitdataError)), repr(result)
    if isinstance(result, InitdataError):
        assert "\n" not in str(result)
    assert peak < MEMORY_BOUND


@FUZZ
@given(TOML_DOCUMENTS)
def test_the_pre_scan_raises_only_its_own_error(text):
    result, _ = within_memory(lambda: check_toml_bounds(text))
    assert result is None or isinstance(result, TomlBoundsError), repr(result)
