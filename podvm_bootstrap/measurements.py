"""`podvm-bootstrap measurements`: replay a measured launch's event log and
print each event and the PCR value it gives; with --expect-pcr, compare.

Runs anywhere (a verifier's copy of the log, no TPM). Exit 0: the replay
matches (or nothing was expected and the log is complete); 1: it does not,
the log is incomplete (no LaunchComplete) or cannot be read; 2: the log is
malformed (the line is named) or the expected value is not a sha256 value."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from podvm_bootstrap.errors import EXIT_OK, EXIT_RUNTIME, UsageError
from podvm_bootstrap.eventlog import (
    MAX_LOG_BYTES,
    MalformedLog,
    ParsedLog,
    format_value,
    line_digest,
    parse_log,
    parse_value,
)
from podvm_bootstrap.fsutil import read_regular_file

DEFAULT_LOG = "eventlog"


def show_measurements(path: Path, expect: str | None, *, as_json: bool) -> int:
    expected = None
    if expect is not None:
        try:
            expected = parse_value(expect)
        except ValueError as exc:
            raise UsageError(f"--expect-pcr: {exc}") from None
    try:
        data = read_regular_file(path, MAX_LOG_BYTES + 1)
    except OSError as exc:
        return _fail(f"cannot read the event log {path}: {exc.strerror or exc}", as_json)
    try:
        parsed = parse_log(data, str(path))
    except MalformedLog as exc:
        if as_json:
            print(json.dumps({"eventlog": str(path), "error": str(exc), "line": exc.line, "ok": False}))
        raise
    report = _report(path, parsed, expected)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(report), end="")
    if not parsed.complete:
        print(f"podvm-bootstrap: error: {path}: incomplete launch log (no LaunchComplete)", file=sys.stderr)
        return EXIT_RUNTIME
    if expected is not None and not report["match"]:
        print(f"podvm-bootstrap: error: the replay gives {report['pcr']}, expected {report['expected']}",
              file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def _fail(message: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": message, "ok": False}))
    print(f"podvm-bootstrap: error: {message}", file=sys.stderr)
    return EXIT_RUNTIME


def _report(path: Path, parsed: ParsedLog, expected: bytes | None) -> dict[str, Any]:
    states = parsed.states()
    value = states[-1]
    return {
        "eventlog": str(path),
        "init": format_value(parsed.init),
        "events": [{"line": number, "text": text, "digest": format_value(line_digest(text)),
                    "pcr": format_value(state)}
                   for number, (text, state) in enumerate(zip(parsed.lines, states, strict=True), 1)],
        "components": [e.content() for e in parsed.launched],
        "complete": parsed.complete,
        "pcr": format_value(value),
        "expected": None if expected is None else format_value(expected),
        "match": None if expected is None else value == expected,
        "ok": parsed.complete and (expected is None or value == expected),
    }


def _text(report: dict[str, Any]) -> str:
    lines = [f"event log {report['eventlog']}: {len(report['components'])} components, "
             f"{'complete' if report['complete'] else 'INCOMPLETE (no LaunchComplete)'}"]
    width = len(str(len(report["events"])))
    lines += [f"{e['line']:>{width}}  {e['text']}" for e in report["events"]]
    lines.append(f"PCR (replayed from the INIT value): {report['pcr']}")
    if report["expected"] is not None:
        lines.append(f"expected: {report['expected']}: {'match' if report['match'] else 'MISMATCH'}")
    return "\n".join(lines) + "\n"
