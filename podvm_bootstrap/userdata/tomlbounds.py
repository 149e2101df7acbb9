"""A linear pre-scan that bounds the structure of an untrusted TOML document
before tomllib sees it.

tomllib's time and memory grow faster than the text in some shapes (a key of
millions of dotted parts is quadratic; millions of tiny tables, keys, array
elements or string escapes are millions of Python objects from a few
kilobytes of gzip). The scan below reads the text once, knows just enough of
TOML's lexical rules to tell strings and comments from structure (the same
delimiters and escapes tomllib uses), and refuses a document past any of
`TomlLimits`. Within them, tomllib's cost is bounded by construction; the
worst case measured is in docs/userdata.md "Bounds on untrusted input".

It does not validate: a document it lets through may still be invalid TOML,
which tomllib then reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class TomlLimits:
    # Initdata needs a handful of keys ("algorithm", "version", and a [data]
    # table of file contents in strings); these leave a wide margin and keep
    # the worst case tomllib can be made to do small (docs/userdata.md).
    lines: int = 10_000            # lines outside multi-line strings
    keys: int = 2_000              # key = value pairs (inline tables' included)
    key_parts: int = 8             # dotted parts of one key or table header
    tables: int = 200              # [table] and [[array of tables]] headers
    containers: int = 2_000        # arrays and inline tables
    values: int = 20_000           # array elements and inline-table entries (commas)
    depth: int = 16                # nesting of arrays and inline tables
    string: int = 4 * 1024 * 1024  # characters of one string
    escapes: int = 100_000         # backslash escapes in all basic strings
    bare: int = 128                # characters of one bare key, number, date or boolean
    tokens: int = 200_000          # tokens the scan looks at (blanks and comments included)


DEFAULT_LIMITS = TomlLimits()


class TomlBoundsError(ValueError):
    """The document exceeds a bound (or a string never ends); one line."""


_STRUCTURE = frozenset("\n=[]{},.\"'")
# One token: blanks, a comment, a bare run (key, number, date, boolean), or one
# structural character. Runs are consumed by the regex engine, not char by char.
_TOKEN = re.compile(r"""[ \t\r]+|#[^\n]*|[^ \t\r\n=\[\]{},.#"']+|.""", re.DOTALL)
# Where a string may end or hold an escape, by (quote, multi-line).
_STOPS = {
    ('"', False): re.compile(r'["\\\n]'),
    ('"', True): re.compile(r'["\\]'),
    ("'", False): re.compile(r"['\n]"),
    ("'", True): re.compile(r"'{3}"),
}


class _Scan:
    def __init__(self, text: str, limits: TomlLimits) -> None:
        self.text = text
        self.limits = limits
        self.lineno = 1  # for messages: every line, multi-line strings' included
        self.counts = {"tokens": 0, "lines": 1, "keys": 0, "tables": 0, "containers": 0, "values": 0, "escapes": 0}

    def error(self, what: str) -> TomlBoundsError:
        return TomlBoundsError(f"{what} (at line {self.lineno})")

    def bump(self, name: str) -> None:
        self.counts[name] += 1
        limit = getattr(self.limits, name)
        if self.counts[name] > limit:
            raise self.error(f"more than {limit} {name}")

    def key_ended(self, dots: int) -> None:
        if dots >= self.limits.key_parts:
            raise self.error(f"a key of more than {self.limits.key_parts} dotted parts")

    def run(self) -> None:
        text, limits = self.text, self.limits
        closers: list[str] = []  # what each open array / inline table / header waits for
        dots = 0                 # dots outside strings since the current key started
        line_start = True        # only blanks since the last newline outside brackets
        pos, end = 0, len(text)
        while pos < end:
            self.bump("tokens")
            token = _TOKEN.match(text, pos)
            assert token is not None  # the last alternative matches any character
            char = token.group()[0]
            if char in " \t\r#":  # blanks, or a comment up to its line's end
                pos = token.end()
                continue
            if char not in _STRUCTURE:  # a bare key, number, date or boolean
                if token.end() - pos > limits.bare:
                    raise self.error(f"a bare key or value longer than {limits.bare} characters")
                pos, line_start = token.end(), False
                continue
            if char == "\n":
                self.lineno += 1
                self.bump("lines")
                if not closers or closers[-1] == "]":  # a statement ends here; arrays span lines
                    dots = 0
                    line_start = not closers
                pos += 1
                continue
            if char in "\"'":
                pos = self.skip_string(pos)
                line_start = False
                continue
            if char == "[" and line_start and not closers:  # a table header: [a.b] or [[a.b]]
                self.bump("tables")
                pos += 2 if text.startswith("[[", pos) else 1
                closers.append("header")
                dots, line_start = 0, False
                continue
            if char == "]" and closers and closers[-1] == "header":
                self.key_ended(dots)
                closers.pop()
                pos += 2 if text.startswith("]]", pos) else 1
                continue
            if char in "[{":
                self.bump("containers")
                closers.append("]" if char == "[" else "}")
                if len(closers) > limits.depth:
                    raise self.error(f"nested deeper than {limits.depth}")
                dots = 0
            elif char in "]}":
                if not closers or closers[-1] != char:
                    raise self.error(f"an unbalanced {char!r}")
                closers.pop()
            elif char == ",":
                self.bump("values")
                dots = 0
            elif char == "=":
                self.bump("keys")
                self.key_ended(dots)
                dots = 0
            else:  # "."
                dots += 1
                self.key_ended(dots - 1)  # no value has more than one dot: only keys get here
            line_start = False
            pos += 1

    def skip_string(self, pos: int) -> int:
        """The position just after the string that starts at `pos`, its length
        and escapes counted. tomllib's rules: basic strings (") have backslash
        escapes, literal ones (') none; a tripled quote opens a multi-line
        string, whose closing delimiter may be followed by one or two more
        quotes that belong to its content; a one-line string ends at its line.
        Each search goes on from the last stop: linear."""
        text = self.text
        quote = text[pos]
        multiline = text.startswith(quote * 3, pos)
        delimiter = quote * 3 if multiline else quote
        stops = _STOPS[(quote, multiline)]
        start = pos = pos + len(delimiter)
        while True:
            found = stops.search(text, pos)
            if found is None or found.group() == "\n":
                raise self.error("a string never ends")
            stop = found.start()
            if stop - start > self.limits.string:
                raise self.error(f"a string longer than {self.limits.string} characters")
            if found.group() == "\\":
                self.bump("escapes")
                pos = stop + 2
                continue
            if not text.startswith(delimiter, stop):
                pos = stop + 1  # a lone quote inside a multi-line basic string
                continue
            if multiline:
                self.lineno += text.count("\n", start, stop)
                stop += len(delimiter)
                for _ in range(2):  # up to two more quotes belong to the content
                    if text.startswith(quote, stop):
                        stop += 1
            else:
                stop += 1
            return stop


def check_toml_bounds(text: str, limits: TomlLimits = DEFAULT_LIMITS) -> None:
    """TomlBoundsError when `text` exceeds `limits`; one pass over the text."""
    _Scan(text, limits).run()
