"""`podvm-bootstrap measurements`: read an event log (the records file as the
VM keeps it, or a whole attester log), replay every register from zero,
show the launch set and each register's value; with --expect-pcr, compare.

Runs anywhere (a verifier's copy of the log, no TPM). Exit 0: every expected
value equals the replay and the launch is complete; 1: a value differs, the
launch is incomplete (no LaunchComplete), or the log cannot be read; 2: the
log is malformed (the byte offset is named; the retired AAEL text log is
named as such) or an --expect-pcr value is not a register value."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podvm_bootstrap.attest.launch_set import LaunchSet, read_launch
from podvm_bootstrap.attest.tcg_log import (
    ALGORITHMS,
    MAX_LOG_BYTES,
    Algorithm,
    EventLog,
    MalformedLog,
    algorithm,
    parse_log,
)
from podvm_bootstrap.attest.trustee_claims import claims, claims_json
from podvm_bootstrap.common.errors import EXIT_OK, EXIT_RUNTIME, UsageError, one_line
from podvm_bootstrap.common.fsutil import read_regular_file
from podvm_bootstrap.common.texttable import text_table

_EXPECT = re.compile(r"(?:(\d{1,10})=)?(?:([a-z0-9-]+):|0x)?([0-9a-f]+)")


@dataclass(frozen=True)
class Expected:
    index: int
    alg: Algorithm | None   # named by a prefix (sha384:HEX); else the register's bank, by size
    value: bytes


def parse_expected(text: str, default_index: int) -> Expected:
    """`--expect-pcr [INDEX=][ALG:|0x]HEX`; a bare value is for `default_index` (measure.pcr)."""
    match = _EXPECT.fullmatch(text.strip().lower())
    if match is None or len(match.group(3)) % 2:
        raise UsageError(f"--expect-pcr: expected [INDEX=]HEX (hex digits, optionally sha256: or sha384:), "
                         f"got {one_line(text, 100)!r}")
    index_text, prefix, hexvalue = match.groups()
    index = int(index_text) if index_text is not None else default_index
    if index >= 2**32:
        raise UsageError(f"--expect-pcr: register index {index} is not a u32")
    alg = None
    if prefix is not None:
        try:
            alg = algorithm(prefix)
        except ValueError:
            raise UsageError(f"--expect-pcr: unknown algorithm {one_line(prefix, 40)!r}") from None
    value = bytes.fromhex(hexvalue)
    sizes = {a.size for a in ALGORITHMS.values()}
    if (alg is not None and len(value) != alg.size) or len(value) not in sizes:
        raise UsageError(f"--expect-pcr: {len(value)} bytes is not the size of "
                         f"{alg.name if alg else 'a SHA-1, SHA-256, SHA-384 or SHA-512'} register value")
    return Expected(index, alg, value)


def _bank_of(log: EventLog, expected: Expected) -> Algorithm:
    if expected.alg is not None:
        return expected.alg
    bank = log.bank(expected.index)
    if bank.size == len(expected.value):
        return bank
    return next(a for a in ALGORITHMS.values() if a.size == len(expected.value) and a.hashlib != "sm3")


def show_measurements(path: Path, expect: list[str], launch_register: int, *, as_json: bool) -> int:
    expected = [parse_expected(text, launch_register) for text in expect]
    try:
        data = read_regular_file(path, MAX_LOG_BYTES + 1)
    except OSError as exc:
        return _fail(f"cannot read the event log {path}: {exc.strerror or exc}", as_json)
    try:
        log = parse_log(data, str(path))
        uefi_event_logs = claims(log, str(path))["uefi_event_logs"]
        launch = read_launch(log, launch_register, str(path))
    except MalformedLog as exc:
        if as_json:
            print(json.dumps({"eventlog": str(path), "error": str(exc), "offset": exc.offset, "ok": False}))
        raise
    report = _report(path, log, uefi_event_logs, launch, expected)
    print(claims_json(report) if as_json else _text(log, report), end="\n" if as_json else "")
    status = EXIT_OK
    if not launch.complete:
        print(f"podvm-bootstrap: error: {path}: the launch is incomplete "
              f"(no LaunchComplete on register {launch_register})", file=sys.stderr)
        status = EXIT_RUNTIME
    for check in report["expected"]:
        if not check["match"]:
            print(f"podvm-bootstrap: error: register {check['index']}: the replay gives "
                  f"{_value(check['alg'], check['replayed'])}, expected {_value(check['alg'], check['value'])}",
                  file=sys.stderr)
            status = EXIT_RUNTIME
    return status


def _fail(message: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": message, "ok": False}))
    print(f"podvm-bootstrap: error: {message}", file=sys.stderr)
    return EXIT_RUNTIME


def _value(alg_name: str, hexvalue: str) -> str:
    return f"{algorithm(alg_name).hashlib}:{hexvalue}"


def _report(path: Path, log: EventLog, uefi_event_logs: list[dict[str, Any]], launch: LaunchSet,
            expected: list[Expected]) -> dict[str, Any]:
    checks = []
    for e in expected:
        bank = _bank_of(log, e)
        replayed = log.replay(e.index, bank)
        checks.append({"index": e.index, "alg": bank.name, "value": e.value.hex(), "replayed": replayed.hex(),
                       "match": replayed == e.value})
    registers = [{"index": index, "alg": log.bank(index).name, "value": log.replay(index).hex()}
                 for index in sorted({*log.registers(), launch.register})]
    return {
        "eventlog": str(path),
        "format": "attester log" if log.header is not None else "records",
        "uefi_event_logs": uefi_event_logs,
        "registers": registers,
        "launch": {"register": launch.register, "complete": launch.complete,
                   "components": [c.content() for c in launch.components]},
        "expected": checks,
        "ok": launch.complete and all(c["match"] for c in checks),
    }


def _text(log: EventLog, report: dict[str, Any]) -> str:
    launch = report["launch"]
    banks = ", ".join(a.name for a in log.header or ())
    lines = [f"event log {report['eventlog']}: "
             + (f"attester log (Spec ID header: {banks})" if log.header is not None else "records")
             + f", {len(log.records)} events"]
    rows = [["#", "INDEX", "TYPE", "EVENT"]]
    for number, claim in enumerate(report["uefi_event_logs"], 1):
        rows.append([str(number), str(claim["index"]), claim["type_name"], _describe(claim)])
    lines += [line.rstrip() for line in text_table(rows)] if log.records else []
    lines.append(f"launch on register {launch['register']}: {len(launch['components'])} components, "
                 + ("complete" if launch["complete"] else "INCOMPLETE (no LaunchComplete)"))
    lines += ["  " + line for line in text_table(
        [[c["component"], c["source"] + (f" ({c['requested_by']})" if "requested_by" in c else ""), c["image"]]
         for c in launch["components"]])]
    lines.append("registers (replayed from zero):")
    lines += ["  " + line for line in text_table(
        [[str(r["index"]), _value(r["alg"], r["value"])] for r in report["registers"]])]
    for check in report["expected"]:
        lines.append(f"expected {check['index']}={_value(check['alg'], check['value'])}: "
                     + ("match" if check["match"] else "MISMATCH"))
    return "\n".join(lines) + "\n"


def _describe(claim: dict[str, Any]) -> str:
    """An event for a human: an AAEL event's text, else what Trustee reads in it, escaped, cut."""
    details = claim["details"]
    if "data" in details:  # AAEL: the whole text, the launch's content included
        mark = "" if claim["digest_matches_event"] else "  [digest does not match the event]"
        return one_line(details["string"], 4096) + mark
    return one_line(details.get("string") or details.get("unicode_name")
                    or " ".join(details.get("device_paths", ())), 160)
