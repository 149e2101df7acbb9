"""The render and plan cases of tests/cases/ (see its README.md): each case
directory holds the baked files and the user-data of one pod VM, and the
expected output of `plan --json`, `plan` and `render` run on them through the
real command line. A new case is new files; nothing here names a case.

Normally the outputs are only compared. UPDATE_CASES=1 writes them into each
case's expect/ first (then review the diff): the way to change an expectation
on purpose."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from podvm_bootstrap import __version__
from podvm_bootstrap.units.gate import gate_key
from tests.systemd_parser import parse_exec, parse_unit, substitute_environment
from tests.systemd_real import analyze_verify, dump_exec_commands

REPO = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "cases"
CONFIG_FILES = ("bootstrap.yaml", "components.yaml", "policy.yaml")
UPDATE = bool(os.environ.get("UPDATE_CASES"))

UNIT_KEYS = {"Description", "After", "Wants", "StartLimitIntervalSec", "StartLimitBurst"}
SERVICE_KEYS = {"Type", "NotifyAccess", "ExecStartPre", "ExecStart", "ExecStop", "ExecStopPost",
                "TimeoutStartSec", "TimeoutStopSec", "KillSignal", "SendSIGKILL", "Restart", "RestartSec"}


def case_names() -> list[str]:
    """Every directory is a case (one without components.yaml fails, it is not skipped)."""
    return sorted(p.name for p in CASES.iterdir() if p.is_dir())


@dataclass
class Run:
    """One command's outcome, its paths replaced by {config}, {root},
    {user-data} and {output} so that expectations hold on any machine."""

    exit: int
    stdout: str
    stderr: str
    units: dict[str, bytes]


class CaseBed:
    """A case's inputs laid out in a temporary directory: config/ (the baked
    files), root/ (the --root tree) and the user-data file; the case's
    options file, one word a line, adds global options (e.g. --log-level)."""

    def __init__(self, case: Path, tmp: Path) -> None:
        assert (case / "components.yaml").is_file(), f"{case}: a case needs its components.yaml"
        self.case = case
        self.config = tmp / "config"
        self.config.mkdir()
        for name in CONFIG_FILES:
            if (case / name).exists():   # a symlink (to image/config) is copied as the file it names
                shutil.copyfile(case / name, self.config / name)
        self.root = tmp / "root"
        if (case / "root").is_dir():
            shutil.copytree(case / "root", self.root, symlinks=True)
        else:
            self.root.mkdir()
        self.user_data = tmp / "user-data"
        if (case / "user-data").exists():
            shutil.copyfile(case / "user-data", self.user_data)
        else:   # a VM without user-data
            self.user_data.write_bytes(b"")
        self.output = tmp / "units"
        options = case / "options"
        self.options = options.read_text(encoding="utf-8").splitlines() if options.exists() else []

    def normalize(self, text: str) -> str:
        for path, name in ((self.output, "{output}"), (self.user_data, "{user-data}"), (self.config, "{config}"),
                           (self.root, "{root}")):
            text = text.replace(str(path), name)
        return text

    def run(self, *command: str) -> Run:
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET")}
        env["PYTHONPATH"] = str(REPO)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent"   # plan and render need no bus
        before = tree(self.root)
        proc = subprocess.run(
            [sys.executable, "-m", "podvm_bootstrap", "--root", str(self.root), "--config-dir", str(self.config),
             *self.options, *command, "--user-data", str(self.user_data)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        # plan and render have no side effects on the pod VM: render writes its --output only
        assert tree(self.root) == before, f"{command[0]} changed files under --root"
        assert "Traceback" not in proc.stderr, proc.stderr
        units = {p.name: p.read_bytes() for p in sorted(self.output.iterdir())} if self.output.exists() else {}
        if self.output.exists():
            assert all(p.is_file() for p in self.output.iterdir()), "render wrote something that is not a file"
        return Run(proc.returncode, self.normalize(proc.stdout), self.normalize(proc.stderr), units)


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


def plan_document(stdout: str) -> object:
    """The plan JSON with the package's version written as {version}, so a
    release does not change every case."""
    doc = json.loads(stdout)
    if isinstance(doc, dict) and doc.get("version") == __version__:
        doc["version"] = "{version}"
    return doc


# --- expectations ------------------------------------------------------------

def read_optional(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def write_expectations(expect: Path, plan_json: Run, plan_table: Run, render: Run) -> None:
    if expect.exists():
        shutil.rmtree(expect)
    expect.mkdir()
    if plan_json.stdout:
        (expect / "plan.json").write_text(json.dumps(plan_document(plan_json.stdout), indent=2) + "\n")
    if plan_table.stdout:
        (expect / "plan.txt").write_text(plan_table.stdout)
    if plan_json.stderr:
        (expect / "stderr").write_text(plan_json.stderr)
    if render.stderr != plan_json.stderr:
        (expect / "render.stderr").write_text(render.stderr)
    if plan_json.exit:
        (expect / "exit").write_text(f"{plan_json.exit}\n")
    if render.units:
        (expect / "units").mkdir()
        for name, data in render.units.items():
            (expect / "units" / name).write_bytes(data)


@pytest.mark.parametrize("name", case_names())
def test_case(name: str, tmp_path: Path) -> None:
    case = CASES / name
    bed = CaseBed(case, tmp_path)
    plan_json = bed.run("plan", "--json")
    plan_table = bed.run("plan")
    render = bed.run("render", "--output", str(bed.output))
    expect = case / "expect"
    if UPDATE:
        write_expectations(expect, plan_json, plan_table, render)
    assert expect.is_dir(), f"{case} has no expect/; write it with UPDATE_CASES=1 (then review it)"

    code = int(read_optional(expect / "exit") or "0")
    assert (plan_json.exit, plan_table.exit, render.exit) == (code, code, code), (plan_json, plan_table, render)
    stderr = read_optional(expect / "stderr")
    assert plan_json.stderr == stderr
    assert plan_table.stderr == stderr
    render_stderr = expect / "render.stderr"
    assert render.stderr == (read_optional(render_stderr) if render_stderr.exists() else stderr)
    if code == 2:   # a configuration error: one line naming the file and the key, and nothing else
        for run in (plan_json, plan_table, render):
            assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("podvm-bootstrap: error: {config}/")
            assert run.stdout == ""

    if (expect / "plan.json").exists():
        assert plan_document(plan_json.stdout) == json.loads((expect / "plan.json").read_text())
    else:
        assert plan_json.stdout == ""
    assert plan_table.stdout == read_optional(expect / "plan.txt")
    units_dir = expect / "units"
    expected_units = {p.name: p.read_bytes() for p in sorted(units_dir.iterdir())} if units_dir.is_dir() else {}
    assert render.units == expected_units
    assert render.stdout == ""

    if render.units:
        plan = json.loads((expect / "plan.json").read_text())
        check_units_against_plan(render.units, plan)
        check_container_values_reach_podman(render.units, plan, bed.config / "components.yaml")
    check_assertions(case, render.units)


# --- what every rendered unit must be, whatever the case ----------------------

def values_of(text: bytes) -> dict[str, bytes]:
    return {a.key: a.value for a in parse_unit(text)}


def argv_of(values: dict[str, bytes], key: str) -> list[str]:
    [command] = parse_exec(values[key])
    return list(command.argv)


def check_units_against_plan(units: dict[str, bytes], plan: dict) -> None:
    """One unit per planned component, running what the plan says, ordered as
    it says, with only the directives the design allows (DESIGN "Generated
    units")."""
    by_unit = {c["unit"]: c for c in plan["components"]}
    assert set(units) == set(by_unit)
    unit_of = {c["name"]: c["unit"] for c in plan["components"]}
    measured = launched_images(plan)
    for unit, text in units.items():
        component = by_unit[unit]
        assignments = parse_unit(text)
        for a in assignments:
            assert a.key in (UNIT_KEYS if a.section == "Unit" else SERVICE_KEYS if a.section == "Service" else ()), a
        keys = [a.key for a in assignments]
        assert len(keys) == len(set(keys)), keys
        assert b"[Install]" not in text
        values = values_of(text)
        assert values["Type"] == b"notify" and values["NotifyAccess"] == b"all"
        assert values["KillSignal"] == b"SIGTERM" and values["SendSIGKILL"] == b"yes"
        assert values["Restart"] == b"always"
        after = " ".join(unit_of[n] for n in component["after"]).encode()
        assert values.get("After", b"") == values.get("Wants", b"") == after   # Wants=, never Requires=
        start = argv_of(values, "ExecStart")
        name = component["name"]
        assert start[:6] == ["/usr/bin/podman", "run", "--rm", "--replace", "--name", name]
        assert "--pull=never" in start   # only the daemon pulls (and verifies)
        # what runs is what is measured (repository@digest, a tag beside the digest dropped)
        assert start[-1] == measured.get(name, component["image"])
        assert start[-2].startswith("--entrypoint=")   # the command is held at its gate
        # the gate's FIFO is keyed by the very container it releases (its argv without the FIFO)
        [gate] = [a for a in start if a.endswith(":/.podvm-gate/release:ro")]
        key = gate_key([a for a in start if a != gate])
        assert gate == f"--volume=/run/podvm-bootstrap/gates/{name}/{key}.fifo:/.podvm-gate/release:ro"
        [stop_timeout] = [a.split("=", 1)[1] for a in start if a.startswith("--stop-timeout=")]
        assert argv_of(values, "ExecStop") == ["/usr/bin/podman", "stop", "--ignore", f"--time={stop_timeout}", name]
        assert argv_of(values, "ExecStopPost") == ["/usr/bin/podman", "rm", "--force", "--ignore", "--time=0", name]


def check_container_values_reach_podman(units: dict[str, bytes], plan: dict, components_yaml: Path) -> None:
    """What the manifest says of each container (with the planned variant's
    container keys) reaches podman as written in components.yaml, one value
    one argument, whatever quoting the unit needed: env, volumes (their host
    directories made first), devices, capabilities, network, pid, user, the
    flags, and the stop timeout in whole seconds. The manifest is read here with
    plain YAML, independently of the code under test."""
    manifest = yaml.safe_load(components_yaml.read_text(encoding="utf-8"))["components"]
    for component in plan["components"]:
        declared = manifest[component["name"]]
        container = dict(declared.get("container") or {})
        if component["variant"]:
            container.update(declared["variants"][component["variant"]].get("container") or {})
        values = values_of(units[component["unit"]])
        start = argv_of(values, "ExecStart")
        volumes = list(container.get("volumes") or [])
        for option, expected in (("--env=", [f"{k}={v}" for k, v in (container.get("env") or {}).items()]),
                                 ("--volume=", volumes),
                                 ("--device=", container.get("devices") or []),
                                 ("--cap-add=", container.get("capabilities") or []),
                                 ("--network=", [container["network"]] if "network" in container else []),
                                 ("--pid=", [container["pid"]] if "pid" in container else []),
                                 ("--user=", [container["user"]] if "user" in container else []),
                                 ("--stop-timeout=", [str(whole_seconds(declared.get("stop_timeout", "10s")))])):
            given = [a[len(option):] for a in start if a.startswith(option)]
            if option == "--volume=":   # beside the gate's own two volumes
                given = [v for v in given if ":/.podvm-gate/" not in v]
            assert given == list(expected), (component["name"], option)
        for flag, key in (("--privileged", "privileged"), ("--read-only", "read_only")):
            assert (flag in start) == bool(container.get(key)), (component["name"], flag)
        host_dirs = list(dict.fromkeys(v.split(":", 1)[0] for v in volumes if v.startswith("/")))
        if host_dirs:
            assert argv_of(values, "ExecStartPre") == ["/usr/bin/mkdir", "-p", "--", *host_dirs]
        else:
            assert "ExecStartPre" not in values


def whole_seconds(duration: object) -> int:
    """A manifest duration ("2.5s", "500ms", or a number of seconds) rounded up
    to podman's whole seconds, at least 1."""
    text = str(duration)
    match = re.fullmatch(r"([0-9.]+)(ms|s)?", text)
    assert match, f"a duration this runner does not read: {text!r}"
    seconds = float(match[1]) / (1000 if match[2] == "ms" else 1)
    return max(1, math.ceil(seconds))


def launched_images(plan: dict) -> dict[str, str]:
    """{component: image} of the plan's LaunchComponent events (none when a
    tag is planned: its digest is known only at pull)."""
    images = {}
    for line in plan["measurement"]["events"]:
        if line.startswith("github.com/confidential-containers LaunchComponent "):
            event = json.loads(line.split(" ", 2)[2])
            images[event["component"]] = event["image"]
    return images


@pytest.mark.parametrize("name", [n for n in case_names() if (CASES / n / "expect" / "units").is_dir()])
def test_real_systemd_reads_the_case_units_as_written(name: str) -> None:
    """systemd-analyze verify says nothing about them, and systemd itself
    parses every Exec*= line into the argv the test-side parser reads."""
    units = {p.name: p.read_text(encoding="utf-8") for p in sorted((CASES / name / "expect" / "units").iterdir())}
    for unit, text in units.items():
        for key, argvs in systemd_exec_commands(tuple(sorted(units.items())), unit).items():
            assert argvs == [argv_of(values_of(text.encode()), key)], (unit, key)
    verified = verify_silently(tuple(sorted(units.items())))
    assert verified == (0, "", ""), verified


@cache
def systemd_exec_commands(units: tuple[tuple[str, str], ...], unit: str) -> dict[str, list[list[str]]]:
    # cached: many cases render the same units, and each systemd --test takes a while
    commands = dump_exec_commands(dict(units), unit)
    return {key: [[substitute_environment(w).decode("utf-8") for w in argv] for argv in argvs]
            for key, argvs in commands.items()}


@cache
def verify_silently(units: tuple[tuple[str, str], ...]) -> tuple[int, str, str]:
    # verify exits 0 on unknown keys and bad values, but says so: it must say nothing
    result = analyze_verify(dict(units))
    return result.returncode, result.stdout, result.stderr


# --- a case's own assertions (hand-written, never rewritten) ----------------

ASSERTION = re.compile(r"(?P<unit>\S+\.service): (?P<negate>!?)(?P<key>[A-Za-z]+)(?:=(?P<value>.*))?")


def check_assertions(case: Path, units: dict[str, bytes]) -> None:
    """tests/cases/<case>/assertions: one line per fact about a rendered unit
    that the case exists to show, kept when expectations are regenerated:
    `<unit>: Key=value` (the directive is set, exactly to value), `<unit>: !Key`
    (not set). Blank lines and lines starting with # are ignored."""
    path = case / "assertions"
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = ASSERTION.fullmatch(line)
        assert match, f"{path}: not an assertion: {line!r}"
        assert match["unit"] in units, f"{path}: {line!r}: no such unit rendered"
        values = values_of(units[match["unit"]])
        if match["negate"]:
            assert match["key"] not in values, f"{path}: {line!r}"
        else:
            assert values.get(match["key"]) == (match["value"] or "").encode(), f"{path}: {line!r}"
