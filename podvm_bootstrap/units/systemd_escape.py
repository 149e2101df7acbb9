"""Quoting of values for systemd unit files. Pure functions, no I/O.

What systemd 252 does to a unit file line (src/shared/conf-parser.c,
src/core/load-fragment.c, src/basic/extract-word.c, src/basic/escape.c):

- A file is split into lines at "\\n", "\\r" and NUL. A line whose last
  backslash is not itself escaped continues on the next line. Leading and
  trailing whitespace is stripped; "#" or ";" first makes a comment.
- ExecStart= and friends: the value is split into words on whitespace;
  "..." and '...' quote, and C escapes (\\n, \\t, \\\\, \\", \\xHH, ...) are
  decoded inside and outside quotes (EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE). A
  lone unquoted ";" separates commands. Each word then has its %-specifiers
  expanded ("%%" is "%"), and at exec time "$VAR"/"${VAR}" are substituted
  ("$$" is "$").
- Description= and other free text: %-specifiers are expanded; no unescaping.

So an exec word is written either bare (only characters no step touches, "%"
doubled) or double-quoted with "\\" and '"' backslash-escaped, "%" and "$"
doubled, and every control or invisible character written as \\xHH bytes (a
raw one could end the line or hide in an editor). NUL cannot be carried in an
argv at all, and a lone surrogate has no UTF-8 form: both are refused.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

# Characters a bare exec word may hold: none is whitespace, a quote, a
# backslash, "$" or ";", and "%" is doubled on the way out.
_BARE = frozenset(string.ascii_letters + string.digits + "-_.,/:=+@%")
_NAMED_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


class UnrepresentableValue(ValueError):
    """A value that no systemd unit can carry (NUL, a lone surrogate)."""


def check_representable(value: str) -> None:
    """UnrepresentableValue when `value` cannot be written into a unit file."""
    if not isinstance(value, str):
        raise UnrepresentableValue(f"expected a string, got {type(value).__name__}")
    if "\0" in value:
        raise UnrepresentableValue("contains a NUL character, which a command line cannot carry")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UnrepresentableValue("contains a lone surrogate, which is not valid UTF-8") from None


def _plain(ch: str) -> bool:
    """A character that may stand as itself in a unit file: visible, and not a
    Unicode noncharacter (systemd's UTF-8 validator refuses those)."""
    cp = ord(ch)
    if cp < 0x80:
        return 0x20 <= cp < 0x7F
    if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
        return False
    return ch.isprintable()


def _hex_bytes(ch: str) -> str:
    return "".join(f"\\x{b:02x}" for b in ch.encode("utf-8"))


def exec_word(value: str) -> str:
    """One argv element written so that systemd's Exec*= parsing, specifier
    expansion and environment substitution give back exactly `value`."""
    check_representable(value)
    if value and all(ch in _BARE for ch in value):
        return value.replace("%", "%%")
    out = ['"']
    for ch in value:
        if ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif ch == "%":
            out.append("%%")
        elif ch == "$":
            out.append("$$")
        elif _plain(ch):
            out.append(ch)
        else:
            out.append(_hex_bytes(ch))
    out.append('"')
    return "".join(out)


def exec_command(argv: Sequence[str], line_breaks: Iterable[int] = ()) -> str:
    """An Exec*= value from an argv whose first element is an absolute path of
    bare characters. A continuation line starts before each index in
    `line_breaks` (systemd joins a line ending in an unescaped backslash with
    the next), to keep long podman command lines readable."""
    words = list(argv)
    if not words or not words[0].startswith("/") or not all(ch in _BARE and ch != "%" for ch in words[0]):
        raise UnrepresentableValue(f"executable must be an absolute path of plain characters: {words[:1]!r}")
    breaks = set(line_breaks)
    out = words[0]
    for index, word in enumerate(words[1:], start=1):
        out += (" \\\n\t" if index in breaks else " ") + exec_word(word)
    return out


def unit_text(value: str) -> str:
    """Free text for a directive like Description=: "%" doubled, and anything
    that is not a plain visible character (controls, a backslash, invisible
    Unicode) shown as \\xHH, so the value stays on one line and can never end
    in a continuation backslash. systemd does not unescape it: display only."""
    check_representable(value)
    out = []
    for ch in value:
        if ch == "%":
            out.append("%%")
        elif ch != "\\" and _plain(ch):
            out.append(ch)
        else:
            out.append(_hex_bytes(ch))
    return "".join(out)
