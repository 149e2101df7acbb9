#!/usr/bin/env python3
"""What measuring the launch into a TPM adds to boot-to-ready (issue 12,
docs/measured-launch.md), in the booted pod VM test bed with the image's
five baked stand-ins.

A "boot" is bench/run.py's: a restart inside one booted VM, `systemctl start
podvm-bootstrap` timed until every ready probe answers. Boots with
`measure.tpm` pointed at a software TPM on 127.0.0.1 (swtpm on the machine;
the VM shares its network) alternate with boots with `measure.tpm: none`,
PCR 23 and the initdata's PCR 16 reset before each measured boot. Every
measured boot is checked afterwards (untimed): the VM's records replay to the
PCR that tpm2_pcrread reads on the machine, and the initdata was bound. From each boot's journal, the daemon's own timing of the
measurement step and of the background load of tpm2-pytss's bindings.

`make bench` runs it as one section of bench/results/latest.md (a hook in
bench/run.py); alone it boots its own VM and writes
bench/results/measure-cost.md and measure-cost.json:

    bench/measure_cost.py [--rounds N] [--out DIR]
    python -m bench.measure_cost [--rounds N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from bench import scenarios  # noqa: E402
from bench.run import BAKED_MANIFEST, BenchError, Driver, install_manifest, machine_info, machine_line, say  # noqa: E402
from bench.stats import Row, Target, markdown_table, summarize  # noqa: E402

BOOTSTRAP = "/etc/podvm-bootstrap/bootstrap.yaml"
PCR = 23
# The initdata's register for the benchmark: PCR 16 (debug), resettable from
# locality 0 like 23, so that every measured boot binds it from zero as a
# real boot binds PCR 8 (which only a TPM reset clears).
INITDATA_PCR = 16
MIN_ROUNDS = 7
MAX_FAILED = 3          # boots that may fail (and are redone) before the section gives up
MEASURE_TARGET = Target(0.010, strict=True, text="< 10 ms")   # issue 12: five components
SECTION = "Measured launch (5 components, swtpm on 127.0.0.1 vs measure.tpm: none)"

# The daemon's journal lines (podvm_bootstrap/attest/launch_measurement.py, tpm.py).
_STEP = re.compile(r"measured launch step took (?P<step>[0-9.]+) ms for (?P<n>\d+) components \("
                   r"(?:waited (?P<wait>[0-9.]+) ms for tpm2-pytss's bindings, opened the TPM in (?P<open>[0-9.]+) ms"
                   r"|no TPM opened)\)")
_PRELOAD = re.compile(r"tpm2-pytss's bindings loaded ahead of the measurement in (?P<ms>[0-9.]+) ms")


# --- pure helpers -------------------------------------------------------------

def daemon_timings(messages: Iterable[str]) -> dict[str, Any]:
    """The measurement's timings (seconds) from one daemon's journal messages,
    the last of each kind: `step_s` (the whole step, on the critical path),
    `components`, `import_wait_s` and `open_s` (None without a TPM), `preload_s`
    (tpm2-pytss's bindings loaded in the background; None when they were not)."""
    found: dict[str, Any] = {"step_s": None, "components": None, "import_wait_s": None, "open_s": None,
                             "preload_s": None}
    for message in messages:
        step = _STEP.search(message)
        if step is not None:
            found.update(step_s=float(step["step"]) / 1000, components=int(step["n"]),
                         import_wait_s=None if step["wait"] is None else float(step["wait"]) / 1000,
                         open_s=None if step["open"] is None else float(step["open"]) / 1000)
        preload = _PRELOAD.search(message)
        if preload is not None:
            found["preload_s"] = float(preload["ms"]) / 1000
    return found


def boot_order(rounds: int) -> list[str]:
    """`rounds` boots of each kind, "tpm" and "none", in pairs whose first
    alternates (tpm none, none tpm, ...): neither kind always follows the other."""
    order: list[str] = []
    for i in range(rounds):
        order += ["tpm", "none"] if i % 2 == 0 else ["none", "tpm"]
    return order


def paired_differences(boots: list[dict[str, Any]], key: str = "all_ready_s") -> list[float]:
    """boot[key] of the measured boot minus that of the unmeasured one, for
    each round's pair (the boots in boot_order's order); a pair missing the
    figure is left out."""
    out = []
    for first, second in zip(boots[0::2], boots[1::2]):
        by_kind = {first["kind"]: first.get(key), second["kind"]: second.get(key)}
        if set(by_kind) != {"tpm", "none"}:
            raise ValueError(f"not a tpm/none pair: {first['kind']}, {second['kind']}")
        if by_kind["tpm"] is not None and by_kind["none"] is not None:
            out.append(by_kind["tpm"] - by_kind["none"])
    return out


def with_tpm(settings: dict[str, Any], tpm: str) -> str:
    """bootstrap.yaml with `measure.tpm` set (PCR 23, the initdata in PCR 16), everything else kept."""
    out = {**settings, "measure": {**(settings.get("measure") or {}), "tpm": tpm, "pcr": PCR,
                                   "initdata_pcr": INITDATA_PCR}}
    return yaml.safe_dump(out, sort_keys=False)


def rows_for(boots: list[dict[str, Any]]) -> list[Row]:
    """The section's rows from the boots (each: kind, all_ready_s, ready_s and
    daemon_timings' keys)."""
    tpm = [b for b in boots if b["kind"] == "tpm"]
    none = [b for b in boots if b["kind"] == "none"]
    diffs = paired_differences(boots)
    measured, base = summarize(b["all_ready_s"] for b in tpm), summarize(b["all_ready_s"] for b in none)
    diff = summarize(diffs)
    n = next((b["components"] for b in tpm if b.get("components")), "?")
    rows = [Row(f"boot-to-ready, {n} components: measure.tpm swtpm vs none", "s", measured, base, "none",
                diff.median if diff else None, "ms",
                note="the value is the median of the paired differences (measured boot minus the unmeasured "
                     f"boot of the same round, {len(diffs)} rounds, which goes first alternating; range "
                     f"{_ms(diff.low if diff else None)} to {_ms(diff.high if diff else None)}); difference of "
                     f"the medians {_ms(measured.median - base.median if measured and base else None)}. The "
                     "containers' set-up after the first StartUnit varies by a hundred ms and more between boots "
                     "here, so this difference cannot resolve 10 ms; everything measuring adds happens before the "
                     "first StartUnit (the TPM is closed by then): the target is judged on the next row")]
    first = paired_differences(boots, "first_start_unit_s")
    if first:
        fd = summarize(first)
        rows.append(Row(f"  first StartUnit after the daemon's exec ({n} components): swtpm vs none", "ms",
                        summarize(b["first_start_unit_s"] for b in tpm if b.get("first_start_unit_s") is not None),
                        summarize(b["first_start_unit_s"] for b in none if b.get("first_start_unit_s") is not None),
                        "none", fd.median, "ms", MEASURE_TARGET,
                        note="systemd's own clocks (bench/run.py's first StartUnit): the daemon unit's exec to the "
                             "first component unit's start job, i.e. the daemon's start-up, fetch, plan, image checks "
                             "and the measured launch, without the containers' set-up; the value is the median of "
                             f"the paired differences ({_ms(fd.low)} to {_ms(fd.high)})"))
    cpu = paired_differences(boots, "cpu_s")
    if cpu:
        rows.append(Row("  daemon CPU, start to READY=1 (main PID, user+sys): swtpm vs none", "ms",
                        summarize(b["cpu_s"] for b in tpm if b.get("cpu_s") is not None),
                        summarize(b["cpu_s"] for b in none if b.get("cpu_s") is not None), "none",
                        summarize(cpu).median, "ms",
                        note="/proc's CPU time of the daemon's process (10 ms ticks); the value is the median of "
                             "the paired differences: the CPU the measured launch adds, tpm2-pytss's bindings' "
                             "load included, whether or not it overlaps other work"))
    step = summarize(b["step_s"] for b in tpm if b["step_s"] is not None)
    rows.append(Row(f"  measured launch step inside the daemon ({n} components, swtpm)", "ms", step,
                    summarize(b["step_s"] for b in none if b["step_s"] is not None), "measure.tpm: none",
                    step.median if step else None, "ms", MEASURE_TARGET,
                    note="the daemon's journal line `measured launch step took ...`: from measure_launch's start "
                         "(after every image is checked, before any unit is written) to its end: the initdata "
                         "digest read, its PCR read, extended and read back; the launch PCR read, the five "
                         "LaunchComponent records and LaunchComplete each appended, fsynced and extended, the PCR "
                         "read back; the value is the median. With measure.tpm: none the records are still "
                         "written and fsynced (the baseline)"))
    rows.append(Row("    of which: waiting for tpm2-pytss's bindings to load", "ms",
                    summarize(b["import_wait_s"] for b in tpm if b["import_wait_s"] is not None)))
    rows.append(Row("    of which: opening the TPM (TCTI loader + ESAPI over swtpm)", "ms",
                    summarize(b["open_s"] for b in tpm if b["open_s"] is not None)))
    preload = summarize(b["preload_s"] for b in tpm if b["preload_s"] is not None)
    waited = [b["import_wait_s"] for b in tpm if b["import_wait_s"] is not None]
    rows.append(Row("  tpm2-pytss's bindings loaded in the background during the user-data fetch", "ms", preload,
                    note="the daemon's journal line `tpm2-pytss's bindings loaded ahead of the measurement in ...` "
                         "(podvm_bootstrap.attest.tpm.preload_bindings, started with the fetch); the measurement did not "
                         "wait for them when this is 0: "
                         + (f"it waited {_ms(max(waited), signed=False)} at most in {len(waited)} measured boots"
                            if waited else "no measured boot logged its wait")))
    return rows


def _ms(seconds: float | None, signed: bool = True) -> str:
    return "-" if seconds is None else f"{1000 * seconds:{'+' if signed else ''}.1f} ms"


# --- in the VM ------------------------------------------------------------------

def daemon_messages(vm, pid: int) -> list[str]:
    """The journal messages of one daemon process (a boot's), oldest first."""
    out = vm.run(["journalctl", "--no-pager", "-o", "cat", f"_PID={pid}"], check=False)
    return out.stdout.splitlines()


def run_section(vm, driver: Driver, image, rounds: int, raw: dict[str, Any], workdir: Path) -> list[Row]:
    """measure() with a fresh swtpm on 127.0.0.1 (in workdir), stopped by PID after."""
    from tests.bed.swtpm import running_swtpm

    with running_swtpm(workdir) as tpm:
        return measure(vm, driver, image, tpm, rounds, raw)


def measure(vm, driver: Driver, image, tpm, rounds: int, raw: dict[str, Any]) -> list[Row]:
    """Alternating boots with and without the TPM in a booted VM, the baked
    five-component manifest installed for them; the VM's manifest and
    bootstrap.yaml are put back after. `tpm` is a running tests.bed.swtpm.Swtpm."""
    if rounds < MIN_ROUNDS:
        raise BenchError(f"measured launch: at least {MIN_ROUNDS} rounds, got {rounds}")
    baked = _image_file(image, BAKED_MANIFEST)
    manifest_before, settings_before = vm.read_file(BAKED_MANIFEST), vm.read_file(BOOTSTRAP)
    settings = yaml.safe_load(settings_before) or {}
    manifest = install_manifest(vm, baked)
    probes, units = scenarios.probes(manifest), scenarios.units(manifest)
    boots: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    try:
        for i, kind in enumerate(boot_order(rounds)):
            vm.write_file(BOOTSTRAP, with_tpm(settings, tpm.tcti if kind == "tpm" else "none"))
            while True:
                try:
                    boot = _one_boot(vm, driver, tpm, kind, probes, units)
                    break
                except BenchError as exc:   # the machine is shared: another session may hold a port; retried
                    failed.append({"kind": kind, "boot": i + 1, "error": str(exc), "journal": _journal_tail(vm)})
                    say(f"measured launch: boot {i + 1} ({kind}) failed, {len(failed)} so far: {exc}")
                    if len(failed) > MAX_FAILED:
                        raise BenchError(f"{len(failed)} boots failed, the last: {exc}; its journal: "
                                         f"{' | '.join(failed[-1]['journal'][-8:])}") from None
            boots.append(boot)
            say(f"measured launch: boot {i + 1}/{2 * rounds} ({kind}): {boot['all_ready_s']:.3f}s to ready, "
                f"first StartUnit {1000 * (boot['first_start_unit_s'] or float('nan')):.1f} ms, "
                f"step {1000 * boot['step_s']:.1f} ms")
    finally:
        raw["measured_launch"] = boots
        raw["measured_launch_failed_boots"] = failed
        vm.write_file(BAKED_MANIFEST, manifest_before)
        vm.write_file(BOOTSTRAP, settings_before)
    return rows_for(boots)


def _one_boot(vm, driver: Driver, tpm, kind: str, probes: list[dict], units: dict[str, str]) -> dict[str, Any]:
    """One boot (the VM's bootstrap.yaml set for `kind` already): its
    figures, and the daemon's timings from its journal."""
    if kind == "tpm":   # every measured boot starts from all-zero PCRs
        tpm.tool("tpm2_pcrreset", str(PCR))
        tpm.tool("tpm2_pcrreset", str(INITDATA_PCR))
    result = driver.daemon_boot(probes, units=units)
    timings = daemon_timings(daemon_messages(vm, result["pid"]))
    if timings["step_s"] is None:
        raise BenchError(f"{kind} boot: no `measured launch step took` line in the daemon's journal")
    if (kind == "tpm") != (timings["open_s"] is not None):
        raise BenchError(f"{kind} boot: the daemon {'did not open' if kind == 'tpm' else 'opened'} the TPM")
    if kind == "tpm":
        _check_replay(vm, tpm)
    return {"kind": kind, "all_ready_s": result["all_ready_s"], "ready_s": result["ready_s"],
            "first_start_unit_s": result.get("first_start_unit_s"), "cpu_s": result.get("cpu_s"), **timings}


def _journal_tail(vm, lines: int = 30) -> list[str]:
    out = vm.run(["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", "podvm-bootstrap.service"],
                 check=False)
    return out.stdout.splitlines()


def _check_replay(vm, tpm) -> None:
    """The boot really measured: its records replay to the PCR the machine
    reads, and the initdata was bound."""
    value = tpm.pcrread(PCR)
    if value == bytes(32):
        raise BenchError(f"a measured boot left PCR {PCR} at zero")
    if tpm.pcrread(INITDATA_PCR) == bytes(32):
        raise BenchError(f"a measured boot left the initdata's PCR {INITDATA_PCR} at zero")
    out = vm.run(["podvm-bootstrap", "measurements", "--expect-pcr", value.hex()], check=False)
    if out.returncode != 0:
        raise BenchError(f"the records do not replay to PCR {PCR} {value.hex()}: "
                         f"{' '.join((out.stdout + out.stderr).split())[-400:]}")


def _image_file(image, path: str) -> str:
    """A file as baked into the image (its top layer first)."""
    for lower in image.lowerdirs:
        f = Path(lower) / path.lstrip("/")
        if f.exists():
            return f.read_text()
    raise BenchError(f"{path} is not in the image")


# --- alone ------------------------------------------------------------------------

def main() -> int:
    from tests.bed.cache import cache_dir, cache_lock
    from tests.bed.registry import running_registry
    from tests.bed.userdata import MINIMAL_USERDATA
    from tests.bed.vm import boot, ensure_image
    from tests.standins import images as standins

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help=f"boots of each kind (default 9, at least {MIN_ROUNDS})")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/measure_cost.py: must run as root (mount, systemd-nspawn, podman)", file=sys.stderr)
        return 1
    if args.rounds < MIN_ROUNDS:
        print(f"bench/measure_cost.py: --rounds must be at least {MIN_ROUNDS}", file=sys.stderr)
        return 2

    def terminate(signum, frame):
        raise SystemExit(128 + signum)  # unwinds through the finally blocks: the VM and swtpm are stopped
    signal.signal(signal.SIGTERM, terminate)

    started = time.monotonic()
    machine = machine_info()
    raw: dict[str, Any] = {}
    say("building or reusing the pod VM image (image/build.py)")
    image = ensure_image()
    with cache_lock(cache_dir()):
        built = standins.build_all(cache_dir() / f"standins-{standins.inputs_key()}")
    workdir = Path(tempfile.mkdtemp(prefix="podvm-bench-measure-", dir="/var/tmp"))
    vm = None
    try:
        with running_registry() as registry:
            for img in built.values():
                if img.variant == "v1":
                    registry.push_standin(img)
            say("booting the pod VM (waits for the test bed's VM lock if a test session holds it)")
            vm = boot(image, workdir / "vm", name=f"podvm-bench-measure-{os.getpid()}", userdata=MINIMAL_USERDATA,
                      metadata="aws", registry=registry, boot_timeout=180)
            driver = Driver(vm)
            rows = run_section(vm, driver, image, args.rounds, raw, workdir / "swtpm")
            driver.reset()
    finally:
        if vm is not None:
            vm.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    machine["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    machine["duration"] = f"bench ran {time.monotonic() - started:.0f} s"
    table = markdown_table([(SECTION, rows)])
    print(f"\nMachine: {machine_line(machine)}\n")
    print(table)
    write_results(args.out, machine, rows, raw, table)
    return 1 if any(r.error for r in rows) else 0


HOW = """\
How (bench/measure_cost.py): one pod VM of the test bed with the image's five baked
stand-ins, user-data from the fake AWS metadata service on 127.0.0.1, images
prefetched. A boot is bench/run.py's (a restart inside the VM, `systemctl start
podvm-bootstrap` until every ready probe answers). Boots with `measure.tpm:
swtpm:host=127.0.0.1,port=P` (Debian's swtpm on the machine; PCR 23 and the
initdata's register, PCR 16 here, reset with tpm2_pcrreset before each) alternate
with boots with `measure.tpm: none`; after each measured boot (untimed)
`podvm-bootstrap measurements --expect-pcr` in the VM replays its records to the PCR
that tpm2_pcrread reads on the machine. The step's own
timings are the daemon's journal lines."""


def write_results(out: Path, machine: dict, rows: list[Row], raw: dict[str, Any], table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "measure-cost.md").write_text(
        f"# podvm-bootstrap: what measured launch costs\n\nMachine: {machine_line(machine)}\n\n{table}\n{HOW}\n")
    (out / "measure-cost.json").write_text(json.dumps(
        {"machine": machine, "sections": [{"title": SECTION, "rows": [r.to_json() for r in rows]}], "raw": raw},
        indent=1, default=str) + "\n")
    say(f"written {out / 'measure-cost.md'} and {out / 'measure-cost.json'}")


if __name__ == "__main__":
    sys.exit(main())
