#!/usr/bin/env python3
"""The benchmark's hands inside the booted pod VM (copied in by bench/run.py,
run with the VM's python3, stdlib only). One command per call, its input as
JSON on stdin, its measurements as one JSON object on stdout. Every time is
taken here, inside the VM, so that entering the VM (nsenter) is never timed.
Every wait is bounded; only 127.0.0.1 and unix sockets are touched.

    python3 vmdriver.py reset | daemon_boot | ideal_boot | steady | crash | hang | plan_times |
                        plain_store | forget_images
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime

DAEMON_UNIT = "podvm-bootstrap.service"
STATE_JSON = "/run/podvm-bootstrap/state.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class DriverError(Exception):
    pass


def sh(argv: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise DriverError(f"{' '.join(argv)} exited {out.returncode}: {(out.stdout + out.stderr).strip()[-1500:]}")
    return out


# --- probes -----------------------------------------------------------------

def answers(probe: dict, timeout: float = 0.5, banner: bool = False) -> bool:
    """The daemon's ready probe (a connect), or with banner=True a connect that
    also gets the stand-in's line back (a hung stand-in accepts no more)."""
    try:
        if probe["kind"] == "unix_socket":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            with s:
                s.connect(probe["target"])
                return bool(s.recv(128)) if banner else True
        host, _, port = probe["target"].rpartition(":")
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            return bool(s.recv(128)) if banner else True
    except OSError:
        return False


def wait_all(probes: list[dict], t0: float, timeout: float, interval: float = 0.01) -> dict[str, float]:
    """Poll until every probe answers; {name: seconds after t0 first seen up}."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while True:
        for p in probes:
            if p["name"] not in seen and answers(p):
                seen[p["name"]] = time.monotonic() - t0
        if len(seen) == len(probes):
            return seen
        if time.monotonic() > deadline:
            missing = [p["name"] for p in probes if p["name"] not in seen]
            raise DriverError(f"not answering after {timeout:.0f}s: {', '.join(missing)}")
        time.sleep(interval)


# --- the daemon's process -----------------------------------------------------

def main_pid(unit: str = DAEMON_UNIT) -> int:
    pid = int(sh(["systemctl", "show", "-P", "MainPID", unit]).stdout.strip() or 0)
    if pid <= 0:
        raise DriverError(f"{unit} has no main PID")
    return pid


def proc_usage(pid: int) -> dict:
    """CPU seconds (user+system, all threads) and memory of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    mem = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "Threads"):
                mem[key] = int(value.split()[0])
    return {"cpu_s": cpu, "hwm_bytes": mem.get("VmHWM", 0) * 1024, "rss_bytes": mem.get("VmRSS", 0) * 1024,
            "threads": mem.get("Threads", 0)}


def cgroup_accounting(unit: str = DAEMON_UNIT) -> dict:
    """systemd's own accounting of the unit, when it has any (cgroup v1 is
    read-only inside nspawn here: usually not)."""
    out = sh(["systemctl", "show", "-P", "CPUUsageNSec", unit], check=False).stdout.strip()
    mem = sh(["systemctl", "show", "-P", "MemoryCurrent", unit], check=False).stdout.strip()
    return {"cpu_usage_nsec": int(out) if out.isdigit() else None,
            "memory_current": int(mem) if mem.isdigit() else None}


def read_state() -> dict | None:
    try:
        with open(STATE_JSON) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def wall_of(stamp: dict | None) -> float | None:
    if not stamp or not isinstance(stamp.get("wall"), str):
        return None
    return datetime.fromisoformat(stamp["wall"]).timestamp()


# --- commands ---------------------------------------------------------------

def cmd_reset(args: dict) -> dict:
    """Back to a just-booted VM: the daemon and every component stopped, no
    container, no generated unit, no runtime state, the podman API service
    stopped (its socket stays: the next start pays its activation, as at
    boot)."""
    t0 = time.monotonic()
    sh(["systemctl", "stop", DAEMON_UNIT])
    bench_units = [u for u in os.listdir("/run/systemd/system") if u.startswith(BIN_PREFIX)]
    if bench_units:   # the binaries' boot: its units go, their processes with them
        sh(["systemctl", "stop", *bench_units], timeout=120, check=False)
        for unit in bench_units:
            os.unlink(os.path.join("/run/systemd/system", unit))
    generated = []
    for unit in sorted(os.listdir("/run/systemd/system")):
        path = os.path.join("/run/systemd/system", unit)
        if unit.endswith(".service") and os.path.isfile(path):
            with open(path, errors="replace") as f:
                if f.readline().startswith("# Generated by podvm-bootstrap"):
                    generated.append((unit, path))
    if generated:
        sh(["systemctl", "stop", *[u for u, _ in generated]], timeout=180, check=False)
    sh(["podman", "rm", "--all", "--force", "--time", "0"], timeout=180)
    for _, path in generated:
        os.unlink(path)
    sh(["systemctl", "daemon-reload"])
    sh(["systemctl", "reset-failed"], check=False)
    sh(["systemctl", "stop", "podman.service"], check=False)
    sh(["rm", "-rf", "/run/podvm-bootstrap", "/run/peerpod", "/run/kata-containers", "/run/confidential-containers",
        "/run/attestation-agent"])
    left = sh(["podman", "ps", "--all", "--quiet"]).stdout.split()
    if left:
        raise DriverError(f"containers left after reset: {left}")
    return {"reset_s": time.monotonic() - t0}


def cmd_daemon_boot(args: dict) -> dict:
    """`systemctl start podvm-bootstrap` (returns at READY=1: Type=notify),
    then until every component's ready probe answers (10 ms polls)."""
    probes = args["probes"]
    t0w = time.time()
    t0 = time.monotonic()
    sh(["systemctl", "start", DAEMON_UNIT], timeout=args.get("timeout", 300))
    ready = time.monotonic() - t0
    pid = main_pid()
    usage = proc_usage(pid)       # start to READY (a fresh process)
    seen = wait_all(probes, t0, args.get("timeout", 300))
    all_ready = max(ready, *seen.values())
    state = read_state() or {}
    per_component = {}
    for name, entry in (state.get("components") or {}).items():
        wall = wall_of(entry.get("ready"))
        per_component[name] = None if wall is None else wall - t0w
    result = {"ready_s": ready, "all_ready_s": all_ready, "probes_s": seen, "pid": pid, **usage,
            "daemon_ready_stamps_s": per_component, "cgroup": cgroup_accounting(),
            "started_in_state": (state.get("daemon") or {}).get("started"),
            "podman_api": _podman_api_usage()}
    time.sleep(0.3)  # let journald catch up
    result.update(_boot_events(args.get("units") or {}, t0, t0w, seen))
    if args.get("timeline"):
        result["timeline"] = _timeline(t0w, all_ready + 0.2)
    return result


def _mono_prop(unit: str, prop: str) -> float | None:
    """A systemd *TimestampMonotonic property in seconds (CLOCK_MONOTONIC, as time.monotonic())."""
    out = sh(["systemctl", "show", "-P", prop, unit], check=False).stdout.strip()
    return int(out) / 1e6 if out.isdigit() and int(out) > 0 else None


def _boot_events(units: dict[str, str], t0: float, t0w: float, seen: dict[str, float]) -> dict:
    """Per component, seconds after `systemctl start podvm-bootstrap`: queued
    (systemd began its unit's start: the daemon's StartUnit), up (the unit
    active: conmon's READY, the container set up), released (the daemon's
    journal line for its gate), ready (the bench's own probe); and the
    daemon's first StartUnit after its process started (exec)."""
    def rel(mono: float | None) -> float | None:
        return None if mono is None else mono - t0

    released: dict[str, float] = {}
    for entry in _journal_since(t0w, "-u", DAEMON_UNIT):
        message = entry.get("MESSAGE")
        mono = entry.get("__MONOTONIC_TIMESTAMP")
        if isinstance(message, str) and isinstance(mono, str) and ": gate open: released" in message:
            name = message.split(": ", 1)[0].split()[-1]
            released.setdefault(name, int(mono) / 1e6 - t0)
    events = {}
    for name, unit in units.items():
        events[name] = {"queued": rel(_mono_prop(unit, "InactiveExitTimestampMonotonic")),
                        "up": rel(_mono_prop(unit, "ActiveEnterTimestampMonotonic")),
                        "released": released.get(name), "ready": seen.get(name)}
    exec_start = _mono_prop(DAEMON_UNIT, "ExecMainStartTimestampMonotonic")
    queued = [e["queued"] for e in events.values() if e["queued"] is not None]
    first = None if exec_start is None or not queued else min(queued) - (exec_start - t0)
    return {"events": events, "first_start_unit_s": first, "daemon_exec_s": rel(exec_start)}


def _podman_api_usage() -> dict | None:
    """The podman API service the daemon's first call socket-activated (the
    reset stopped it): its CPU so far is work done for the daemon."""
    try:
        pid = main_pid("podman.service")
        return proc_usage(pid)
    except (DriverError, OSError):
        return None


def _journal_since(t0w: float, *selectors: str) -> list[dict]:
    """The journal's entries (JSON) since just before t0w, optionally of one unit (`-u U`)."""
    out = sh(["journalctl", "--no-pager", "-o", "json", *selectors, "--since", f"@{int(t0w) - 1}"], check=False)
    entries = []
    for line in out.stdout.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def _timeline(t0w: float, until: float, limit: int = 120) -> list[tuple[float, str, str]]:
    """Journal entries of the whole VM from t0w to t0w+until: (seconds, who, message)."""
    entries = []
    for entry in _journal_since(t0w):
        stamp = entry.get("_SOURCE_REALTIME_TIMESTAMP") or entry.get("__REALTIME_TIMESTAMP") or 0
        at = int(stamp) / 1e6 - t0w
        message = entry.get("MESSAGE")
        if 0 <= at <= until and isinstance(message, str) and message.strip():
            who = entry.get("SYSLOG_IDENTIFIER") or entry.get("_SYSTEMD_UNIT") or "?"
            entries.append((round(at, 3), who, " ".join(message.split())[:150]))
    entries.sort(key=lambda e: e[0])
    return entries[:limit]


def finished(p: subprocess.Popen, what: str, timeout: float) -> None:
    """Wait for a command of the ideal script (its stderr piped): DriverError,
    naming `what`, when it does not return within `timeout` (it is killed) or
    exits non-zero."""
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise DriverError(f"{what} did not return within {timeout}s") from None
    if p.returncode != 0:
        raise DriverError(f"{what} exited {p.returncode}: {err.strip()[-800:]}")

def cmd_ideal_boot(args: dict) -> dict:
    """The ideal for the same containers: plain `podman run -d` (the units'
    own argv), a layer's containers started together, each layer waited on
    with the same probes (10 ms polls) before the next one starts."""
    for path, content in (args.get("files") or {}).items():  # what user-data would provision: untimed
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
    timeout = args.get("timeout", 300)
    t0 = time.monotonic()
    layer_done = []
    events: dict[str, dict] = {}
    pulls = [subprocess.Popen(["podman", "pull", "--quiet", ref], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for ref in args.get("pull") or []]   # as a script would, all at once
    for ref, p in zip(args.get("pull") or [], pulls, strict=True):
        finished(p, f"podman pull {ref}", timeout)
    pulled = time.monotonic() - t0
    for layer in args["layers"]:
        for step in layer:
            for d in step["dirs"]:
                os.makedirs(d, exist_ok=True)
        started = time.monotonic() - t0
        procs = [(step, subprocess.Popen(step["argv"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
                 for step in layer]
        for step, p in procs:
            finished(p, f"podman run of {step['name']}", timeout)
            events[step["name"]] = {"run": started, "returned": time.monotonic() - t0}
        seen = wait_all([s["probe"] for s in layer], t0, timeout)
        for name, at in seen.items():
            events[name]["ready"] = at
        layer_done.append(time.monotonic() - t0)
    return {"all_ready_s": layer_done[-1], "layers_s": layer_done, "events": events, "pulled_s": pulled}


STORAGE_CONF = "/etc/containers/storage.conf"
STORAGE_CONF_AWAY = "/etc/containers/storage.conf.bench-plain"


def cmd_plain_store(args: dict) -> dict:
    """A plain image's store (on: true): no storage.conf at all (podman and
    the daemon take every default and guess the driver from the graph
    root's state) and the given images pulled into the graph root, since
    the baked read-only store is then out of sight. on: false undoes it
    (the images removed, storage.conf back)."""
    images = args.get("images") or []
    if args.get("on"):
        if os.path.exists(STORAGE_CONF):
            os.rename(STORAGE_CONF, STORAGE_CONF_AWAY)
        sh(["systemctl", "stop", "podman.service"], check=False)   # its next start reads no storage.conf
        for ref in images:
            sh(["podman", "pull", "--quiet", ref], timeout=600)
        driver = sh(["podman", "info", "--format", "{{.Store.GraphDriverName}}"]).stdout.strip()
        return {"driver": driver, "storage_conf": os.path.exists(STORAGE_CONF)}
    sh(["podman", "rmi", "--force", "--ignore", *images], timeout=300, check=False)
    if os.path.exists(STORAGE_CONF_AWAY):
        os.rename(STORAGE_CONF_AWAY, STORAGE_CONF)
    sh(["systemctl", "stop", "podman.service"], check=False)
    return {"storage_conf": os.path.exists(STORAGE_CONF)}


def cmd_forget_images(args: dict) -> dict:
    """The given images removed from podman's store: the next boot pulls them."""
    images = args.get("images") or []
    sh(["podman", "rmi", "--force", "--ignore", *images], timeout=300)
    left = [ref for ref in images if sh(["podman", "image", "exists", ref], check=False).returncode == 0]
    if left:
        raise DriverError(f"still in storage: {left}")
    return {"forgotten": len(images)}


BIN_DIR = "/var/tmp/bench/bin"
BIN_PREFIX = "bench-bin-"


def cmd_binaries_boot(args: dict) -> dict:
    """Today's peer pods: the stand-in program itself (BIN_DIR/standin, one
    symlink per program name) as plain services, each dependent one started by
    a .path unit (PathExists= its dependency's socket); until every probe
    answers (10 ms polls). Its files and units are written before the clock."""
    for path, content in (args.get("files") or {}).items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
    first, paths = [], []
    for step in args["steps"]:
        for d in step["dirs"]:
            os.makedirs(d, exist_ok=True)
        program = os.path.join(BIN_DIR, os.path.basename(step["argv"][0]))
        if not os.path.lexists(program):
            os.symlink("standin", program)
        unit = f"{BIN_PREFIX}{step['name']}"
        exec_line = " ".join(_quote(w) for w in [program, *step["argv"][1:]])
        with open(f"/run/systemd/system/{unit}.service", "w") as f:
            f.write(f"[Service]\nType=simple\nExecStart={exec_line}\n")
        if step["waits"]:
            with open(f"/run/systemd/system/{unit}.path", "w") as f:
                f.write("[Path]\n" + "".join(f"PathExists={w}\n" for w in step["waits"]) + f"Unit={unit}.service\n")
            paths.append(f"{unit}.path")
        else:
            first.append(f"{unit}.service")
    sh(["systemctl", "daemon-reload"])
    timeout = args.get("timeout", 300)
    t0 = time.monotonic()
    sh(["systemctl", "start", "--no-block", *paths, *first])
    seen = wait_all([s["probe"] for s in args["steps"]], t0, timeout)
    return {"all_ready_s": max(seen.values()), "probes_s": seen}


def _quote(word: str) -> str:
    if word and all(c.isalnum() or c in "/._-:=" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_steady(args: dict) -> dict:
    """The daemon's CPU and memory while it supervises: CPU over the window,
    RSS sampled every `every` seconds."""
    seconds, every = float(args.get("seconds", 60)), float(args.get("every", 2))
    pid = main_pid()
    first = proc_usage(pid)
    t0 = time.monotonic()
    rss = [first["rss_bytes"]]
    while time.monotonic() - t0 < seconds:
        time.sleep(min(every, max(0.0, seconds - (time.monotonic() - t0))))
        rss.append(proc_usage(pid)["rss_bytes"])
    last = proc_usage(pid)
    wall = time.monotonic() - t0
    if main_pid() != pid:
        raise DriverError("the daemon restarted during the steady-state window")
    state = read_state() or {}
    return {"wall_s": wall, "cpu_s": last["cpu_s"] - first["cpu_s"], "rss_bytes": rss, "hwm_bytes": last["hwm_bytes"],
            "threads": last["threads"], "status": (state.get("daemon") or {}).get("status")}


def _container_pid(name: str) -> int:
    pid = int(sh(["podman", "inspect", "--format", "{{.State.Pid}}", name]).stdout.strip() or 0)
    if pid <= 0:
        raise DriverError(f"container {name} is not running")
    return pid


def _component(state: dict | None, name: str) -> dict:
    return ((state or {}).get("components") or {}).get(name) or {}


def _unit_events(unit: str, t0w: float) -> list[tuple[float, str]]:
    events = []
    for entry in _journal_since(t0w, "-u", unit):
        at = int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6 - t0w
        message = entry.get("MESSAGE")
        if at >= 0 and isinstance(message, str):
            events.append((at, message))
    return events


def _first(events: list[tuple[float, str]], *needles: str) -> float | None:
    return next((at for at, message in events if any(n in message for n in needles)), None)


def _watch_recovery(name: str, probe: dict, t0: float, timeout: float, before_restarts: int) -> dict:
    """After the fault: poll the stand-in (banner, 10 ms) until it is seen down
    and then answering again, and state.json (50 ms) for the daemon's view."""
    down = back = daemon_noticed = daemon_ready = None
    deadline = t0 + timeout
    next_state = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        up = answers(probe, timeout=0.2, banner=True)
        if down is None and not up:
            down = time.monotonic() - t0
        elif down is not None and back is None and up:
            back = time.monotonic() - t0
        if now >= next_state:
            next_state = now + 0.05
            entry = _component(read_state(), name)
            changed = bool(entry) and (entry.get("restarts", 0) > before_restarts or entry.get("state") != "ready")
            if daemon_noticed is None and changed:
                daemon_noticed = time.monotonic() - t0
            if daemon_noticed is not None and daemon_ready is None and entry.get("state") == "ready":
                daemon_ready = time.monotonic() - t0
        if back is not None and (daemon_ready is not None or time.monotonic() - t0 > back + 3):
            break
        time.sleep(0.01)
    return {"down_seen_s": down, "back_s": back, "daemon_noticed_s": daemon_noticed, "daemon_ready_s": daemon_ready}


def _signal_component(name: str, probe: dict, sig: int, what: str) -> tuple[int, float, float]:
    """Check the component answers, then send `sig` to its container process.
    Returns its restart count before, and the wall and monotonic send times."""
    if not answers(probe, banner=True):
        raise DriverError(f"{name} does not answer before the {what}")
    pid = _container_pid(name)
    before = _component(read_state(), name).get("restarts", 0)
    t0w, t0 = time.time(), time.monotonic()
    os.kill(pid, sig)
    return before, t0w, t0


def cmd_crash(args: dict) -> dict:
    """SIGKILL the component's container process; when systemd saw its unit's
    main process exit, when the daemon's state changed, when it answers again."""
    name, probe, unit = args["name"], args["probe"], args["unit"]
    before, t0w, t0 = _signal_component(name, probe, signal.SIGKILL, "crash")
    result = _watch_recovery(name, probe, t0, args.get("timeout", 60), before)
    time.sleep(0.3)  # let the journal catch up
    events = _unit_events(unit, t0w)
    result["systemd_saw_exit_s"] = _first(events, "Main process exited", "Failed with result")
    result["systemd_restart_s"] = _first(events, "Scheduled restart job")
    result["unit_started_s"] = _first(events, "Started ")
    result["restarts_after"] = _component(read_state(), name).get("restarts")
    result["restarts_before"] = before
    return result


def cmd_hang(args: dict) -> dict:
    """SIGUSR2: the stand-in stops answering but stays alive. Only state.json
    is watched until the daemon declares it down (polling the hung stand-in
    from here would fill its listen backlog and fail the daemon's connect
    probe for it); then the stand-in is polled until it answers again."""
    name, probe, bound = args["name"], args["probe"], float(args["detect_bound"])
    before, t0w, t0 = _signal_component(name, probe, signal.SIGUSR2, "hang")
    first_failure = detected = None
    while time.monotonic() - t0 < bound:
        entry = _component(read_state(), name)
        if not entry:
            time.sleep(0.05)
            continue
        if first_failure is None and (entry.get("health") == "failing" or entry.get("state") != "ready"):
            first_failure = time.monotonic() - t0
        if entry.get("restarts", 0) > before or entry.get("state") in ("restarting", "crash-loop", "failed"):
            detected = time.monotonic() - t0
            break
        time.sleep(0.05)
    result = {"first_failed_probe_s": first_failure, "detected_s": detected, "bound_s": bound}
    if detected is None:
        result["detail"] = (f"not declared down within {bound:g}s; state: "
                            f"{json.dumps({k: _component(read_state(), name).get(k) for k in ('state', 'health', 'last_error')})}")
        return result
    back = None
    deadline = time.monotonic() + args.get("timeout", 60)
    while time.monotonic() < deadline:
        if answers(probe, timeout=0.2, banner=True):
            back = time.monotonic() - t0
            break
        time.sleep(0.01)
    daemon_ready = None
    while back is not None and time.monotonic() < deadline:
        entry = _component(read_state(), name)
        if entry.get("state") == "ready":
            daemon_ready = time.monotonic() - t0
            break
        time.sleep(0.05)
    result.update({"back_s": back, "daemon_ready_s": daemon_ready,
                   "restart_logged_s": _first(_unit_events(args["unit"], t0w), "Stopping ", "Stopped ")})
    return result


INPROC = r"""
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.runtime.stages import UserDataSource, plan
from podvm_bootstrap.config.planner import make_plan
from podvm_bootstrap.config.manifest import load_manifest
from podvm_bootstrap.config.policy import load_policy
t1 = time.perf_counter()
paths = Paths.build(config_dir=sys.argv[1])
resolved = plan(paths, UserDataSource(file=sys.argv[2]))
t2 = time.perf_counter()
manifest, policy = load_manifest(paths.components_yaml), load_policy(paths.policy_yaml)
overrides = resolved.userdata.images if resolved.userdata is not None else {}
reps = 200
t3 = time.perf_counter()
for _ in range(reps):
    make_plan(manifest, policy, overrides)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "resolve_s": t2 - t1, "make_plan_s": (t4 - t3) / reps,
                  "components": len(resolved.plan.components), "layers": len(resolved.plan.start_order),
                  "errors": list(resolved.plan.errors)}))
"""


def cmd_plan_times(args: dict) -> dict:
    """Wall time of `podvm-bootstrap plan --json` (a fresh process each time),
    of a bare `python3 -c pass` for scale, and in-process: import, then
    plan (stages.plan: load the three files, read the user-data, plan), then make_plan
    alone."""
    config_dir, user_data, reps = args["config_dir"], args["user_data"], int(args.get("reps", 10))
    cli, bare, inproc = [], [], []
    argv = ["podvm-bootstrap", "--config-dir", config_dir, "plan", "--json", "--user-data", user_data]
    for _ in range(reps):
        t0 = time.perf_counter()
        out = sh(argv)
        cli.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sh([sys.executable, "-c", "pass"])
        bare.append(time.perf_counter() - t0)
        inproc.append(json.loads(sh([sys.executable, "-c", INPROC, config_dir, user_data]).stdout))
    plan = json.loads(out.stdout)
    return {"cli_s": cli, "python_bare_s": bare, "inproc": inproc,
            "plan_components": len(plan["components"]), "plan_layers": len(plan["start_order"]),
            "plan_errors": plan["errors"],
            "sources": sorted({c["source"] for c in plan["components"]})}


COMMANDS = {"reset": cmd_reset, "daemon_boot": cmd_daemon_boot, "ideal_boot": cmd_ideal_boot,
            "binaries_boot": cmd_binaries_boot,
            "steady": cmd_steady, "crash": cmd_crash, "hang": cmd_hang, "plan_times": cmd_plan_times,
            "plain_store": cmd_plain_store, "forget_images": cmd_forget_images}


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: vmdriver.py {{{'|'.join(COMMANDS)}}} < args.json", file=sys.stderr)
        return 2
    args = json.loads(sys.stdin.read() or "{}")
    try:
        result = COMMANDS[sys.argv[1]](args)
    except (DriverError, subprocess.TimeoutExpired, OSError) as exc:
        print(json.dumps({"error": " ".join(str(exc).split())}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
