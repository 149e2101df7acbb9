"""The measurement step (podvm_bootstrap.attest.launch_measurement) against a real
software TPM (swtpm on 127.0.0.1), read back independently with tpm2-tools:
the records replay to the PCR, a restart in the same boot measures nothing
again, a crash between a record's write and its extend is completed, the
register must read zero before the first record, the attestation agent's
records after ours keep the launch confirmed, and without a TPM the records
are still written and the launch reported unmeasured."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from podvm_bootstrap.attest.eventlog import launch_order, predict
from podvm_bootstrap.attest.launch_measurement import MeasurementError, launch_entries, measure_launch
from podvm_bootstrap.attest.launch_set import read_launch
from podvm_bootstrap.attest.tcg_log import encode_record, event_digest, parse_records, replay
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.model import Component, PlannedComponent
from podvm_bootstrap.config.settings import MeasureSettings, Settings
from podvm_bootstrap.images.imageref import parse_reference

DIGESTS = {name: "sha256:" + hashlib.sha256(name.encode()).hexdigest()
           for name in ("attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder",
                        "api-server-rest")}
START_ORDER = (("attestation-agent",), ("confidential-data-hub", "kata-agent"), ("agent-protocol-forwarder",),
               ("api-server-rest",))
AGENT_EVENT = 'github.com/confidential-containers/attestation-agent SetPolicy {"x":1}'


def planned(name: str, source: str = "default", digest: str | None = None) -> PlannedComponent:
    image = parse_reference(f"quay.io/confidential-containers/{name}@{digest or DIGESTS[name]}")
    return PlannedComponent(Component(name, image, f"{name}.service"), image, source)


FIVE = [planned(name) for name in DIGESTS]


def prediction(pcr: int = 23):
    return predict(pcr, launch_order(launch_entries(FIVE), START_ORDER))


class Bed:
    def __init__(self, root: Path, tpm: str, pcr: int = 23) -> None:
        self.root = root
        self.paths = Paths.build(root=str(root))
        self.settings = Settings(measure=MeasureSettings(tpm=tpm, pcr=pcr, initdata_pcr=None))
        self.refused: dict[str, str] = {}
        self.recorded: dict[str, object] = {}
        self.set_boot("boot-1")

    def set_boot(self, boot_id: str) -> None:
        f = self.root / "proc/sys/kernel/random/boot_id"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(boot_id + "\n")

    def measure(self, components=FIVE) -> dict:
        return measure_launch(self.paths, self.settings, START_ORDER, components,
                              self.refuse)

    def refuse(self, name: str, reason: str, recorded: object) -> None:
        self.refused[name] = reason
        self.recorded[name] = recorded

    @property
    def log(self) -> Path:
        return self.root / "run/attestation-agent/eventlog"

    def begin(self, data: bytes) -> None:
        """A log of this boot left by an earlier daemon."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_bytes(data)
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        (self.paths.state_dir / "eventlog.boot_id").write_text("boot-1\n")


def test_records_replay_to_the_pcr_a_quote_shows_and_plan_predicted(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    record = bed.measure()
    expected = prediction()
    data = bed.log.read_bytes()
    assert data == b"".join(expected.records)   # fresh TPM: PCR 23 starts at zero
    launch = read_launch(parse_records(data), 23)
    assert launch.complete and [c.component for c in launch.components] == [
        "attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder", "api-server-rest"]
    assert replay(parse_records(data).records, 23) == expected.value
    assert swtpm.pcrread(23) == expected.value
    assert swtpm.quoted_pcr(23) == expected.value
    assert record["measured"] is True and record["value"] == "sha256:" + expected.value.hex()
    assert record["components"] == DIGESTS and record["error"] is None and not bed.refused
    assert record["eventlog"] == str(bed.log)
    assert stat.S_IMODE(bed.log.stat().st_mode) == 0o644 and stat.S_IMODE(bed.log.parent.stat().st_mode) == 0o755


def test_restart_in_the_same_boot_measures_nothing_again(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    bed.measure()
    log_before, pcr_before = bed.log.read_bytes(), swtpm.pcrread(23)
    record = bed.measure()
    assert bed.log.read_bytes() == log_before and swtpm.pcrread(23) == pcr_before
    assert record["measured"] is True and not bed.refused


def test_restart_refuses_a_component_whose_digest_the_boot_did_not_measure(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    bed.measure()
    pcr_before = swtpm.pcrread(23)
    changed = [*FIVE[:3], planned("agent-protocol-forwarder", "override", "sha256:" + "e" * 64), FIVE[4]]
    record = bed.measure(changed)
    assert list(bed.refused) == ["agent-protocol-forwarder"]
    assert "not in this boot's measured launch set" in bed.refused["agent-protocol-forwarder"]
    # with what the boot recorded for it: the caller keeps that running
    kept = bed.recorded["agent-protocol-forwarder"]
    assert (kept.digest, kept.source) == (DIGESTS["agent-protocol-forwarder"], "default")
    assert swtpm.pcrread(23) == pcr_before and record["components"] == DIGESTS


def test_a_new_boot_needs_the_register_at_zero_and_replaces_the_old_file(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    bed.measure()
    with bed.log.open("ab") as f:   # the agent's record of the old boot
        f.write(encode_record(23, AGENT_EVENT))
    bed.set_boot("boot-2")
    carried = swtpm.pcrread(23)   # swtpm keeps PCR 23 (the TPM did not reboot)
    with pytest.raises(MeasurementError, match=r"^measured launch: PCR 23 reads sha256:[0-9a-f]{64} before the "
                                               r"first record of this boot, not zero; nothing started$"):
        bed.measure()
    assert swtpm.pcrread(23) == carried
    swtpm.tool("tpm2_pcrreset", "23")   # what a reboot does
    assert bed.measure()["measured"] is True
    assert bed.log.read_bytes() == b"".join(prediction().records)
    assert swtpm.pcrread(23) == prediction().value


def test_a_record_written_but_not_extended_is_extended_by_the_next_daemon(tmp_path, swtpm):
    """A daemon killed between a record's fsync and its extend: the file says
    one record more than the PCR; the next daemon of the boot extends it and goes on."""
    bed = Bed(tmp_path, swtpm.tcti)
    expected = prediction()
    bed.begin(b"".join(expected.records[:3]))
    for text in expected.texts[:2]:  # the third record was written, never extended
        swtpm.extend(23, event_digest(text).hex())
    record = bed.measure()
    assert bed.log.read_bytes() == b"".join(expected.records)
    assert swtpm.pcrread(23) == expected.value and record["measured"] is True


def test_a_torn_record_is_cut_and_the_launch_goes_on(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    expected = prediction()
    bed.begin(b"".join(expected.records[:2]) + expected.records[2][:40])   # cut before its fsync
    for text in expected.texts[:2]:
        swtpm.extend(23, event_digest(text).hex())
    assert bed.measure()["measured"] is True
    assert bed.log.read_bytes() == b"".join(expected.records) and swtpm.pcrread(23) == expected.value


def test_launch_complete_written_but_not_extended_is_extended_on_restart(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    expected = prediction()
    bed.begin(b"".join(expected.records))
    for text in expected.texts[:-1]:
        swtpm.extend(23, event_digest(text).hex())
    assert bed.measure()["measured"] is True
    assert swtpm.pcrread(23) == expected.value


def test_unfinished_log_of_another_launch_set_stops_the_boot(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    other = predict(23, launch_entries([planned("kata-agent", digest="sha256:" + "f" * 64)]))
    bed.begin(other.records[0])
    with pytest.raises(MeasurementError, match="unfinished launch of another launch set; nothing started"):
        bed.measure()


def test_a_register_not_zero_before_the_first_record_stops_the_boot_and_writes_nothing(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti, pcr=17)  # PCRs 17-22 read all ones until a locality-4 reset
    with pytest.raises(MeasurementError) as info:
        bed.measure()
    message = str(info.value)
    assert "\n" not in message and "nothing started" in message and "PCR 17" in message
    assert swtpm.pcrread(17) == b"\xff" * 32  # untouched
    assert not bed.log.exists()


@pytest.mark.parametrize("tpm", ["none", "swtpm"])
def test_an_event_log_that_cannot_be_written_is_one_error_and_nothing_starts(tmp_path, swtpm, tpm):
    bed = Bed(tmp_path, swtpm.tcti if tpm == "swtpm" else "none")
    bed.log.parent.parent.mkdir(parents=True)
    bed.log.parent.write_text("a file where the directory goes")
    with pytest.raises(MeasurementError, match=r"^measured launch failed, nothing started: cannot write the "
                                               r"event log .*/run/attestation-agent/eventlog: "):
        bed.measure()
    assert swtpm.pcrread(23) == bytes(32)


def test_unreachable_tpm_is_one_error_and_no_log(tmp_path):
    from tests.bed.proc import free_port

    bed = Bed(tmp_path, f"swtpm:host=127.0.0.1,port={free_port()}")
    with pytest.raises(MeasurementError, match="cannot open it"):
        bed.measure()
    assert not bed.log.exists()


@pytest.mark.parametrize("tpm", ["none", "auto"])
def test_without_a_tpm_the_records_are_written_and_the_launch_unmeasured(tmp_path, tpm):
    bed = Bed(tmp_path, tpm)  # auto: no <root>/dev/tpmrm0
    record = bed.measure()
    assert bed.log.read_bytes() == b"".join(prediction().records)
    assert record["measured"] is False and record["tpm"].startswith("none")
    assert record["value"] == "sha256:" + prediction().value.hex()
    changed = [*FIVE[:4], replace(FIVE[4], image=parse_reference(
        "quay.io/confidential-containers/api-server-rest@sha256:" + "d" * 64))]
    bed.measure(changed)
    assert list(bed.refused) == ["api-server-rest"]    # the records must not lie about what runs
    assert bed.log.read_bytes() == b"".join(prediction().records)  # and the boot's log is kept


def test_the_agents_records_after_ours_keep_the_launch_confirmed(tmp_path, swtpm):
    """The agent appends its own records to the same file and extends them
    (on our register, or on its own); a restarted daemon replays them all."""
    bed = Bed(tmp_path, swtpm.tcti)
    bed.measure()
    for register in (23, 17 - 1):
        with bed.log.open("ab") as f:
            f.write(encode_record(register, AGENT_EVENT))
        swtpm.extend(register, event_digest(AGENT_EVENT).hex())
    record = bed.measure()
    assert record["measured"] is True and record["value"] == "sha256:" + prediction().value.hex()
    swtpm.extend(23, "ab" * 32)  # something nobody logged
    with pytest.raises(MeasurementError, match=r"PCR 23 reads .*; this boot's event log gives .*; nothing started"):
        bed.measure()


def test_a_record_the_agent_extended_and_has_not_written_yet_is_in_its_write_ahead_file(tmp_path, swtpm):
    """The agent extends first and writes after, keeping the register's value it
    expects in /run/attestation-agent/.wal_event_entry meanwhile (mod.rs)."""
    bed = Bed(tmp_path, swtpm.tcti)
    bed.measure()
    swtpm.extend(23, event_digest(AGENT_EVENT).hex())
    wal = bed.log.parent / ".wal_event_entry"
    expected = swtpm.pcrread(23)
    wal.write_bytes(struct.pack(">Q", bed.log.stat().st_size) + expected + AGENT_EVENT.encode())
    assert bed.measure()["measured"] is True
    wal.write_bytes(struct.pack(">Q", bed.log.stat().st_size) + bytes(32) + AGENT_EVENT.encode())
    with pytest.raises(MeasurementError):
        bed.measure()


def test_fifos_planted_as_the_log_or_the_agents_file_do_not_hang_the_step(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    bed.measure()
    swtpm.extend(23, "cd" * 32)
    os.mkfifo(bed.log.parent / ".wal_event_entry")
    with pytest.raises(MeasurementError, match="nothing started"):   # would block in open() otherwise
        bed.measure()
    bed.log.unlink()
    os.mkfifo(bed.log)
    with pytest.raises(MeasurementError, match="cannot read this boot's event log"):
        bed.measure()


def test_preloading_the_bindings_only_when_a_tpm_is_used(tmp_path, swtpm):
    from podvm_bootstrap.attest.tpm import preload_bindings

    assert preload_bindings("none", tmp_path) is False
    assert preload_bindings("auto", tmp_path) is False      # no <root>/dev/tpmrm0
    assert preload_bindings(swtpm.tcti, tmp_path) is True
    assert preload_bindings("bogus", tmp_path) is False     # settings report it, not this


def logged(caplog, fn):
    """fn()'s log messages (handler attached directly: the CLI's setup_logging
    may have turned propagation off)."""
    import logging

    logger = logging.getLogger("podvm_bootstrap")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="podvm_bootstrap"):
            fn()
    finally:
        logger.removeHandler(caplog.handler)
    return [r.getMessage() for r in caplog.records]


def test_the_step_and_the_preload_log_their_timings_as_the_benchmark_reads_them(tmp_path, swtpm, caplog):
    from bench.measure_cost import daemon_timings
    from podvm_bootstrap.attest.tpm import preload_bindings

    messages = logged(caplog, lambda: (preload_bindings(swtpm.tcti, tmp_path), Bed(tmp_path, swtpm.tcti).measure()))
    timings = daemon_timings(messages)
    assert timings["components"] == 5
    assert timings["step_s"] is not None and timings["step_s"] > 0
    assert timings["import_wait_s"] is not None and timings["open_s"] is not None
    assert timings["preload_s"] is not None
    # a daemon restarted in the same boot opens the TPM too (to check), and says so
    caplog.clear()
    again = daemon_timings(logged(caplog, lambda: Bed(tmp_path, swtpm.tcti).measure()))
    assert again["components"] == 5 and again["open_s"] is not None and again["preload_s"] is None


def test_without_a_tpm_the_step_logs_its_timing_and_no_tpm(tmp_path, caplog):
    from bench.measure_cost import daemon_timings

    timings = daemon_timings(logged(caplog, lambda: Bed(tmp_path, "none").measure()))
    assert timings["components"] == 5 and timings["step_s"] is not None
    assert timings["import_wait_s"] is None and timings["open_s"] is None and timings["preload_s"] is None


def test_the_bindings_load_without_tpm2_pytss_python_layer():
    # That layer (its types import cryptography's x509) cost 50-90 ms of CPU
    # at every daemon start, held the GIL against start-up, and is not needed.
    import subprocess
    import sys

    code = ("import sys; from podvm_bootstrap.attest.tpm import bindings; ffi, lib = bindings(); "
            "print(hasattr(lib, 'Esys_PCR_Extend'), bindings()[1] is lib, "
            "'tpm2_pytss.types' in sys.modules, 'cryptography.x509' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "False", "False"]


def test_a_pcr_out_of_range_is_a_tpm_error(swtpm):
    from podvm_bootstrap.attest.tpm import Tpm, TpmError
    from podvm_bootstrap.config.settings import parse_tpm_setting

    with Tpm(parse_tpm_setting(swtpm.tcti)) as tpm:
        with pytest.raises(TpmError, match="PCR 24"):
            tpm.read(24)
        with pytest.raises(TpmError, match="PCR 24"):
            tpm.extend(24, bytes(32))
        with pytest.raises(TpmError, match="bad locality"):   # refused by the TPM itself, decoded
            tpm.extend(17, bytes(32))
