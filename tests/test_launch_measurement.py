"""The measurement step (podvm_bootstrap.launch_measurement) against a real
software TPM (swtpm on 127.0.0.1), read back independently with tpm2-tools:
the log replays to the PCR, a restart in the same boot measures nothing
again, a crash between a line's write and its extend is completed, a failed
extend is one error with nothing started, and without a TPM the log is still
written and the launch reported unmeasured."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from podvm_bootstrap.eventlog import ZERO, init_line, launch_lines, parse_log, predict, replay
from podvm_bootstrap.imageref import parse_reference
from podvm_bootstrap.launch_measurement import MeasurementError, launch_entries, measure_launch
from podvm_bootstrap.model import Component, PlannedComponent
from podvm_bootstrap.paths import Paths
from podvm_bootstrap.settings import MeasureSettings, Settings

DIGESTS = {name: "sha256:" + hashlib.sha256(name.encode()).hexdigest()
           for name in ("attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder",
                        "api-server-rest")}
START_ORDER = (("attestation-agent",), ("confidential-data-hub", "kata-agent"), ("agent-protocol-forwarder",),
               ("api-server-rest",))


def planned(name: str, source: str = "default", digest: str | None = None) -> PlannedComponent:
    image = parse_reference(f"quay.io/confidential-containers/{name}@{digest or DIGESTS[name]}")
    return PlannedComponent(Component(name, image, f"{name}.service"), image, source)


FIVE = [planned(name) for name in DIGESTS]


class Bed:
    def __init__(self, root: Path, tpm: str, pcr: int = 23) -> None:
        self.root = root
        self.paths = Paths.build(root=str(root))
        self.settings = Settings(measure=MeasureSettings(tpm=tpm, pcr=pcr))
        self.refused: dict[str, str] = {}
        self.set_boot("boot-1")

    def set_boot(self, boot_id: str) -> None:
        f = self.root / "proc/sys/kernel/random/boot_id"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(boot_id + "\n")

    def measure(self, components=FIVE) -> dict:
        return measure_launch(self.paths, self.settings, START_ORDER, components,
                              lambda name, reason: self.refused.__setitem__(name, reason))

    @property
    def log(self) -> Path:
        return self.paths.state_dir / "eventlog"

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()


def test_log_replays_to_the_pcr_a_quote_shows_and_plan_predicted(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    record = bed.measure()
    lines = bed.lines()
    assert lines == predict(launch_entries_in_order())[0]  # fresh TPM: PCR 23 starts at zero
    assert [line.split(" ")[1] for line in lines[1:]] == ["LaunchComponent"] * 5 + ["LaunchComplete"]
    assert '"component":"confidential-data-hub"' in lines[2] and '"component":"kata-agent"' in lines[3]
    value = replay(ZERO, lines)[-1]
    assert swtpm.pcrread(23) == value
    assert swtpm.quoted_pcr(23) == value
    assert record["measured"] is True and record["value"] == "sha256:" + value.hex()
    assert record["components"] == DIGESTS and record["error"] is None and not bed.refused
    assert bed.log.stat().st_mode & 0o777 == 0o644


def launch_entries_in_order():
    from podvm_bootstrap.eventlog import launch_order

    return launch_order(launch_entries(FIVE), START_ORDER)


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
    assert swtpm.pcrread(23) == pcr_before and record["components"] == DIGESTS


def test_new_boot_starts_a_new_log_from_the_pcrs_value(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    bed.measure()
    carried = swtpm.pcrread(23)  # swtpm keeps PCR 23 (no reboot of the TPM here): INIT says so
    bed.set_boot("boot-2")
    bed.measure()
    lines = bed.lines()
    assert lines[0] == init_line(carried)
    assert swtpm.pcrread(23) == parse_log(bed.log.read_bytes()).value


def test_a_line_written_but_not_extended_is_extended_by_the_next_daemon(tmp_path, swtpm):
    """A daemon killed between a line's fsync and its extend: the log says one
    line more than the PCR; the next daemon of the boot extends it and goes on."""
    bed = Bed(tmp_path, swtpm.tcti)
    expected = launch_lines(ZERO, launch_entries_in_order())
    bed.log.parent.mkdir(parents=True)
    (bed.log.parent / "eventlog.boot_id").write_text("boot-1\n")
    bed.log.write_text("\n".join(expected[:3]) + "\n")
    for line in expected[:2]:  # the third line was written, never extended
        swtpm.extend(23, hashlib.sha256(line.encode()).hexdigest())
    record = bed.measure()
    assert bed.lines() == expected
    assert swtpm.pcrread(23) == replay(ZERO, expected)[-1]
    assert record["measured"] is True


def test_unfinished_log_of_another_launch_set_stops_the_boot(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    other = launch_lines(ZERO, launch_entries([planned("kata-agent", digest="sha256:" + "f" * 64)]))
    bed.log.parent.mkdir(parents=True)
    (bed.log.parent / "eventlog.boot_id").write_text("boot-1\n")
    bed.log.write_text(other[0] + "\n" + other[1] + "\n")
    with pytest.raises(MeasurementError, match="another launch set; nothing started"):
        bed.measure()


def test_failed_extend_is_one_error_and_the_log_says_no_less_than_the_pcr(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti, pcr=17)  # PCR 17 cannot be extended from locality 0
    with pytest.raises(MeasurementError) as info:
        bed.measure()
    message = str(info.value)
    assert "\n" not in message and "nothing started" in message and "PCR 17" in message
    assert swtpm.pcrread(17) == b"\xff" * 32  # untouched
    assert bed.lines() == [init_line(b"\xff" * 32)]  # written (durable) before the extend that failed


def test_unreachable_tpm_is_one_error_and_no_log(tmp_path):
    from tests.bed.proc import free_port

    bed = Bed(tmp_path, f"swtpm:host=127.0.0.1,port={free_port()}")
    with pytest.raises(MeasurementError, match="cannot open it"):
        bed.measure()
    assert not bed.log.exists()


@pytest.mark.parametrize("tpm", ["none", "auto"])
def test_without_a_tpm_the_log_is_written_and_the_launch_unmeasured(tmp_path, tpm):
    bed = Bed(tmp_path, tpm)  # auto: no <root>/dev/tpmrm0
    record = bed.measure()
    assert bed.lines() == predict(launch_entries_in_order())[0]
    assert record["measured"] is False and record["tpm"].startswith("none")
    record = bed.measure([*FIVE[:4], replace(FIVE[4], image=parse_reference(
        "quay.io/confidential-containers/api-server-rest@sha256:" + "d" * 64))])
    assert not bed.refused  # nothing is measured: nothing to refuse
    assert bed.lines() == predict(launch_entries_in_order())[0]  # and the boot's log is kept


def test_attestation_agent_log_continuing_ours_keeps_the_launch_confirmed(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    bed.measure()
    ours = swtpm.pcrread(23)
    aa = [init_line(ours), 'github.com/confidential-containers/attestation-agent AddImage {"x":1}']
    for line in aa:
        swtpm.extend(23, hashlib.sha256(line.encode()).hexdigest())
    aa_log = tmp_path / "run/attestation-agent/eventlog"
    aa_log.parent.mkdir(parents=True)
    aa_log.write_text("\n".join(aa) + "\n")
    assert bed.measure()["measured"] is True
    swtpm.extend(23, "ab" * 32)  # something nobody logged
    record = bed.measure()
    assert record["measured"] is False
    assert "no attestation agent log continues it" in record["error"]


def test_preloading_the_bindings_only_when_a_tpm_is_used(tmp_path, swtpm):
    from podvm_bootstrap.tpm import preload_bindings

    assert preload_bindings("none", tmp_path) is False
    assert preload_bindings("auto", tmp_path) is False      # no <root>/dev/tpmrm0
    assert preload_bindings(swtpm.tcti, tmp_path) is True
    assert preload_bindings("bogus", tmp_path) is False     # settings report it, not this


def test_a_fifo_planted_as_the_agents_log_does_not_hang_the_check(tmp_path, swtpm):
    import os

    bed = Bed(tmp_path, swtpm.tcti)
    bed.measure()
    swtpm.extend(23, "cd" * 32)
    fifo = tmp_path / "run/attestation-agent/eventlog"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    record = bed.measure()  # bounded: would block in open() on the FIFO otherwise
    assert record["measured"] is False and "no attestation agent log continues it" in record["error"]


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
    from podvm_bootstrap.tpm import preload_bindings

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

    code = ("import sys; from podvm_bootstrap.tpm import bindings; ffi, lib = bindings(); "
            "print(hasattr(lib, 'Esys_PCR_Extend'), bindings()[1] is lib, "
            "'tpm2_pytss.types' in sys.modules, 'cryptography.x509' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "False", "False"]


def test_a_pcr_out_of_range_is_a_tpm_error(swtpm):
    from podvm_bootstrap.tpm import Tpm, TpmError, parse_tpm_setting

    with Tpm(parse_tpm_setting(swtpm.tcti)) as tpm:
        with pytest.raises(TpmError, match="PCR 24"):
            tpm.read(24)
        with pytest.raises(TpmError, match="PCR 24"):
            tpm.extend(24, bytes(32))
        with pytest.raises(TpmError, match="bad locality"):   # refused by the TPM itself, decoded
            tpm.extend(17, bytes(32))
