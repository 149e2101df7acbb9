"""The initdata TOML pre-scan (tomlbounds): each bound refuses one past it,
strings and comments never count as structure, and the worst documents within
the bounds parse within a memory bound (their time is measured by
`python -m tests.initdata_worst_case`, figures in docs/userdata.md "Bounds on
untrusted input")."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import tomllib
import tracemalloc
from pathlib import Path

import pytest

from podvm_bootstrap.userdata.initdata import InitdataError, parse_initdata
from podvm_bootstrap.userdata.tomlbounds import DEFAULT_LIMITS, TomlBoundsError, TomlLimits, check_toml_bounds
from tests.initdata_worst_case import SHAPES

MAX = 16 * 1024 * 1024
HEADER = 'algorithm = "sha256"\nversion = "0.1.0"\n'
# Each shape of tests/initdata_worst_case.py parses in less than this (the
# largest measured is about 16 MiB: the 16 MiB of strings themselves).
PARSE_MEMORY_BOUND = 48 * 1024 * 1024

Q3, A3 = '"' * 3, "'" * 3  # the multi-line string delimiters
TRICKY = "\n".join([
    'algorithm = "sha384"',
    'version = "0.1.0"',
    "# a comment with \"quotes' and [brackets] = , . {",
    "[data]",
    f'"aa.toml" = {A3}',
    "[token_configs]",
    'x = "y" = [ { a.b.c.d ' + A3 + "'",
    f'"cdh.toml" = {Q3}a\\{Q3}b',
    f'c"" {Q3}""',
    '"policy.rego" = "p\\\\\\"q = [ {"',
    "lit = 'C:\\path = ['",
    "t = 1979-05-27 07:32:00.5Z",
    "f = [1.5, {a.b = 2, c = [[1,2],[3]]}, 0x1f, -inf, nan, true]",
    "arr = [",
    "  1,  # inside [",
    "  2,",
    "]",
    '[[x.y."z.w"]]',
    "k.'l.m'.n = 1",
    "[ a . b ]",
    "",
])


def blob(text: str) -> bytes:
    return base64.b64encode(gzip.compress(text.encode()))


def peak_memory(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_valid_document_with_structure_inside_strings_and_comments_passes_unchanged():
    check_toml_bounds(TRICKY)
    # the characters inside strings and comments would exceed these if counted
    check_toml_bounds(TRICKY, TomlLimits(keys=12, containers=6, values=10, key_parts=3, tables=3))
    assert tomllib.loads(TRICKY)["data"]["cdh.toml"] == 'a"""b\nc"" ""'


# One document past each bound, the others left at their defaults.
PAST_ONE_BOUND = {
    "lines": ("lines", "\n" * 10),
    "keys": ("keys", "".join(f"k{n} = {n}\n" for n in range(10))),
    "key_parts": ("dotted parts", ".".join(["a"] * 10) + " = 1\n"),
    "tables": ("tables", "".join(f"[t{n}]\n" for n in range(10))),
    "containers": ("containers", "a = [" + ",".join(["[]"] * 10) + "]\n"),
    "values": ("values", "a = [" + ",".join(["1"] * 12) + "]\n"),
    "depth": ("nested deeper", "a = " + "[" * 10 + "]" * 10 + "\n"),
    "string": ("a string longer", "a = '" + "x" * 10 + "'\n"),
    "escapes": ("escapes", 'a = "' + "\\n" * 10 + '"\n'),
    "bare": ("a bare key or value longer", "a = 1" + "0" * 10 + "\n"),
    "tokens": ("tokens", "a = [" + " 1 ," * 3 + "]\n"),
}


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(TomlLimits)])
def test_each_bound_refuses_a_document_just_past_it(field):
    words, text = PAST_ONE_BOUND[field]
    limits = dataclasses.replace(DEFAULT_LIMITS, **{field: 9})
    with pytest.raises(TomlBoundsError, match=words):
        check_toml_bounds(text, limits)
    check_toml_bounds(text, dataclasses.replace(DEFAULT_LIMITS, **{field: 40}))  # and only that bound


@pytest.mark.parametrize("text, words", [
    ('a = "never ends\n', "a string never ends"),
    ("a = '''never ends\n", "a string never ends"),
    ("a = [1}\n", "unbalanced"),
    ("]\n", "unbalanced"),
])
def test_unterminated_strings_and_unbalanced_brackets_are_refused(text, words):
    with pytest.raises(TomlBoundsError, match=words):
        check_toml_bounds(text)


@pytest.mark.parametrize("name", list(SHAPES))
def test_the_worst_documents_within_the_bounds_pass_them_and_parse_in_bounded_memory(name):
    text = SHAPES[name]()
    check_toml_bounds(text)
    assert peak_memory(lambda: tomllib.loads(text)) < PARSE_MEMORY_BOUND


def test_a_key_of_thousands_of_parts_is_refused_before_tomllib_sees_it():
    # tomllib's cost in key parts is quadratic: 20,000 parts (80 KB, a few
    # hundred bytes gzipped) took 1.5 GiB and 4.6 s; 5,000 parts here.
    data = blob(HEADER + ".".join(["a"] * 5000) + " = 1\n")
    assert len(data) < 1000
    outcome: dict[str, str] = {}

    def attempt() -> None:
        try:
            parse_initdata(data, MAX)
        except InitdataError as exc:
            outcome["error"] = str(exc)

    peak = peak_memory(attempt)
    assert outcome.get("error", "").startswith("initdata TOML refused: a key of more than 8 dotted parts")
    assert peak < 4 * 1024 * 1024


def test_a_number_tomllib_cannot_convert_is_one_initdata_error():
    # Python refuses int() of more than 4300 digits with ValueError, which
    # tomllib let through: a traceback before the bounds.
    with pytest.raises(InitdataError, match="^initdata TOML refused: a bare key or value longer than 128"):
        parse_initdata(blob(HEADER + "n = 1" + "0" * 5000 + "\n"), MAX)


def test_the_docs_table_is_the_one_the_script_prints():
    docs = (Path(__file__).resolve().parent.parent / "docs/userdata.md").read_text()
    for name in SHAPES:
        assert f"| {name} |" in docs
