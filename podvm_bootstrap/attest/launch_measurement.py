"""The measured launch step of `run` (docs/measured-launch.md). Before the
first component starts:

1. the initdata digest of this boot is bound into `measure.initdata_pcr`
   (initdata_binding);
2. the launch set is recorded: one TCG2 record per component that will run,
   then LaunchComplete (eventlog), each appended to `measure.eventlog` (the
   attestation agent's own log file, /run/attestation-agent/eventlog) and
   fsynced, then extended into `measure.pcr`. The register must read zero
   before the first record.

A record is durable before it is extended, so the file never says less than
the register holds; after a crash it may say one record more (or hold a torn
last record, never extended): the next daemon of the boot cuts what is torn,
extends what was written and goes on. The file is the agent's too: once the
launch is complete the agent appends its own records after ours.

Which boot a file belongs to: /run is a tmpfs, so a pod VM starts every boot
without one; but a tree given with --root, or a test bed's VM, may keep /run.
The boot id (/proc/sys/kernel/random/boot_id) is written beside the daemon's
state before a new file is begun: a file without this boot's id is another
boot's and is replaced. A daemon restarted in the same boot finds this boot's
file, replays its records for `measure.pcr` (the agent's later records
included) against the register, finds LaunchComplete and never measures
again; a component whose planned digest this boot's records do not hold does
not start. Without a TPM (`measure.tpm: none`, or `auto` and no device) the
records are still written, nothing is extended, and the launch is reported
unmeasured."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from podvm_bootstrap.attest import initdata_binding
from podvm_bootstrap.attest.eventlog import ZERO, Prediction, format_value, launch_order, predict
from podvm_bootstrap.attest.launch_set import LAUNCH_COMPLETE, LaunchedComponent, LaunchSet, read_launch
from podvm_bootstrap.attest.tcg_log import (
    DOMAIN,
    MAX_LOG_BYTES,
    EventLog,
    MalformedLog,
    Record,
    event_digest,
    parse_records,
    replay,
)
from podvm_bootstrap.attest.tpm import Tpm, TpmError, resolve_tpm
from podvm_bootstrap.common.errors import BootstrapError
from podvm_bootstrap.common.fsutil import atomic_write, read_regular_file
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.model import Plan, PlannedComponent
from podvm_bootstrap.config.settings import Settings, TpmSetting, parse_tpm_setting

log = get_logger("measure")

BOOT_ID_FILE = "eventlog.boot_id"   # in the state dir: the boot the event log was begun in
BOOT_ID = "/proc/sys/kernel/random/boot_id"
AGENT_WAL = ".wal_event_entry"      # beside the log: the agent's record extended but not yet written
TPM_DEADLINE = 30.0                 # bound on one measurement's TPM commands and writes

# refuse(component, reason, its record in this boot's launch set or None)
Refuse = Callable[[str, str, LaunchedComponent | None], None]


class MeasurementError(BootstrapError):
    """The launch could not be measured with the TPM configured: nothing starts."""


def launch_entries(components: Iterable[PlannedComponent]) -> list[LaunchedComponent]:
    """The launch entries of planned components whose image is pinned; an
    override says who asked for it."""
    return [LaunchedComponent(p.name, p.digest, p.image.pinned, p.source,
                              p.override.requested_by if p.source == "override" and p.override else None)
            for p in components if p.digest is not None]


def predicted_measurement(plan: Plan, pcr: int) -> dict[str, Any]:
    """`plan --json`'s `measurement` (but `initdata`): the records the plan
    produces, their events' text, and the register's value from zero. With an
    image given by tag (mutable_tags) the digest is only known at pull: no
    prediction then."""
    if any(p.digest is None for p in plan.components):
        return {"pcr": pcr, "events": [], "records": [], "expected": None}
    prediction = predict(pcr, launch_order(launch_entries(plan.components), plan.start_order))
    return {"pcr": pcr, "events": list(prediction.texts), "records": [r.hex() for r in prediction.records],
            "expected": format_value(prediction.value)}


def read_boot_id(root: Path) -> str:
    try:
        return read_regular_file(root / BOOT_ID.lstrip("/"), 128).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        return "unknown"


def measure_launch(paths: Paths, settings: Settings, start_order: Sequence[Sequence[str]],
                   runnable: Iterable[PlannedComponent], refuse: Refuse) -> dict[str, Any]:
    """Bind the initdata and measure the launch set of this boot, or check the
    ones done earlier in it. Returns the record kept in state.json (`status`
    reads it). Calls refuse(component, reason, recorded) for a component whose
    planned image must not start, with this boot's record for it (None when
    the boot launched none): the caller keeps that image, which the register
    says runs. Raises MeasurementError when a TPM is configured and the
    launch cannot be measured or confirmed: no component may start then."""
    started = time.perf_counter()
    step = _Step(paths, settings, list(runnable), start_order, refuse)
    record = _bounded(step.run, TPM_DEADLINE, step.describe_tpm())
    # Its cost on the boot's critical path (docs/benchmarks.md "What measured launch costs" reads this line).
    log.info("measured launch step took %.1f ms for %d components (%s)", 1000 * (time.perf_counter() - started),
             len(step.entries), step.tpm_times or "no TPM opened")
    return record


def _bounded(fn: Callable[[], dict[str, Any]], timeout: float, tpm: str) -> dict[str, Any]:
    """Run fn in a thread for at most `timeout` seconds: a TPM that never
    answers must not hang the boot."""
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            result.append(exc)
    worker = threading.Thread(target=target, name="measure", daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        raise MeasurementError(f"measured launch: TPM {tpm} did not answer within {timeout:g}s; nothing started")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class _Step:
    def __init__(self, paths: Paths, settings: Settings, runnable: list[PlannedComponent],
                 start_order: Sequence[Sequence[str]], refuse: Refuse) -> None:
        self.paths = paths
        self.pcr = settings.measure.pcr
        self.initdata_pcr = settings.measure.initdata_pcr
        self.setting = parse_tpm_setting(settings.measure.tpm)
        self.tpm: TpmSetting | None = resolve_tpm(self.setting, paths.root)
        self.entries = launch_order(launch_entries(runnable), start_order)
        self.prediction: Prediction = predict(self.pcr, self.entries)
        self.unpinned = [p.name for p in runnable if p.digest is None]
        self.refuse = refuse
        self.log_path = paths.rooted(settings.measure.eventlog)
        self.boot_path = paths.state_dir / BOOT_ID_FILE
        self.boot_id = read_boot_id(paths.root)
        self.tpm_times = ""   # how long opening the TPM took, for the step's timing line

    def _opened(self, tpm: Tpm) -> None:
        self.tpm_times = (f"waited {1000 * tpm.import_s:.1f} ms for tpm2-pytss's bindings, "
                          f"opened the TPM in {1000 * tpm.open_s:.1f} ms")

    def describe_tpm(self) -> str:
        if self.tpm is not None:
            return str(self.tpm)
        return "none" if self.setting.kind == "none" else f"none (auto: no {self.paths.rooted('/dev/tpmrm0')})"

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        except OSError as exc:   # the file or its directory: unwritable, full, a symlink planted at the name
            raise MeasurementError(f"measured launch failed, nothing started: cannot write the event log "
                                   f"{self.log_path}: {exc.strerror or exc}") from None

    def _run(self) -> dict[str, Any]:
        for name in self.unpinned:  # cannot happen after the image stage; never start one unmeasured
            self.refuse(name, "measured launch: its image has no digest", None)
        digest, initdata = self._initdata_digest()
        data = self._this_boots_log()
        written = self._written_prefix(data)
        if self.tpm is None:
            record = self._unmeasured(data, written)
            if initdata is not None and digest is not None:
                log.warning("initdata NOT bound (measure.tpm: %s): %s", self.describe_tpm(), initdata["digest"])
            return {**record, "initdata": initdata}
        try:
            with Tpm(self.tpm) as tpm:
                self._opened(tpm)
                if initdata is not None and digest is not None:
                    assert self.initdata_pcr is not None
                    extended = initdata_binding.bind(tpm, self.initdata_pcr, digest)
                    log.info("initdata %s %s PCR %d: %s", initdata["digest"],
                             "bound into" if extended else "already bound in", self.initdata_pcr,
                             initdata["expected"])
                    initdata = {**initdata, "bound": True}
                if written is not None:
                    record = self._measure(tpm, written)
                else:
                    assert data is not None
                    record = self._confirm(tpm, data)
        except initdata_binding.BindingRefused as exc:
            raise MeasurementError(f"initdata binding failed, nothing started: {exc}") from None
        except TpmError as exc:
            raise MeasurementError(f"measured launch failed, nothing started: {exc}") from None
        return {**record, "initdata": initdata}

    # --- initdata -------------------------------------------------------------

    def _initdata_digest(self) -> tuple[str | None, dict[str, Any] | None]:
        """This boot's initdata digest (hex) and its record for state.json. An
        initdata without a usable digest is one error line (the owner's
        initdata could not be read; the register stays zero, which no relying
        party accepts) and the boot goes on."""
        if self.initdata_pcr is None:
            return None, None
        try:
            digest = initdata_binding.read_digest(self.paths.rooted(initdata_binding.DIGEST_PATH))
        except ValueError as exc:
            log.error("initdata NOT bound into PCR %d: %s", self.initdata_pcr, exc)
            return None, {"pcr": self.initdata_pcr, "digest": None, "expected": None, "bound": False,
                          "error": str(exc)}
        return digest, {**initdata_binding.describe(self.initdata_pcr, digest), "bound": False, "error": None}

    # --- the file of this boot --------------------------------------------------

    def _this_boots_log(self) -> bytes | None:
        """The bytes of this boot's event log; None when there is none yet
        (another boot's file is replaced when the launch is written)."""
        try:
            same_boot = read_regular_file(self.boot_path, 128).decode("ascii", "replace").strip() == self.boot_id
            if not same_boot:
                log.info("event log %s is not this boot's: starting a new one", self.log_path)
                return None
            return read_regular_file(self.log_path, MAX_LOG_BYTES + 1, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MeasurementError(f"measured launch: cannot read this boot's event log {self.log_path}: "
                                   f"{exc.strerror or exc}; nothing started") from None

    def _written_prefix(self, data: bytes | None) -> int | None:
        """How many of the predicted records this boot's file holds when it
        holds nothing else (a launch to begin, or to finish after a crash);
        None when it holds anything more or else (a finished launch, which the
        agent may have continued: parsed and checked). A torn record at the
        end (cut by a crash before its fsync, so never extended) is cut off."""
        if data is None:
            return 0
        whole = b"".join(self.prediction.records)
        if len(data) >= len(whole) or not whole.startswith(data):
            return None
        boundaries = self._boundaries()
        at = max(b for b in boundaries if b <= len(data))
        if at < len(data):
            log.warning("event log %s ends with a torn record (%d bytes, never extended): cut", self.log_path,
                        len(data) - at)
            os.truncate(self.log_path, at)
        return boundaries.index(at)

    def _boundaries(self) -> list[int]:
        """The byte offsets where the predicted records start and end."""
        offsets, at = [0], 0
        for record in self.prediction.records:
            at += len(record)
            offsets.append(at)
        return offsets

    def _start_log(self) -> None:
        """A new log for this boot: another boot's goes first, then this boot's
        id is made durable, then the empty log is created."""
        self.log_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        atomic_write(self.boot_path, (self.boot_id + "\n").encode(), 0o644)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.close(fd)

    def _append(self, record: bytes) -> None:
        """Append a record (or records) and fsync: durable before it is extended."""
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- first measurement (or its continuation after a crash) -----------------

    def _measure(self, tpm: Tpm, done: int) -> dict[str, Any]:
        p = self.prediction
        value = tpm.read(self.pcr)
        if done == 0:
            if value != ZERO:
                raise MeasurementError(f"measured launch: PCR {self.pcr} reads {format_value(value)} before the "
                                       "first record of this boot, not zero; nothing started")
            self._start_log()
        elif value == p.values[done - 1]:
            log.info("resuming the measurement of this boot after record %d", done)
        elif value == (p.values[done - 2] if done > 1 else ZERO):
            tpm.extend(self.pcr, event_digest(p.texts[done - 1]))
            log.info("resuming the measurement of this boot: record %d had been written, not extended", done)
        else:
            raise MeasurementError(f"measured launch: PCR {self.pcr} ({format_value(value)}) does not match this "
                                   f"boot's unfinished event log ({done} records); nothing started")
        for record, text in zip(p.records[done:], p.texts[done:], strict=True):
            self._append(record)                          # durable first ...
            tpm.extend(self.pcr, event_digest(text))      # ... then extended
        value = tpm.read(self.pcr)
        if value != p.value:
            raise MeasurementError(f"measured launch: PCR {self.pcr} reads {format_value(value)} after the launch, "
                                   f"the records give {format_value(p.value)} (something else extended it); "
                                   "nothing started")
        log.info("launch measured into PCR %d of TPM %s: %d components, %s", self.pcr, self.tpm,
                 len(self.entries), format_value(value))
        return self._record({e.component: e.digest for e in self.entries}, p.value, measured=True)

    def _unmeasured(self, data: bytes | None, written: int | None) -> dict[str, Any]:
        """No TPM: the records are written all the same (once per boot)."""
        if written is None and data is not None:
            try:
                launch, _ = self._read(data)
                self._check_digests(launch)
                return self._record({c.component: c.digest for c in launch.components},
                                    predict(self.pcr, launch.components).value, measured=False)
            except MeasurementError as exc:
                log.warning("%s; writing it again (not measured anyway)", exc)
        self._start_log()
        self._append(b"".join(self.prediction.records))   # nothing to extend: one write, one fsync
        log.warning("launch NOT measured (measure.tpm: %s): %d records written to %s", self.describe_tpm(),
                    len(self.prediction.records), self.log_path)
        return self._record({e.component: e.digest for e in self.entries}, self.prediction.value, measured=False)

    # --- a daemon restarted in the same boot -------------------------------------

    def _read(self, data: bytes) -> tuple[LaunchSet, EventLog]:
        try:
            parsed = parse_records(data, str(self.log_path))
            launch = read_launch(parsed, self.pcr, str(self.log_path))
        except MalformedLog as exc:
            raise MeasurementError(f"measured launch: this boot's event log is unusable ({exc})") from None
        if not launch.complete:
            raise MeasurementError(f"measured launch: this boot's event log {self.log_path} holds an unfinished "
                                   "launch of another launch set")
        return launch, parsed

    def _confirm(self, tpm: Tpm, data: bytes) -> dict[str, Any]:
        """The launch of this boot is recorded already: never measure again.
        The register must hold what the file's records for it give (ours,
        then the agent's); with a TPM, nothing starts otherwise."""
        try:
            launch, parsed = self._read(data)
        except MeasurementError as exc:
            raise MeasurementError(f"{exc}; nothing started") from None
        self._check_digests(launch)
        value = tpm.read(self.pcr)
        records = [r for r in parsed.records if r.register == self.pcr]
        if value != replay(records, self.pcr):
            last = records[-1]
            if _is_launch_complete(last) and value == replay(records[:-1], self.pcr):
                # LaunchComplete was written, not extended, when the last daemon ended
                tpm.extend(self.pcr, last.digests[0].value)
                log.info("the last daemon of this boot wrote LaunchComplete, did not extend it: extended")
            elif not self._agent_extending(value):
                raise MeasurementError(f"measured launch: PCR {self.pcr} reads {format_value(value)}; this boot's "
                                       f"event log gives {format_value(replay(records, self.pcr))}; nothing started")
        launch_value = predict(self.pcr, launch.components).value
        log.info("launch of this boot already measured (%s); not measuring again", format_value(launch_value))
        return self._record({c.component: c.digest for c in launch.components}, launch_value, measured=True)

    def _agent_extending(self, value: bytes) -> bool:
        """The attestation agent extends a record before it writes it, and keeps
        the register's value it expects in its write-ahead file meanwhile
        (guest-components eventlog/mod.rs: u64 offset, then that value)."""
        try:
            wal = read_regular_file(self.log_path.parent / AGENT_WAL, 8 + 64 + 4096, follow_symlinks=False)
        except OSError:
            return False
        return wal[8:8 + len(value)] == value

    def _check_digests(self, launch: LaunchSet) -> None:
        """A component whose planned digest this boot's records do not hold does
        not start (the caller logs it, and keeps what the records hold)."""
        recorded = launch.by_name()
        for entry in self.entries:
            earlier = recorded.get(entry.component)
            if earlier is None or earlier.digest != entry.digest:
                reason = (f"{entry.image} is not in this boot's measured launch set "
                          f"({earlier.digest if earlier else 'component not launched'}); "
                          "a new launch set needs a reboot")
                self.refuse(entry.component, reason, earlier)

    def _record(self, components: dict[str, str], value: bytes, *, measured: bool) -> dict[str, Any]:
        return {
            "eventlog": str(self.log_path),
            "tpm": self.describe_tpm(),
            "pcr": self.pcr,
            "measured": measured,
            "value": format_value(value),
            "components": components,
            "error": None,
        }


def _is_launch_complete(record: Record) -> bool:
    text = record.aael
    return text is not None and text.startswith(f"{DOMAIN} {LAUNCH_COMPLETE} ")
