"""RFC 8785 (JSON Canonicalization Scheme) for the values an event log carries:
objects, arrays, strings, integers, booleans and null. Pure.

Canonical form: no whitespace, object members sorted by their names' UTF-16
code units, strings with only the escapes JSON requires (`"`, `\\`, and the
control characters, the short forms where JSON has one, else `\\u00xx` in
lower case), every other character as itself (UTF-8). Numbers are limited to
integers in the I-JSON range, which serialize the same in every
implementation; a float, NaN or a larger integer is refused (ValueError),
as are lone surrogates, which no canonical UTF-8 can carry."""

from __future__ import annotations

from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def canonical_json(value: Any) -> str:
    """`value` as RFC 8785 canonical JSON text."""
    parts: list[str] = []
    _write(value, parts, depth=0)
    return "".join(parts)


def _write(value: Any, out: list[str], depth: int) -> None:
    if depth > 32:
        raise ValueError("nested too deeply for canonical JSON")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"integer {value} is outside the I-JSON range")
        out.append(str(int(value)))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"object member name {key!r} is not a string")
        out.append("{")
        for index, key in enumerate(sorted(value, key=_utf16_key)):
            if index:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out, depth + 1)
        out.append("}")
    else:
        raise ValueError(f"{type(value).__name__} has no canonical JSON form here (floats are refused)")


def _utf16_key(name: str) -> bytes:
    # RFC 8785 3.2.3: member names compare as arrays of UTF-16 code units.
    return name.encode("utf-16-be", "surrogatepass")


def _string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            raise ValueError("a lone surrogate has no canonical JSON form")
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif code < 0x20:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
