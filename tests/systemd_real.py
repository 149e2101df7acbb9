"""Helpers that ask the machine's real systemd (252) about unit files, without
a running systemd: `systemd-analyze verify`, and `systemd --test`, which loads
units and dumps them as parsed, Exec*= argv included (after quoting, escapes
and specifiers; "$$" is still "$$" there, since the environment is substituted
at exec time). systemd refuses --test as root, so it runs as nobody."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
NOBODY = "65534"


def write_units(directory: Path, units: dict[str, str]) -> list[Path]:
    paths = []
    for name, text in units.items():
        path = directory / name
        path.write_bytes(text.encode("utf-8"))
        path.chmod(0o644)
        paths.append(path)
    return paths


def analyze_verify(units: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify of all `units`, side by side in one directory
    (so Requires= between them resolve)."""
    with tempfile.TemporaryDirectory(prefix="podvm-verify-") as tmp:
        paths = write_units(Path(tmp), units)
        return subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, paths)],
                              capture_output=True, text=True, timeout=120, cwd=tmp)


def dump_exec_commands(units: dict[str, str], unit: str) -> dict[str, list[list[bytes]]]:
    """{"ExecStart": [argv, ...], ...} of `unit` as systemd itself parsed it."""
    tmp = tempfile.mkdtemp(prefix="podvm-dump-")
    try:
        os.chmod(tmp, 0o755)   # read by nobody
        write_units(Path(tmp), units)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "SYSTEMD_UNIT_PATH": tmp + ":"}
        proc = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             SYSTEMD, "--test", "--system", f"--unit={unit}", "--no-pager"],
            capture_output=True, timeout=120, cwd="/", env=env)
    finally:
        shutil.rmtree(tmp)
    if proc.returncode != 0:
        raise AssertionError(f"systemd --test failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return _exec_section(proc.stdout, unit)


def _exec_section(dump: bytes, unit: str) -> dict[str, list[list[bytes]]]:
    header = f"\t-> Unit {unit}:\n".encode()
    start = dump.index(header) + len(header)
    end = dump.find(b"\n\t-> Unit ", start)
    body = dump[start:end if end != -1 else len(dump)]
    commands: dict[str, list[list[bytes]]] = {}
    current = None
    for line in body.split(b"\n"):
        stripped = line.strip(b"\t")
        if stripped.startswith(b"-> Exec") and stripped.endswith(b":"):
            current = stripped[3:-1].decode()
        elif current is not None and stripped.startswith(b"Command Line: "):
            commands.setdefault(current, []).append(decode_command_line(stripped[len(b"Command Line: "):]))
    return commands


_C_ESCAPES = {ord("n"): 10, ord("t"): 9, ord("r"): 13, ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("v"): 11}


def decode_command_line(text: bytes) -> list[bytes]:
    """Undo quote_command_line(argv, SHELL_ESCAPE_EMPTY): words joined by
    spaces, double-quoted when needed, C escapes and backslash-escaped
    \\ " $ ` inside the quotes."""
    words, i = [], 0
    while i < len(text):
        if text[i] == 0x20:
            i += 1
            continue
        word = bytearray()
        if text[i] == 0x22:
            i += 1
            while text[i] != 0x22:
                if text[i] == 0x5C:
                    nxt = text[i + 1]
                    if nxt in _C_ESCAPES:
                        word.append(_C_ESCAPES[nxt])
                        i += 2
                    elif 0x30 <= nxt <= 0x37:
                        word.append(int(text[i + 1:i + 4], 8))
                        i += 4
                    elif nxt == ord("x"):
                        word.append(int(text[i + 2:i + 4], 16))
                        i += 4
                    else:
                        word.append(nxt)
                        i += 2
                else:
                    word.append(text[i])
                    i += 1
            i += 1
        else:
            while i < len(text) and text[i] != 0x20:
                word.append(text[i])
                i += 1
        words.append(bytes(word))
    return words
