"""The measured launch step of `run`: before the first component starts, the
launch set (which image, by digest, runs as each component) is written to
`<state-dir>/eventlog` (AAEL, podvm_bootstrap.eventlog) and extended into the
TPM PCR `measure.pcr`, line by line.

Each line is appended and fsynced before it is extended, so the log never
says less than the PCR holds (after a crash it may say one line more: the next
daemon extends that line and goes on). The log belongs to one boot (its boot
id is kept beside it): a daemon restarted in the same boot finds it, checks
it against the PCR (which the attestation agent's own log may have extended
further since), and never measures again: nothing is extended after
LaunchComplete. With a TPM, a component whose digest is not in this boot's
log does not start. Without a TPM (`measure.tpm: none`, or `auto` and no
device) the log is still written and the launch is reported unmeasured."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from podvm_bootstrap.errors import BootstrapError
from podvm_bootstrap.eventlog import (
    MAX_LOG_BYTES,
    ZERO,
    LaunchEntry,
    MalformedLog,
    ParsedLog,
    aael_states,
    format_value,
    launch_lines,
    launch_order,
    line_digest,
    parse_log,
    predict,
)
from podvm_bootstrap.fsutil import atomic_write, read_regular_file
from podvm_bootstrap.log import get_logger
from podvm_bootstrap.model import Plan, PlannedComponent
from podvm_bootstrap.paths import Paths
from podvm_bootstrap.settings import Settings
from podvm_bootstrap.tpm import Tpm, TpmError, TpmSetting, parse_tpm_setting, resolve_tpm

log = get_logger("measure")

EVENTLOG = "eventlog"
BOOT_ID_FILE = "eventlog.boot_id"   # the boot the log belongs to, written before it
BOOT_ID = "/proc/sys/kernel/random/boot_id"
AA_EVENTLOG = "/run/attestation-agent/eventlog"
TPM_DEADLINE = 30.0                # bound on one measurement's TPM commands and writes

Refuse = Callable[[str, str], None]


class MeasurementError(BootstrapError):
    """The launch could not be measured with the TPM configured: nothing starts."""


def launch_entries(components: Iterable[PlannedComponent]) -> list[LaunchEntry]:
    """The launch entries of planned components whose image is pinned."""
    return [LaunchEntry(p.name, p.image.pinned, p.digest, p.source) for p in components if p.digest is not None]


def predicted_measurement(plan: Plan, pcr: int) -> dict[str, Any]:
    """`plan --json`'s `measurement`: the log lines the plan produces from an
    all-zero register and the PCR value they give. With an image given by tag
    (mutable_tags) the digest is only known at pull: no prediction then."""
    if any(p.digest is None for p in plan.components):
        return {"pcr": pcr, "events": [], "expected": None}
    lines, value = predict(launch_order(launch_entries(plan.components), plan.start_order))
    return {"pcr": pcr, "events": lines, "expected": format_value(value)}


def read_boot_id(root: Path) -> str:
    try:
        return read_regular_file(root / BOOT_ID.lstrip("/"), 128).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        return "unknown"


def measure_launch(paths: Paths, settings: Settings, start_order: Sequence[Sequence[str]],
                   runnable: Iterable[PlannedComponent], refuse: Refuse) -> dict[str, Any]:
    """Measure the launch set of this boot, or check the one measured earlier
    in it. Returns the record kept in state.json (`status` reads it). Calls
    refuse(component, reason) for a component that must not start. Raises
    MeasurementError when a TPM is configured and the launch cannot be
    measured: no component may start then."""
    started = time.perf_counter()
    step = _Step(paths, settings, list(runnable), start_order, refuse)
    record = _bounded(step.run, TPM_DEADLINE, step.describe_tpm())
    # Its cost on the boot's critical path (README "Benchmarks" reads this line).
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
        self.unpinned = [p.name for p in runnable if p.digest is None]
        self.refuse = refuse
        self.log_path = paths.state_dir / EVENTLOG
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
        for name in self.unpinned:  # cannot happen after the image stage; never start one unmeasured
            self.refuse(name, "measured launch: its image has no digest")
        initdata = self._bind_initdata()
        existing = self._this_boots_log()
        if existing is not None and existing.complete:
            record = self._check_earlier(existing)
        else:
            record = self._measure(existing)
        return {**record, "initdata": initdata}

    # --- initdata, bound first ------------------------------------------------

    def _bind_initdata(self) -> dict[str, Any] | None:
        """Bind this boot's initdata digest into `measure.initdata_pcr`
        (initdata_binding). An initdata without a usable digest is one error
        line (the owner's initdata could not be read; the register stays zero,
        which no relying party accepts) and the boot goes on; with a TPM, a
        register that this boot's digest does not explain stops it."""
        if self.initdata_pcr is None:
            return None
        from podvm_bootstrap import initdata_binding

        try:
            digest = initdata_binding.read_digest(self.paths.rooted(initdata_binding.DIGEST_PATH))
        except ValueError as exc:
            log.error("initdata NOT bound into PCR %d: %s", self.initdata_pcr, exc)
            return {"pcr": self.initdata_pcr, "digest": None, "expected": None, "bound": False, "error": str(exc)}
        record = {**initdata_binding.describe(self.initdata_pcr, digest), "bound": False, "error": None}
        if self.tpm is None:
            log.warning("initdata NOT bound (measure.tpm: %s): %s", self.describe_tpm(), record["digest"])
            return record
        try:
            with Tpm(self.tpm) as tpm:
                self._opened(tpm)
                extended = initdata_binding.bind(tpm, self.initdata_pcr, digest)
        except (TpmError, initdata_binding.BindingRefused) as exc:
            raise MeasurementError(f"initdata binding failed, nothing started: {exc}") from None
        log.info("initdata %s %s PCR %d: %s", record["digest"], "bound into" if extended else "already bound in",
                 self.initdata_pcr, record["expected"])
        return {**record, "bound": True}

    # --- the log of this boot ------------------------------------------------

    def _this_boots_log(self) -> ParsedLog | None:
        """This boot's log, or None when there is none yet (a log of another
        boot is removed). A log of this boot that is not a launch log: with a
        TPM that is an error, without one it is written again."""
        try:
            same_boot = read_regular_file(self.boot_path, 128).decode("ascii", "replace").strip() == self.boot_id
            data = read_regular_file(self.log_path, MAX_LOG_BYTES + 1)
        except FileNotFoundError:
            return None
        if not same_boot:
            log.info("event log %s is from another boot: starting a new one", self.log_path)
            return None
        if not data:
            return None  # created, nothing durable in it yet: nothing was extended
        try:
            return parse_log(data, str(self.log_path))
        except MalformedLog as exc:
            if self.tpm is not None:
                raise MeasurementError(f"measured launch: this boot's event log is unusable ({exc}); "
                                       "nothing started") from None
            log.warning("this boot's event log is unusable (%s); writing it again (not measured anyway)", exc)
            return None

    # --- first measurement (or its continuation after a crash) -----------------

    def _measure(self, partial: ParsedLog | None) -> dict[str, Any]:
        if self.tpm is None:
            lines = launch_lines(ZERO, self.entries)
            self._start_log()
            self._append(lines)
            log.warning("launch NOT measured (measure.tpm: %s): event log %s written, %d components",
                        self.describe_tpm(), self.log_path, len(self.entries))
            return self._record(self._parsed(lines), measured=False)
        try:
            with Tpm(self.tpm) as tpm:
                self._opened(tpm)
                if partial is None:
                    self._start_log()
                    lines = launch_lines(tpm.read(self.pcr), self.entries)
                    done = 0
                else:
                    lines, done = self._resume(tpm, partial)
                for line in lines[done:]:
                    self._append([line])                      # durable first ...
                    tpm.extend(self.pcr, line_digest(line))  # ... then extended
                value = tpm.read(self.pcr)
        except TpmError as exc:
            raise MeasurementError(f"measured launch failed, nothing started: {exc}") from None
        written = self._parsed(lines)
        if value != written.value:
            raise MeasurementError(f"measured launch: PCR {self.pcr} reads {format_value(value)} after the launch, "
                                   f"the log gives {format_value(written.value)} (something else extended it); "
                                   "nothing started")
        log.info("launch measured into PCR %d of TPM %s: %d components, %s", self.pcr, self.tpm,
                 len(self.entries), format_value(value))
        return self._record(written, measured=True)

    def _resume(self, tpm: Tpm, partial: ParsedLog) -> tuple[list[str], int]:
        """An earlier daemon of this boot stopped mid-measurement: go on when its
        lines are the start of this launch's and the PCR holds them (or all but
        the last, which it had written but not extended yet)."""
        lines = launch_lines(partial.init, self.entries)
        done = len(partial.lines)
        if list(partial.lines) != lines[:done]:
            raise MeasurementError("measured launch: this boot's unfinished event log was begun for another launch "
                                   "set; nothing started")
        states = partial.states()
        value = tpm.read(self.pcr)
        if value == states[-1]:
            log.info("resuming the measurement of this boot after line %d", done)
            return lines, done
        before_last = states[-2] if done > 1 else partial.init
        if value == before_last:
            tpm.extend(self.pcr, line_digest(lines[done - 1]))
            log.info("resuming the measurement of this boot: line %d had been written, not extended", done)
            return lines, done
        raise MeasurementError(f"measured launch: PCR {self.pcr} ({format_value(value)}) does not match this boot's "
                               "unfinished event log; nothing started")

    def _start_log(self) -> None:
        """A new log for this boot: the old one (another boot's) goes first, then
        the boot id is made durable, then the empty log is created."""
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        atomic_write(self.boot_path, (self.boot_id + "\n").encode(), 0o644)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.close(fd)

    def _append(self, lines: Sequence[str]) -> None:
        """Append lines and fsync: a line is durable before it is extended."""
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            data = "".join(line + "\n" for line in lines).encode()
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- a daemon restarted in the same boot -------------------------------------

    def _check_earlier(self, earlier: ParsedLog) -> dict[str, Any]:
        """The launch of this boot is measured already: never extend again.
        Check the PCR against the log (and the attestation agent's log that
        continues it); with a TPM, refuse what the log does not name."""
        measured_digests = {e.component: e.digest for e in earlier.launched}
        for entry in self.entries:
            if measured_digests.get(entry.component) != entry.digest:
                reason = (f"{entry.image} is not in this boot's measured launch set "
                          f"({measured_digests.get(entry.component) or 'component not launched'}); "
                          "a new launch set needs a reboot")
                if self.tpm is not None:
                    self.refuse(entry.component, reason)
                log.warning("%s: %s", entry.component, reason)
        error = None
        if self.tpm is not None:
            try:
                with Tpm(self.tpm) as tpm:
                    self._opened(tpm)
                    error = self._consistency(tpm, earlier)
            except TpmError as exc:
                error = str(exc)
            if error is not None:
                log.error("measured launch of this boot cannot be confirmed: %s", error)
            else:
                log.info("launch of this boot already measured (%s); not measuring again", format_value(earlier.value))
        return self._record(earlier, measured=self.tpm is not None and error is None, error=error)

    def _consistency(self, tpm: Tpm, earlier: ParsedLog) -> str | None:
        states = earlier.states()
        value = tpm.read(self.pcr)
        if value == states[-1]:
            return None
        if value == states[-2]:  # LaunchComplete was written, not extended, when the last daemon died
            tpm.extend(self.pcr, line_digest(earlier.lines[-1]))
            return None
        if self._continued_by_attestation_agent(states[-1], value):
            return None
        return (f"PCR {self.pcr} reads {format_value(value)}; the event log gives {format_value(states[-1])} "
                f"and no attestation agent log continues it")

    def _continued_by_attestation_agent(self, ours: bytes, value: bytes) -> bool:
        """The attestation agent extends the same PCR with its own AAEL log,
        whose INIT line starts from the value ours ends with."""
        try:
            init, states = aael_states(read_regular_file(self.paths.rooted(AA_EVENTLOG), MAX_LOG_BYTES + 1))
        except (OSError, ValueError):
            return False
        return init == ours and value in states[-2:]

    def _parsed(self, lines: list[str]) -> ParsedLog:
        """The lines just written, read back as a verifier reads the file (once
        per measurement: a self-check, and what the record is made of)."""
        return parse_log(("\n".join(lines) + "\n").encode(), str(self.log_path))

    def _record(self, parsed: ParsedLog, *, measured: bool, error: str | None = None) -> dict[str, Any]:
        return {
            "eventlog": str(self.log_path),
            "tpm": self.describe_tpm(),
            "pcr": self.pcr,
            "measured": measured,
            "value": format_value(parsed.value),
            "components": {e.component: e.digest for e in parsed.launched},
            "error": error,
        }
