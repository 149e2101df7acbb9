"""A test-side model of how systemd 252 reads a unit file and an Exec*= line,
written from its sources (src/shared/conf-parser.c config_parse/parse_line,
src/basic/fileio.c read_line, src/core/load-fragment.c config_parse_exec,
src/basic/extract-word.c extract_first_word with EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE,
src/basic/escape.c cunescape_one, src/shared/specifier.c, and
src/basic/env-util.c replace_env_argv). Independent of the code under test, so
that rendered units can be parsed back and compared with the intended argv.

Where systemd would warn and guess (an unknown escape, unbalanced quotes) or
where the result would depend on the unit's environment or specifiers, this
parser raises instead: rendered units must never rely on those."""

from __future__ import annotations

from dataclasses import dataclass

WHITESPACE = b" \t\n\r"
COMMENTS = b"#;"
LINE_ENDINGS = (b"\r\n", b"\n", b"\r", b"\0")


class SystemdParseError(ValueError):
    pass


@dataclass(frozen=True)
class Assignment:
    section: str
    key: str
    value: bytes   # the stripped rvalue, as systemd hands it to the directive's parser
    line: int      # physical line number where the logical line started


def physical_lines(data: bytes) -> list[bytes]:
    """read_line(): a line ends at "\\n", "\\r", "\\r\\n" or NUL."""
    lines, start, i = [], 0, 0
    while i < len(data):
        c = data[i:i + 1]
        if c in (b"\n", b"\r", b"\0"):
            lines.append(data[start:i])
            i += 2 if data[i:i + 2] == b"\r\n" else 1
            start = i
        else:
            i += 1
    if start < len(data):
        lines.append(data[start:])
    return lines


def logical_lines(data: bytes) -> list[tuple[int, bytes]]:
    """config_parse(): comments dropped (even inside a continuation), and a line
    whose trailing backslash is unescaped joined with the next one."""
    out: list[tuple[int, bytes]] = []
    continuation: bytearray | None = None
    cont_start = 0
    bom_seen = False
    for number, buf in enumerate(physical_lines(data), start=1):
        stripped = buf.lstrip(WHITESPACE)
        if stripped and stripped[:1] in (b"#", b";"):
            continue
        line = buf
        if not bom_seen and line.startswith(b"\xef\xbb\xbf"):
            line, bom_seen = line[3:], True
        if continuation is not None:
            continuation += line
            p = continuation
        else:
            p = bytearray(line)
            cont_start = number
        escaped = False
        for byte in p:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
        if escaped:
            p[-1:] = b" "
            continuation = p
            continue
        out.append((cont_start, bytes(p)))
        continuation = None
    if continuation is not None:
        out.append((cont_start, bytes(continuation)))
    return out


def parse_unit(text: str | bytes) -> list[Assignment]:
    """Every assignment systemd would see, in order, with its section.
    Raises on anything systemd would reject or warn about structurally."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    section: str | None = None
    result: list[Assignment] = []
    for number, raw in logical_lines(data):
        line = raw.strip(WHITESPACE)
        if not line or line[:1] in COMMENTS + b"\n":
            continue
        if line.startswith(b"["):
            if not line.endswith(b"]"):
                raise SystemdParseError(f"line {number}: invalid section header {line!r}")
            section = line[1:-1].decode("utf-8")
            continue
        if section is None:
            raise SystemdParseError(f"line {number}: assignment outside of a section")
        if b"=" not in line:
            raise SystemdParseError(f"line {number}: missing '=' in {line!r}")
        key, value = line.split(b"=", 1)
        result.append(Assignment(section, key.strip(WHITESPACE).decode("utf-8"),
                                 value.strip(WHITESPACE), number))
    return result


_SIMPLE_ESCAPES = {
    ord("a"): b"\a", ord("b"): b"\b", ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r",
    ord("t"): b"\t", ord("v"): b"\v", ord("\\"): b"\\", ord('"'): b'"', ord("'"): b"'", ord("s"): b" ",
}


def _unichar_is_valid(c: int) -> bool:
    return c < 0x110000 and (c & 0xFFFFF800) != 0xD800 and not (0xFDD0 <= c <= 0xFDEF) \
        and (c & 0xFFFE) != 0xFFFE


def cunescape_one(p: bytes, i: int) -> tuple[bytes, int]:
    """The escape starting after the backslash at p[i]; (bytes, length)."""
    if i >= len(p):
        raise SystemdParseError("trailing backslash")
    c = p[i]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], 1

    def hexdigits(n: int) -> int:
        digits = p[i + 1:i + 1 + n]
        if len(digits) != n or any(chr(d) not in "0123456789abcdefABCDEF" for d in digits):
            raise SystemdParseError(f"bad \\{chr(c)} escape")
        return int(digits, 16)

    if c == ord("x"):
        value = hexdigits(2)
        if value == 0:
            raise SystemdParseError("\\x00 refused")
        return bytes([value]), 3   # eight_bit: the raw byte
    if c == ord("u"):
        value = hexdigits(4)
        if value == 0:
            raise SystemdParseError("\\u0000 refused")
        return chr(value).encode("utf-8", "surrogatepass"), 5
    if c == ord("U"):
        value = hexdigits(8)
        if value == 0 or not _unichar_is_valid(value):
            raise SystemdParseError("bad \\U escape")
        return chr(value).encode("utf-8"), 9
    if ord("0") <= c <= ord("7"):
        digits = p[i:i + 3]
        if len(digits) != 3 or any(d not in b"01234567" for d in digits):
            raise SystemdParseError("bad octal escape")
        value = int(digits, 8)
        if value == 0 or value > 255:
            raise SystemdParseError("bad octal escape value")
        return bytes([value]), 3
    raise SystemdParseError(f"unknown escape \\{chr(c)} (systemd would warn and keep it)")


def extract_first_word(p: bytes) -> tuple[bytes | None, bytes]:
    """extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE): (word, rest);
    word is None when only whitespace is left."""
    i = 0
    while i < len(p) and p[i] in WHITESPACE:
        i += 1
    if i == len(p):
        return None, b""
    out = bytearray()
    quote: int | None = None
    while i < len(p):
        c = p[i]
        if quote is not None:
            if c == quote:
                quote = None
                i += 1
            elif c == 0x5C:
                decoded, used = cunescape_one(p, i + 1)
                out += decoded
                i += 1 + used
            else:
                out.append(c)
                i += 1
            continue
        if c in (0x22, 0x27):
            quote = c
            i += 1
        elif c == 0x5C:
            decoded, used = cunescape_one(p, i + 1)
            out += decoded
            i += 1 + used
        elif c in WHITESPACE:
            while i < len(p) and p[i] in WHITESPACE:
                i += 1
            return bytes(out), p[i:]
        else:
            out.append(c)
            i += 1
    if quote is not None:
        raise SystemdParseError("unbalanced quoting")
    return bytes(out), b""


def expand_specifiers(word: bytes) -> bytes:
    """unit_full_printf(): "%%" is "%"; any real specifier would make the
    argument depend on the unit, so it is an error here."""
    out, i = bytearray(), 0
    while i < len(word):
        if word[i] == 0x25:
            if word[i + 1:i + 2] == b"%":
                out.append(0x25)
                i += 2
                continue
            raise SystemdParseError(f"specifier %{word[i + 1:i + 2].decode('latin-1')} would be expanded")
        out.append(word[i])
        i += 1
    return bytes(out)


def substitute_environment(word: bytes) -> bytes:
    """replace_env_argv() for one word, in an environment where using any
    variable is an error: "$$" is "$", "${" and a word starting with a lone
    "$" would substitute; any other "$" stays as it is."""
    if word[:1] == b"$" and word[1:2] not in (b"{", b"$"):
        raise SystemdParseError(f"word {word!r} would be replaced by a variable")
    out, i = bytearray(), 0
    while i < len(word):
        if word[i] == 0x24 and i + 1 < len(word):
            nxt = word[i + 1]
            if nxt == 0x24:
                out.append(0x24)
                i += 2
                continue
            if nxt == 0x7B:
                raise SystemdParseError(f"${{...}} in {word!r} would be substituted")
        out.append(word[i])
        i += 1
    return bytes(out)


@dataclass(frozen=True)
class ExecCommand:
    prefixes: str            # the "-@:+!" flags of the first word
    argv: tuple[str, ...]    # what execve() would get


def parse_exec(value: bytes | str) -> list[ExecCommand]:
    """config_parse_exec() and the later environment substitution."""
    p = value.encode("utf-8") if isinstance(value, str) else value
    commands: list[ExecCommand] = []
    while True:
        semicolon = False
        first, p = extract_first_word(p)
        if first is None:
            break
        if first == b";":
            continue
        prefixes = ""
        while first[:1] and first[:1] in b"-@:+!":
            prefixes += first[:1].decode()
            first = first[1:]
        path = expand_specifiers(first)
        if not path:
            raise SystemdParseError("empty executable path")
        argv = [] if "@" in prefixes else [path]
        while p:
            if p[:1] == b";" and (len(p) == 1 or p[1:2] in (b" ", b"\t", b"\n", b"\r")):
                p = p[1:].lstrip(WHITESPACE)
                semicolon = True
                break
            if p[:2] == b"\\;" and (len(p) == 2 or p[2:3] in (b" ", b"\t", b"\n", b"\r")):
                p = p[2:].lstrip(WHITESPACE)
                argv.append(b";")
                continue
            word, p = extract_first_word(p)
            if word is None:
                break
            argv.append(expand_specifiers(word))
        if ":" not in prefixes:
            argv = [substitute_environment(a) for a in argv]
        commands.append(ExecCommand(prefixes, tuple(a.decode("utf-8") for a in argv)))
        if not semicolon:
            break
    return commands
