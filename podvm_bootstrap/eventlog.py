"""The measured launch's event log, in the Attestation Agent Event Log (AAEL)
text format of the confidential-containers attestation agent. Pure: lines,
replay, prediction and a bounded parser; no file or TPM here.

    INIT sha256/<hex of the PCR before the first extend>
    github.com/confidential-containers LaunchComponent {"component":...,"digest":...,"image":...,"source":...}
    github.com/confidential-containers LaunchComplete {"components":N}

Every line, INIT included, is extended as it is written (without its
newline): PCR = sha256(PCR || sha256(line)). An event line is exactly three
fields separated by single spaces (domain, operation, content), which is how
the attestation agent and Trustee's verifier split it, so a content never
holds a space; ours is RFC 8785 canonical JSON."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from podvm_bootstrap.errors import EXIT_CONFIG, BootstrapError, one_line
from podvm_bootstrap.jcs import canonical_json

ALGORITHM = "sha256"
DIGEST_SIZE = 32
ZERO = bytes(DIGEST_SIZE)
DOMAIN = "github.com/confidential-containers"
LAUNCH_COMPONENT = "LaunchComponent"
LAUNCH_COMPLETE = "LaunchComplete"
SOURCES = ("default", "variant", "override")

# Bounds on a log read from a file (a verifier's copy is untrusted input).
MAX_LOG_BYTES = 1024 * 1024
MAX_LINES = 4096
MAX_LINE_BYTES = 16 * 1024

_INIT = re.compile(r"INIT ([a-z0-9]+)/([0-9a-fA-F]*)")
_FIELD = re.compile(r"[\x21-\x7e]+")  # domain and operation: printable ASCII, no space
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class MalformedLog(BootstrapError):
    """The event log cannot be read as a launch log; names the line."""

    exit_code = EXIT_CONFIG

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        self.line = line
        where = f"{source}: line {line}: " if line is not None else f"{source}: "
        super().__init__(where + one_line(reason))


@dataclass(frozen=True)
class LaunchEntry:
    """One component of the launch set: which image, by digest, runs as it."""

    component: str
    image: str      # repo@sha256:... that runs
    digest: str     # sha256:...
    source: str     # default | variant | override

    def content(self) -> dict[str, str]:
        return {"component": self.component, "digest": self.digest, "image": self.image, "source": self.source}


def launch_order(entries: Iterable[LaunchEntry], start_order: Sequence[Sequence[str]]) -> list[LaunchEntry]:
    """The entries in start order, by name within a layer (deterministic, so a
    relying party can predict the log). Entries in no layer come last, by name."""
    by_name = {e.component: e for e in entries}
    ordered: list[LaunchEntry] = []
    for layer in start_order:
        ordered += [by_name.pop(name) for name in sorted(layer) if name in by_name]
    return ordered + [by_name[name] for name in sorted(by_name)]


def init_line(value: bytes) -> str:
    return f"INIT {ALGORITHM}/{value.hex()}"


def event_line(operation: str, content: object, domain: str = DOMAIN) -> str:
    text = canonical_json(content)
    if " " in text or "\n" in text or "\r" in text:
        raise ValueError(f"an event's content may hold no space or line break: {text[:200]}")
    return f"{domain} {operation} {text}"


def launch_lines(init: bytes, entries: Sequence[LaunchEntry]) -> list[str]:
    """Every line of a launch log, INIT first and LaunchComplete last."""
    return ([init_line(init)]
            + [event_line(LAUNCH_COMPONENT, e.content()) for e in entries]
            + [event_line(LAUNCH_COMPLETE, {"components": len(entries)})])


def extend(pcr: bytes, line: str) -> bytes:
    return hashlib.sha256(pcr + line_digest(line)).digest()


def line_digest(line: str) -> bytes:
    """What is extended for a line: sha256 of its UTF-8 bytes, no newline."""
    return hashlib.sha256(line.encode()).digest()


def replay(init: bytes, lines: Iterable[str]) -> list[bytes]:
    """The register after each line, starting from `init`."""
    states, pcr = [], init
    for line in lines:
        pcr = extend(pcr, line)
        states.append(pcr)
    return states


def predict(entries: Sequence[LaunchEntry]) -> tuple[list[str], bytes]:
    """The lines and the PCR value a launch set produces from an all-zero register."""
    lines = launch_lines(ZERO, entries)
    return lines, replay(ZERO, lines)[-1]


def format_value(value: bytes) -> str:
    return f"{ALGORITHM}:{value.hex()}"


def parse_value(text: str) -> bytes:
    """A PCR value as a user gives it: hex, `sha256:HEX` or `0xHEX`, any case."""
    t = text.strip().lower()
    for prefix in (f"{ALGORITHM}:", "0x"):
        if t.startswith(prefix):
            t = t[len(prefix):]
    if not re.fullmatch(r"[0-9a-f]{64}", t):
        raise ValueError(f"expected a sha256 PCR value (64 hex digits), got {one_line(text, 100)!r}")
    return bytes.fromhex(t)


@dataclass(frozen=True)
class Event:
    line: int           # 1-based line number in the log
    text: str           # the line, as extended
    domain: str
    operation: str
    content: str


@dataclass(frozen=True)
class ParsedLog:
    init: bytes
    lines: tuple[str, ...]              # every line, INIT first
    events: tuple[Event, ...]
    launched: tuple[LaunchEntry, ...]   # the LaunchComponent events, in order
    complete: bool                      # ends with LaunchComplete

    def states(self) -> list[bytes]:
        return replay(self.init, self.lines)

    @property
    def value(self) -> bytes:
        return self.states()[-1]


def parse_log(data: bytes, source: str = "eventlog") -> ParsedLog:
    """Read a launch log, bounded in size, line count and line length. Raises
    MalformedLog naming the first bad line: not UTF-8, not AAEL, not a launch
    event we write, not canonical, or anything after LaunchComplete."""
    if len(data) > MAX_LOG_BYTES:
        raise MalformedLog(source, None, f"larger than {MAX_LOG_BYTES} bytes")
    if not data:
        raise MalformedLog(source, None, "empty (no INIT line)")
    raw_lines = data.split(b"\n")
    if raw_lines[-1] == b"":
        raw_lines.pop()  # the final newline
    if len(raw_lines) > MAX_LINES:
        raise MalformedLog(source, None, f"more than {MAX_LINES} lines")
    lines: list[str] = []
    for number, raw in enumerate(raw_lines, 1):
        if len(raw) > MAX_LINE_BYTES:
            raise MalformedLog(source, number, f"longer than {MAX_LINE_BYTES} bytes")
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise MalformedLog(source, number, "not UTF-8") from None
    init = _parse_init(lines[0], source)
    events: list[Event] = []
    launched: list[LaunchEntry] = []
    complete = False
    for number, line in enumerate(lines[1:], 2):
        if complete:
            raise MalformedLog(source, number, f"an event after {LAUNCH_COMPLETE}")
        event = _parse_event(line, number, source)
        events.append(event)
        if event.operation == LAUNCH_COMPONENT:
            entry = _launch_entry(event, source)
            if any(e.component == entry.component for e in launched):
                raise MalformedLog(source, number, f"component {entry.component} launched twice")
            launched.append(entry)
        else:  # LaunchComplete
            content = _canonical_object(event, source)
            if set(content) != {"components"} or content["components"] != len(launched):
                raise MalformedLog(source, number, f"{LAUNCH_COMPLETE} must say {{\"components\":{len(launched)}}}, "
                                                   f"the number of {LAUNCH_COMPONENT} events before it")
            complete = True
    return ParsedLog(init, tuple(lines), tuple(events), tuple(launched), complete)


def _parse_init(line: str, source: str) -> bytes:
    match = _INIT.fullmatch(line)
    if match is None:
        raise MalformedLog(source, 1, f"expected `INIT {ALGORITHM}/<hex>`, got {one_line(line, 120)!r}")
    algorithm, hexvalue = match.groups()
    if algorithm != ALGORITHM:
        raise MalformedLog(source, 1, f"hash algorithm {algorithm!r}: only {ALGORITHM} is measured")
    if not re.fullmatch(r"[0-9a-f]{64}", hexvalue):
        raise MalformedLog(source, 1, "the INIT value must be 64 lower-case hex digits")
    return bytes.fromhex(hexvalue)


def _parse_event(line: str, number: int, source: str) -> Event:
    fields = line.split(" ")
    if len(fields) != 3 or not all(fields):
        raise MalformedLog(source, number, "expected `<domain> <operation> <content>` separated by single spaces")
    domain, operation, content = fields
    if not _FIELD.fullmatch(domain) or not _FIELD.fullmatch(operation):
        raise MalformedLog(source, number, "domain and operation must be printable ASCII")
    if domain != DOMAIN or operation not in (LAUNCH_COMPONENT, LAUNCH_COMPLETE):
        raise MalformedLog(source, number, f"not a launch event: {one_line(domain, 80)} {one_line(operation, 80)}")
    return Event(number, line, domain, operation, content)


def _canonical_object(event: Event, source: str) -> dict[str, Any]:
    try:
        value = json.loads(event.content)
    except (ValueError, RecursionError):
        raise MalformedLog(source, event.line, f"the {event.operation} content is not JSON") from None
    if not isinstance(value, dict):
        raise MalformedLog(source, event.line, f"the {event.operation} content must be a JSON object")
    try:
        canonical = canonical_json(value)
    except ValueError as exc:
        raise MalformedLog(source, event.line, f"the {event.operation} content: {exc}") from None
    if canonical != event.content:
        raise MalformedLog(source, event.line, f"the {event.operation} content is not RFC 8785 canonical JSON")
    return value


def _launch_entry(event: Event, source: str) -> LaunchEntry:
    content = _canonical_object(event, source)
    for key in ("component", "digest", "image", "source"):
        if not isinstance(content.get(key), str):
            raise MalformedLog(source, event.line, f"{LAUNCH_COMPONENT} needs a string {key!r}")
    entry = LaunchEntry(content["component"], content["image"], content["digest"], content["source"])
    if not _DIGEST.fullmatch(entry.digest) or not entry.image.endswith("@" + entry.digest):
        raise MalformedLog(source, event.line, f"{LAUNCH_COMPONENT}: the digest must be sha256:<64 hex> and the "
                                               "image must end with @ and that digest")
    if entry.source not in SOURCES:
        raise MalformedLog(source, event.line, f"{LAUNCH_COMPONENT}: source must be one of {', '.join(SOURCES)}")
    return entry


def aael_states(data: bytes) -> tuple[bytes, list[bytes]]:
    """Any AAEL log (the attestation agent's own, whatever its events): its
    INIT value and the register after each line. Bounded like parse_log;
    ValueError when it is not AAEL with a sha256 INIT line."""
    if len(data) > MAX_LOG_BYTES:
        raise ValueError(f"larger than {MAX_LOG_BYTES} bytes")
    lines = data.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or len(lines) > MAX_LINES:
        raise ValueError("no INIT line, or too many lines")
    try:
        init = _parse_init(lines[0], "log")
    except MalformedLog as exc:
        raise ValueError(str(exc)) from None
    return init, replay(init, (line.rstrip() for line in lines))
