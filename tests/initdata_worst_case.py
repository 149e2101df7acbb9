"""The costliest initdata TOML documents within the pre-scan's bounds
(podvm_bootstrap.userdata.tomlbounds), one per shape that makes tomllib work hardest,
and one with every bound reached at once.

tests/test_tomlbounds.py checks that each is inside the bounds and that
its parse stays within a memory bound. As a script, it measures each one's
pre-scan + tomllib parse in a fresh interpreter (CPU time, peak RSS) and
prints the table of docs/userdata.md "Bounds on untrusted input":

    .venv/bin/python -m tests.initdata_worst_case
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from podvm_bootstrap.userdata.cloudconfig import MAX_FILE_SIZE
from podvm_bootstrap.userdata.tomlbounds import DEFAULT_LIMITS as L

HEADER = 'algorithm = "sha256"\nversion = "0.1.0"\n'


def _key(n: int, parts: int = L.key_parts) -> str:
    """A dotted key of `parts` parts, unique from its first part on (so every
    part is a new table)."""
    return ".".join([f"k{n}", *(f"p{i}" for i in range(1, parts))])


def dotted_keys() -> str:
    """Every key at the part limit, each one a chain of new tables."""
    return HEADER + "".join(f"{_key(n)} = {n}\n" for n in range(L.keys - 2))


def table_headers() -> str:
    """Every header an array-of-tables at the part limit, the keys spread over
    them, at the part limit too (each key's path is header + key parts)."""
    per_table = (L.keys - 2) // L.tables
    out = [HEADER]
    for t in range(L.tables):
        out.append(f"[[{_key(t)}]]\n")
        out.extend(f"{_key(k)} = {k}\n" for k in range(per_table))
    return "".join(out)


def array_elements() -> str:
    """Arrays and array elements at their limits."""
    rows = 100
    per_row = L.containers // rows           # the row's array and the arrays inside it
    per_inner = L.values // L.containers - 1  # elements of each inner array
    inner = "[" + ",".join("1" for _ in range(per_inner)) + "]"
    return HEADER + "".join(f"a{n} = [" + ",".join([inner] * (per_row - 1)) + "]\n" for n in range(rows))


def nested_inline_tables() -> str:
    """Inline tables nested to the depth limit, each key at the part limit."""
    rows = min(L.containers // L.depth, (L.keys - 2) // (L.depth + 1))
    out = [HEADER]
    for n in range(rows):
        value = "1"
        for d in range(L.depth):
            value = "{" + _key(d) + " = " + value + "}"
        out.append(f"{_key(n)} = {value}\n")
    return "".join(out)


def escapes() -> str:
    """Every escape allowed, in one basic string (each one an object in tomllib)."""
    return HEADER + 's = "' + "\\u00e9" * L.escapes + '"\n'


def long_strings() -> str:
    """The decompressed size limit filled with strings at the string limit."""
    count = MAX_FILE_SIZE // L.string
    filler = "x" * (L.string - 64)
    return HEADER + "".join(f"s{n} = '''{filler}'''\n" for n in range(count))


def every_bound() -> str:
    """Tables, keys, arrays, elements and escapes all near their limits at once."""
    per_table = (L.keys - 3) // L.tables
    per_inner = L.values // L.containers - 1
    array = "[" + ",".join("1" for _ in range(per_inner)) + "]"
    out = [HEADER, 'e = "' + "\\t" * L.escapes + '"\n']
    containers = 0
    for t in range(L.tables):
        out.append(f"[[{_key(t)}]]\n")
        for k in range(per_table):
            containers += 1
            out.append(f"{_key(k)} = {array if containers <= L.containers else k}\n")
    return "".join(out)


SHAPES = {
    "dotted keys: 2,000 keys of 8 parts": dotted_keys,
    "200 [[array of tables]] of 8 parts, 2,000 keys of 8 parts": table_headers,
    "arrays: 2,000 arrays, 20,000 elements": array_elements,
    "inline tables nested 16 deep, keys of 8 parts": nested_inline_tables,
    "escapes: 100,000 in one string": escapes,
    "strings: 4 of 4 MiB (16 MiB)": long_strings,
    "every bound at once": every_bound,
}

_MEASURE = r"""
import json, sys, time, tomllib
from podvm_bootstrap.userdata.tomlbounds import check_toml_bounds

def vm(field):  # this process's own figures (ru_maxrss would carry the parent's over exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

text = open(sys.argv[1], encoding="utf-8").read()
before = vm("VmRSS")
t0 = time.process_time()
if sys.argv[2] == "bounded":
    check_toml_bounds(text)
t1 = time.process_time()
tomllib.loads(text)
t2 = time.process_time()
print(json.dumps({"scan": t1 - t0, "parse": t2 - t1, "peak_kib": vm("VmHWM"), "before_kib": before}))
"""


def measure(text: str, mode: str = "bounded") -> dict[str, float]:
    """Pre-scan (mode "bounded") and parse `text` in a fresh interpreter: CPU
    seconds and peak RSS."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        result = subprocess.run([sys.executable, "-c", _MEASURE, f.name, mode], capture_output=True, text=True,
                                timeout=600, cwd=Path(__file__).resolve().parent.parent, check=True)
    return json.loads(result.stdout)


def main() -> int:
    print("| shape | TOML size | gzip size | pre-scan CPU | tomllib CPU | peak RSS (text loaded before) |")
    print("| --- | --- | --- | --- | --- | --- |")
    import gzip

    for name, build in SHAPES.items():
        text = build()
        size = len(text.encode())
        runs = [measure(text) for _ in range(3)]
        worst = max(runs, key=lambda r: r["scan"] + r["parse"])
        print(f"| {name} | {size / 1024:,.0f} KiB | {len(gzip.compress(text.encode())) / 1024:,.0f} KiB "
              f"| {worst['scan']:.2f} s | {worst['parse']:.2f} s "
              f"| {worst['peak_kib'] / 1024:.0f} MiB ({worst['before_kib'] / 1024:.0f} MiB) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
