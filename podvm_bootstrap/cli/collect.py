"""`podvm-bootstrap collect`: one tar.gz an operator attaches to a bug report,
made from the console or a serial line of a pod VM nobody can log in to.

The bundle (a directory `podvm-collect-<host>-<boot>-<time>/`) holds:

- `MANIFEST.json`: every part with its size and sha256, whether it was cut
  to its cap, the command that made it and its exit status, and for a part
  that could not be had the one-line reason;
- `version.txt`, `status.json` (`status --json`), `state/plan.json`,
  `state/state.json`, `config/` (the baked bootstrap.yaml, components.yaml,
  policy.yaml, components.lock.json);
- `journal/<unit>.log`: this boot's journal of the daemon and of every
  component's unit (`journalctl -b -u UNIT -o short-precise`, its last lines);
- `units/`: the generated unit files and the daemon's own unit;
- `eventlog/eventlog` (the measured launch's log as the VM keeps it) and its
  replay by `measurements` (`replay.txt`, `replay.json`);
- `podman/`: `ps -a`, `images --digests`, `image inspect` of the planned images;
- `tee.json` (the TEE the plan reports, the TEE and TPM devices present,
  /sys/class/tpm, the DMI vendor) and `tpm/pcrs.txt` (the sha256 PCRs, when
  there is a TPM);
- `redacted.json`: the secret-bearing files (the provisioned files, the
  user-data) as the rules of podvm_bootstrap.cli.redaction summarize them.

Secrets never leave: those files are never copied, and every other part is
scrubbed of the values the rules withheld. Bounded: each part has a cap
(a journal keeps its last bytes, anything else its first), the bundle has
one, every command has a timeout and the whole collect a deadline; what
was cut or skipped is said in the MANIFEST. A part that cannot be had is one
error line on stderr and a reason in the MANIFEST; the rest is collected."""

from __future__ import annotations

import io
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from podvm_bootstrap import __version__
from podvm_bootstrap.cli.redaction import redact, scrub, scrub_forms, sha256_hex, withheld_text
from podvm_bootstrap.common.errors import BootstrapError, one_line
from podvm_bootstrap.common.fsutil import NotARegularFile, atomic_write, read_json, read_regular_file
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.settings import Settings, load_settings

FORMAT_VERSION = 1
PART_CAP = 4 * 1024 * 1024          # bytes of one part
TOTAL_CAP = 48 * 1024 * 1024        # bytes of all parts together (before compression)
SECRET_FILE_CAP = 16 * 1024 * 1024  # bytes read of a secret-bearing file to summarize it
DEADLINE = 90.0                     # seconds for the whole collect ...
SCRUB_RESERVE = 10.0                # ... of which the last are kept for scrubbing and writing
COMMAND_TIMEOUT = 20.0              # seconds for one command
JOURNAL_LINES = 20_000              # last lines of one unit's journal asked for
STDERR_KEPT = 2048                  # bytes of a command's stderr kept for its reason

DAEMON_UNIT = "podvm-bootstrap.service"
DAEMON_UNIT_FILE = "/usr/lib/systemd/system/podvm-bootstrap.service"
CONFIG_FILES = (("bootstrap.yaml", True), ("components.yaml", False), ("policy.yaml", False),
                ("components.lock.json", True))    # (name, may be absent)
STORAGE = "/var/lib/containers/storage"
SYS_CLASS_TPM = "/sys/class/tpm"
DMI_FIELDS = ("sys_vendor", "product_name", "chassis_asset_tag")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.@\\-]+\.service")


@dataclass
class Part:
    name: str                          # path inside the bundle
    data: bytes | None = None
    error: str | None = None           # why it is missing or incomplete (one line)
    absent: str | None = None          # an optional file that is not there (no error)
    truncated: str | None = None       # how it was cut
    command: list[str] | None = None
    exit_status: int | None = None
    scrubbed: int = 0

    def manifest(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name}
        if self.data is not None:
            entry.update(size=len(self.data), sha256=sha256_hex(self.data))
        for key in ("error", "absent", "truncated", "command", "exit_status"):
            if getattr(self, key) is not None:
                entry[key] = getattr(self, key)
        if self.scrubbed:
            entry["scrubbed"] = self.scrubbed
        return entry


@dataclass
class Ran:
    stdout: bytes
    truncated: bool
    returncode: int | None          # None: killed at its timeout
    stderr: str


def run_bounded(argv: Sequence[str], *, timeout: float, cap: int, keep_tail: bool = False,
                env: dict[str, str] | None = None) -> Ran:
    """Run argv (stdin closed), keeping at most `cap` bytes of its stdout (its
    first, or with keep_tail its last) and the end of its stderr, for at
    most `timeout` seconds: then it is killed (its own process group).
    FileNotFoundError when the program is not installed."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    truncated = timed_out = False
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            events = sel.select(min(left, 0.5))
            if not events and proc.poll() is not None:
                break   # it has ended; whatever still holds its pipes (a child it left) is not waited for
            for key, _ in events:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf: bytearray = key.data
                buf += chunk
                if buf is err and len(err) > 2 * STDERR_KEPT:
                    del err[:-STDERR_KEPT]
                elif buf is out and len(out) > cap:
                    truncated = True
                    if not keep_tail:
                        del out[cap:]
                        sel.unregister(key.fileobj)   # enough: the rest is not read ...
                        _kill(proc)                   # ... nor written (a full pipe would block it)
                    elif len(out) > 2 * cap:
                        del out[:-cap]
        if sel.get_map():   # killed at its timeout, or ended leaving a child holding its pipes: end them all
            _kill(proc)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.wait(5)
    proc.stdout.close()
    proc.stderr.close()
    if keep_tail and len(out) > cap:
        del out[:-cap]
    return Ran(bytes(out), truncated, None if timed_out else proc.returncode,
               bytes(err[-STDERR_KEPT:]).decode("utf-8", "replace"))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # its own session: the group is the child and what it started
    except ProcessLookupError:
        pass


@dataclass
class Collector:
    paths: Paths
    settings: Settings
    deadline: float = DEADLINE
    part_cap: int = PART_CAP
    total_cap: int = TOTAL_CAP
    clock: Callable[[], float] = time.monotonic
    parts: list[Part] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = self.clock()

    # --- budget ----------------------------------------------------------------
    def left(self) -> float:
        """Seconds left for collecting (the reserve for scrubbing excluded)."""
        return self.started + self.deadline - SCRUB_RESERVE - self.clock()

    def _used(self) -> int:
        return sum(len(p.data) for p in self.parts if p.data is not None)

    def add(self, part: Part) -> Part:
        if part.data is not None:
            room = self.total_cap - self._used()
            if room <= 0:
                part.data, part.truncated = None, None
                part.error = part.error or f"not kept: the bundle's cap of {self.total_cap} bytes was reached"
            elif len(part.data) > room:
                part.data = part.data[:room]
                part.truncated = f"cut to {room} bytes: the bundle's cap of {self.total_cap} bytes was reached"
        self.parts.append(part)
        return part

    def skip_when_late(self, name: str) -> bool:
        if self.left() > 0:
            return False
        self.add(Part(name, error=f"not collected: the collect's deadline of {self.deadline:g}s passed"))
        return True

    # --- kinds of parts ----------------------------------------------------------
    def file(self, name: str, path: Path, *, optional: bool = False) -> Part:
        try:
            data = read_regular_file(path, self.part_cap + 1)
        except FileNotFoundError:
            if optional:
                return self.add(Part(name, absent=f"{path} does not exist"))
            return self.add(Part(name, error=f"{path} does not exist"))
        except NotARegularFile as exc:
            return self.add(Part(name, error=f"{path} is {exc.kind}"))
        except OSError as exc:
            return self.add(Part(name, error=f"cannot read {path}: {exc.strerror or exc}"))
        part = Part(name, data=data[:self.part_cap])
        if len(data) > self.part_cap:
            part.truncated = f"its first {self.part_cap} bytes"
        return self.add(part)

    def command(self, name: str, argv: list[str], *, keep_tail: bool = False, env: dict[str, str] | None = None,
                ok_status: Sequence[int] = (0,)) -> Part:
        if self.skip_when_late(name):
            return self.parts[-1]
        timeout = min(COMMAND_TIMEOUT, self.left())
        part = Part(name, command=argv)
        try:
            ran = run_bounded(argv, timeout=timeout, cap=self.part_cap, keep_tail=keep_tail, env=env or _env())
        except FileNotFoundError:
            part.error = f"{argv[0]} is not installed"
            return self.add(part)
        except OSError as exc:
            part.error = f"cannot run {argv[0]}: {exc.strerror or exc}"
            return self.add(part)
        part.data, part.exit_status = ran.stdout, ran.returncode
        if ran.truncated:
            part.truncated = f"its {'last' if keep_tail else 'first'} {self.part_cap} bytes"
        if ran.returncode is None:
            part.error = f"{argv[0]} did not finish within {timeout:.0f}s (killed; its output so far is kept)"
        elif ran.returncode not in ok_status and not (ran.truncated and ran.returncode == -signal.SIGKILL):
            # (killed by us at the cap: not its failure) what it printed is kept; the reason is its last error line
            said = one_line(ran.stderr.strip().splitlines()[-1] if ran.stderr.strip() else "", 200)
            part.error = f"{argv[0]} exited {ran.returncode}" + (f": {said}" if said else "")
        if part.error is not None and not part.data:
            part.data = None
        return self.add(part)

    def value(self, name: str, value: object) -> Part:
        return self.add(Part(name, data=(json.dumps(value, indent=2, sort_keys=True) + "\n").encode()))


def _env() -> dict[str, str]:
    """The environment of the commands run: ours, without what would make
    this package log as a journald service, and no pager or colour."""
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET")}
    env.update(SYSTEMD_PAGER="", SYSTEMD_COLORS="0", PAGER="cat", LC_ALL="C.UTF-8")
    return env


def _self(paths: Paths, *args: str) -> list[str]:
    """This program, on the same tree, with `args`."""
    return [sys.executable, "-m", "podvm_bootstrap", "--root", str(paths.root), "--config-dir", str(paths.config_dir),
            "--state-dir", str(paths.state_dir), *args]


def _rooted(paths: Paths) -> bool:
    return paths.root != Path("/")


# --- the parts ------------------------------------------------------------------

def secret_files(paths: Paths, settings: Settings) -> list[Path]:
    """The files whose content never leaves: what user-data may provision
    (the allow-list, initdata's extractions beside it, the registry
    credentials) and the saved user-data."""
    from podvm_bootstrap.userdata.initdata import DERIVED_FILES

    names = [*settings.provision.allowed_paths, settings.runtime.auth_file]
    for allowed in settings.provision.allowed_paths:
        if allowed.rsplit("/", 1)[-1] == "initdata":
            names += [f"{allowed.rsplit('/', 1)[0]}/{derived}" for derived in DERIVED_FILES]
    seen: list[Path] = []
    for name in names:
        path = paths.rooted(name)
        if path not in seen:
            seen.append(path)
    return [*seen, paths.state_dir / "user-data"]


def summarize_secrets(c: Collector) -> None:
    files: list[dict[str, Any]] = []
    for path in secret_files(c.paths, c.settings):
        shown = "/" + str(path.relative_to(c.paths.root)) if path.is_relative_to(c.paths.root) else str(path)
        try:
            data = read_regular_file(path, SECRET_FILE_CAP + 1)
        except FileNotFoundError:
            continue
        except OSError as exc:
            files.append({"file": shown, "error": one_line(exc.strerror or exc)})
            continue
        if len(data) > SECRET_FILE_CAP:
            files.append({"file": shown, "error": f"larger than {SECRET_FILE_CAP} bytes: not read"})
            continue
        try:
            result = redact(shown, data, max_size=SECRET_FILE_CAP)
        except Exception as exc:  # noqa: BLE001 - fail closed: the file is withheld whole and searched for
            c.secrets.update(withheld_text(data))
            files.append({"file": shown, "size": len(data), "sha256": sha256_hex(data),
                          "error": f"cannot be summarized ({type(exc).__name__}): withheld whole"})
            continue
        c.secrets.update(result.secrets)
        files.append(result.summary)
    c.value("redacted.json", {"files": files, "note": "values withheld by rule; names, sizes and sha256 kept"})


def collect_state(c: Collector) -> dict[str, Any]:
    c.command("version.txt", _self(c.paths, "--version"))
    c.command("status.json", _self(c.paths, "status", "--json"), ok_status=(0, 1))
    for name in ("plan.json", "state.json"):
        c.file(f"state/{name}", c.paths.state_dir / name)
    for name, optional in CONFIG_FILES:
        c.file(f"config/{name}", c.paths.config_dir / name, optional=optional)
    plan = read_json(c.paths.state_dir / "plan.json", PART_CAP)
    return plan if isinstance(plan, dict) else {}


def component_units(c: Collector, plan: dict[str, Any]) -> list[str]:
    """The components' units: the plan's, else state.json's, else the manifest's."""
    units = [x.get("unit") for x in plan.get("components") or [] if isinstance(x, dict)]
    if not units:
        state = read_json(c.paths.state_dir / "state.json", PART_CAP)
        units = list(state.get("units") or []) if isinstance(state, dict) else []
    if not units:
        try:
            from podvm_bootstrap.config.manifest import load_manifest

            units = [x.unit for x in load_manifest(c.paths.components_yaml).components]
        except (BootstrapError, OSError):
            units = []
    return [u for u in dict.fromkeys(units) if isinstance(u, str) and _UNIT_NAME.fullmatch(u)]


def collect_journals(c: Collector, units: list[str]) -> None:
    where = ["--root", str(c.paths.root)] if _rooted(c.paths) else []
    for unit in [DAEMON_UNIT, *units]:
        c.command(f"journal/{unit}.log", ["journalctl", "--no-pager", *where, "-b", "-u", unit, "-o", "short-precise",
                                         "-n", str(JOURNAL_LINES)], keep_tail=True)


def collect_units(c: Collector, units: list[str]) -> None:
    c.file(f"units/{DAEMON_UNIT}", c.paths.rooted(DAEMON_UNIT_FILE))
    for unit in units:
        c.file(f"units/{unit}", c.paths.unit_dir / unit)


def eventlog_path(paths: Paths, settings: Settings) -> Path:
    """The measured launch's log: `measure.eventlog`, under --root."""
    return paths.rooted(settings.measure.eventlog)


def collect_eventlog(c: Collector) -> None:
    path = eventlog_path(c.paths, c.settings)
    part = c.file("eventlog/eventlog", path)
    if part.data is None:
        return
    # exit 1: an incomplete launch or a mismatch, which is what the replay is for
    c.command("eventlog/replay.txt", _self(c.paths, "measurements", "--log", str(path)), ok_status=(0, 1))
    c.command("eventlog/replay.json", _self(c.paths, "measurements", "--log", str(path), "--json"), ok_status=(0, 1))


def collect_podman(c: Collector, plan: dict[str, Any]) -> None:
    podman = ["podman"]
    if _rooted(c.paths):
        storage = c.paths.rooted(STORAGE)
        if not storage.is_dir():
            for name in ("podman/ps.txt", "podman/images.txt", "podman/inspect.json"):
                c.add(Part(name, error=f"no container storage at {storage}"))
            return
        podman += ["--root", str(storage), "--runroot", str(c.paths.rooted("/run/containers/storage")),
                   "--tmpdir", str(c.paths.rooted("/run/libpod"))]
    c.command("podman/ps.txt", [*podman, "ps", "-a", "--no-trunc"])
    c.command("podman/images.txt", [*podman, "images", "--digests", "--no-trunc"])
    planned = [x.get("image") for x in plan.get("components") or [] if isinstance(x, dict)]
    images = [i for i in dict.fromkeys(planned) if isinstance(i, str) and i and not i.startswith("-")]
    if images:
        # exit 125 when one of them is not in storage: the others are still printed
        c.command("podman/inspect.json", [*podman, "image", "inspect", *images], ok_status=(0, 125))
    else:
        c.add(Part("podman/inspect.json", error="no planned image (no plan.json)"))


def _exists(paths: Paths, path: str) -> bool:
    return os.path.lexists(paths.rooted(path))


def _read_text(path: Path, limit: int = 256) -> str | None:
    try:
        return read_regular_file(path, limit).decode("utf-8", "replace").strip()
    except OSError:
        return None


def collect_tee_tpm(c: Collector, plan: dict[str, Any]) -> None:
    from podvm_bootstrap.attest.tee import DMI_DIR, SE_UV_DIR, SNP_DEVICES, TDX_DEVICES, TPM_DEVICES
    from podvm_bootstrap.attest.tpm import resolve_tpm
    from podvm_bootstrap.config.settings import parse_tpm_setting

    tpm_class = c.paths.rooted(SYS_CLASS_TPM)
    try:
        entries = sorted(os.listdir(tpm_class))[:16]
    except OSError:
        entries = []
    tpm_setting = c.settings.measure.tpm
    try:
        resolved = resolve_tpm(parse_tpm_setting(tpm_setting), c.paths.root)
    except ValueError:
        resolved = None
    facts = {
        "tee": {"plan": plan.get("tee"), "setting": c.settings.tee,
                "devices": {p: _exists(c.paths, p) for p in (*TDX_DEVICES, *SNP_DEVICES, SE_UV_DIR)}},
        "dmi": {f: _read_text(c.paths.rooted(f"{DMI_DIR}/{f}")) for f in DMI_FIELDS},
        "tpm": {"setting": tpm_setting, "used": None if resolved is None else str(resolved),
                "devices": {p: _exists(c.paths, p) for p in TPM_DEVICES},
                "sys_class_tpm": {e: {"tpm_version_major": _read_text(tpm_class / e / "tpm_version_major")}
                                  for e in entries}},
    }
    c.value("tee.json", facts)
    if resolved is not None:
        collect_pcrs(c, str(resolved))


def collect_pcrs(c: Collector, tcti: str) -> None:
    """The sha256 PCRs: tpm2_pcrread when installed, else this package's own
    TPM reader (tpm2-pytss), on the TPM measure.tpm names."""
    import shutil

    if shutil.which("tpm2_pcrread"):
        c.command("tpm/pcrs.txt", ["tpm2_pcrread", "sha256"], env={**_env(), "TPM2TOOLS_TCTI": tcti})
        return
    if c.skip_when_late("tpm/pcrs.txt"):
        return
    result: dict[str, Any] = {}

    def read() -> None:
        from podvm_bootstrap.attest.tpm import Tpm
        from podvm_bootstrap.config.settings import parse_tpm_setting

        try:
            with Tpm(parse_tpm_setting(tcti)) as tpm:
                result["lines"] = [f"  {pcr:2}: 0x{tpm.read(pcr).hex().upper()}" for pcr in range(24)]
        except Exception as exc:  # noqa: BLE001 - whatever the TPM says is this part's reason
            result["error"] = one_line(exc)

    worker = threading.Thread(target=read, name="collect-pcrs", daemon=True)
    worker.start()
    timeout = min(COMMAND_TIMEOUT, c.left())
    worker.join(timeout)
    command = ["(tpm2-pytss)", "pcr_read", "sha256", tcti]
    if "lines" in result:
        c.add(Part("tpm/pcrs.txt", data=("sha256:\n" + "\n".join(result["lines"]) + "\n").encode(), command=command))
    else:
        c.add(Part("tpm/pcrs.txt", command=command,
                   error=result.get("error") or f"the TPM did not answer within {timeout:.0f}s"))


# --- the bundle -------------------------------------------------------------------

def bundle_stem(root: Path, now: datetime) -> str:
    from podvm_bootstrap.attest.launch_measurement import read_boot_id

    host = _SAFE_NAME.sub("-", socket.gethostname())[:64] or "host"
    boot = _SAFE_NAME.sub("", read_boot_id(root))[:8] or "unknown"
    return f"podvm-collect-{host}-{boot}-{now.strftime('%Y%m%dT%H%M%SZ')}"


def collect(paths: Paths, *, deadline: float = DEADLINE, part_cap: int = PART_CAP, total_cap: int = TOTAL_CAP,
            clock: Callable[[], float] = time.monotonic) -> tuple[list[Part], dict[str, Any]]:
    """Every part (scrubbed) and the MANIFEST's other fields."""
    settings_error = None
    try:
        settings = load_settings(paths.bootstrap_yaml)
    except BootstrapError as exc:
        settings, settings_error = Settings(), str(exc)
    c = Collector(paths, settings, deadline=deadline, part_cap=part_cap, total_cap=total_cap, clock=clock)
    if settings_error is not None:
        c.add(Part("settings", error=f"{settings_error} (defaults used for the collect)"))
    summarize_secrets(c)                 # first: what it withholds is scrubbed from everything after
    plan: dict[str, Any] = {}
    units: list[str] = []

    def step(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one step's failure must not cost the bundle its other parts
            c.add(Part(name, error=f"cannot be collected: {type(exc).__name__}: {one_line(exc, 200)}"))

    def state() -> None:
        plan.update(collect_state(c))
        units.extend(component_units(c, plan))

    step("state", state)
    step("journal", lambda: collect_journals(c, units))
    step("units", lambda: collect_units(c, units))
    step("eventlog", lambda: collect_eventlog(c))
    step("podman", lambda: collect_podman(c, plan))
    step("tee.json", lambda: collect_tee_tpm(c, plan))
    scrubbed = scrub_parts(c)
    return c.parts, {"secrets_searched": len(scrubbed), "deadline_s": deadline, "part_cap": part_cap,
                     "total_cap": total_cap, "elapsed_s": round(clock() - c.started, 3)}


def scrub_parts(c: Collector) -> list[bytes]:
    """Replace every withheld value in every part; a part not scrubbed by the
    deadline is dropped, never kept as it was."""
    forms = scrub_forms(c.secrets)
    end = c.started + c.deadline
    for part in c.parts:
        if part.data is None:
            continue
        if c.clock() > end:
            part.data, part.truncated = None, None
            part.error = "dropped: not scrubbed of secrets before the collect's deadline"
            continue
        part.data, part.scrubbed = scrub(part.data, forms)
    return forms


def tarball(stem: str, parts: list[Part], manifest: dict[str, Any], now: datetime) -> bytes:
    buf = io.BytesIO()
    mtime = int(now.timestamp())
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        members = [("MANIFEST.json", (json.dumps(manifest, indent=2) + "\n").encode())]
        members += [(p.name, p.data) for p in parts if p.data is not None]
        for name, data in members:
            info = tarfile.TarInfo(f"{stem}/{name}")
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def run_collect(paths: Paths, output: str | None) -> int:
    """Collect, write the bundle to `output` (a file, `-` for stdout, or a
    name of its own under the current directory), print one error line per
    part that could not be had. 0 when the bundle was written, 1 when not."""
    now = datetime.now(UTC).replace(microsecond=0)
    stem = bundle_stem(paths.root, now)
    parts, extra = collect(paths)
    manifest = {"format": FORMAT_VERSION, "created": now.isoformat(), "podvm_bootstrap": __version__,
                "bundle": stem, **extra, "parts": [p.manifest() for p in parts]}
    for part in parts:
        if part.error is not None:
            print(f"podvm-bootstrap: error: collect: {part.name}: {one_line(part.error)}", file=sys.stderr)
    data = tarball(stem, parts, manifest, now)
    if output == "-":
        if sys.stdout.isatty():
            print("podvm-bootstrap: error: collect: the bundle is binary; pipe it (| base64) rather than print it "
                  "on a terminal", file=sys.stderr)
            return 1
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except OSError as exc:
            print(f"podvm-bootstrap: error: collect: cannot write the bundle to stdout: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        return 0
    target = Path(output) if output else Path.cwd() / f"{stem}.tar.gz"
    try:
        atomic_write(target, data, 0o600)
    except OSError as exc:
        print(f"podvm-bootstrap: error: collect: cannot write the bundle to {target}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    print(f"{target} ({len(data)} bytes, {sum(p.data is not None for p in parts) + 1} parts)", file=sys.stderr)
    return 0
