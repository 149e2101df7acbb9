"""`podvm-bootstrap measurements` through the real command line: the records
file as the VM keeps it and a whole attester log (Trustee's own test log
among them), replay of every register, --expect-pcr, --json in Trustee's
claim shape, and hostile input: one line, the exit code the contract gives."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from podvm_bootstrap.attest.jcs import canonical_json
from podvm_bootstrap.attest.tcg_log import (
    DOMAIN,
    EV_NO_ACTION,
    SHA256,
    SHA384,
    SPEC_ID_SIGNATURE,
    encode_record,
    event_digest,
)
from podvm_bootstrap.attest.trustee_claims import claims, claims_json
from tests.test_trustee_claims import FIXTURES

REPO = Path(__file__).resolve().parent.parent
D = {c: "sha256:" + hashlib.sha256(c.encode()).hexdigest() for c in ("aa", "ka")}
LAUNCH = [
    {"component": "aa", "digest": D["aa"], "image": f"quay.io/x/aa@{D['aa']}", "source": "default"},
    {"component": "ka", "digest": D["ka"], "image": f"127.0.0.1:5000/x/ka@{D['ka']}", "requested_by": "initdata",
     "source": "override"},
]
TEXTS = ([f"{DOMAIN} LaunchComponent {canonical_json(c)}" for c in LAUNCH]
         + [f'{DOMAIN} LaunchComplete {{"components":{len(LAUNCH)}}}'])
AGENT = "github.com/confidential-containers/guest-components CreateContainer {\"container\": \"a b\"}"


def replayed(texts: list[str]) -> bytes:
    value = bytes(32)
    for text in texts:
        value = hashlib.sha256(value + event_digest(text)).digest()
    return value


VALUE = replayed(TEXTS)


def cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "podvm_bootstrap", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def records(texts: list[str], register: int = 23) -> bytes:
    return b"".join(encode_record(register, t) for t in texts)


def write(tmp_path: Path, data: bytes, name: str = "eventlog") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_the_records_file_replays_and_compares(tmp_path):
    log = write(tmp_path, records(TEXTS + [AGENT]))
    with_agent = replayed(TEXTS + [AGENT])
    ok = cli("measurements", "--log", str(log), "--expect-pcr", with_agent.hex().upper())
    assert ok.returncode == 0, ok.stderr
    assert "launch on register 23: 2 components, complete" in ok.stdout
    assert f"ka  override (initdata)  127.0.0.1:5000/x/ka@{D['ka']}" in ok.stdout
    assert f"23  sha256:{with_agent.hex()}" in ok.stdout
    assert all(text in ok.stdout for text in TEXTS) and AGENT in ok.stdout
    bad = cli("measurements", "--log", str(log), "--expect-pcr", "23=sha256:" + "0" * 64)
    assert bad.returncode == 1
    assert bad.stderr == (f"podvm-bootstrap: error: register 23: the replay gives sha256:{with_agent.hex()}, "
                          f"expected sha256:{'0' * 64}\n")


def test_every_expected_register_must_match(tmp_path):
    log = write(tmp_path, records(TEXTS) + records(["a b c"], register=9))
    nine = replayed(["a b c"])
    assert cli("measurements", "--log", str(log), "--expect-pcr", VALUE.hex(),
               "--expect-pcr", f"9={nine.hex()}").returncode == 0
    out = cli("measurements", "--log", str(log), "--expect-pcr", VALUE.hex(), "--expect-pcr", f"9={VALUE.hex()}")
    assert out.returncode == 1 and out.stderr.startswith("podvm-bootstrap: error: register 9: the replay gives")
    # a register without records replays to zero
    assert cli("measurements", "--log", str(log), "--expect-pcr", f"8={'0' * 64}").returncode == 0


def test_json_is_trustees_claim_shape_with_registers_and_the_launch(tmp_path):
    data = records(TEXTS)
    out = cli("measurements", "--log", str(write(tmp_path, data)), "--json", "--expect-pcr", VALUE.hex())
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    from podvm_bootstrap.attest.tcg_log import parse_records
    assert doc["uefi_event_logs"] == claims(parse_records(data))["uefi_event_logs"]
    first = doc["uefi_event_logs"][0]
    assert first["details"]["data"] == {"domain": DOMAIN, "operation": "LaunchComponent", "content": LAUNCH[0]}
    assert first["digest_matches_event"] is True and first["digests"][0]["alg"] == "SHA-256"
    assert doc["registers"] == [{"index": 23, "alg": "SHA-256", "value": VALUE.hex()}]
    assert doc["launch"] == {"register": 23, "complete": True, "components": LAUNCH}
    assert doc["expected"] == [{"index": 23, "alg": "SHA-256", "value": VALUE.hex(), "replayed": VALUE.hex(),
                                "match": True}]
    assert doc["ok"] is True and doc["format"] == "records"


def whole_log() -> bytes:
    """Header (SHA-256 and SHA-384 banks), a firmware event, our records, padding."""
    algs = [(SHA256.id, 32), (SHA384.id, 48)]
    spec = (SPEC_ID_SIGNATURE + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algs))
            + b"".join(struct.pack("<HH", a, s) for a, s in algs) + b"\0")
    header = struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec
    action = b"Calling EFI Application from Boot Option"
    firmware = (struct.pack("<III", 4, 0x80000007, 2)
                + struct.pack("<H", SHA256.id) + hashlib.sha256(action).digest()
                + struct.pack("<H", SHA384.id) + hashlib.sha384(action).digest()
                + struct.pack("<I", len(action)) + action)
    return header + firmware + records(TEXTS) + b"\xff" * 4096


def test_a_whole_attester_log_replays_the_firmware_registers_and_ours(tmp_path):
    log = write(tmp_path, whole_log())
    pcr4 = hashlib.sha256(bytes(32) + hashlib.sha256(b"Calling EFI Application from Boot Option").digest())
    out = cli("measurements", "--log", str(log), "--expect-pcr", VALUE.hex(), "--expect-pcr", f"4={pcr4.hexdigest()}")
    assert out.returncode == 0, out.stderr
    assert "attester log (Spec ID header: SHA-256, SHA-384), 4 events" in out.stdout
    assert "EV_EFI_ACTION  Calling EFI Application from Boot Option" in out.stdout
    pcr4_384 = hashlib.sha384(bytes(48) + hashlib.sha384(b"Calling EFI Application from Boot Option").digest())
    assert cli("measurements", "--log", str(log), "--expect-pcr", VALUE.hex(),
               "--expect-pcr", f"4=sha384:{pcr4_384.hexdigest()}").returncode == 0


def test_trustees_tdx_log_gives_trustees_claims_and_rtmrs_and_no_launch(tmp_path):
    name = "CCEL_AAEL_alibabacloud"
    out = cli("measurements", "--log", str(FIXTURES / name), "--json")
    assert out.returncode == 1  # no launch of ours in it
    doc = json.loads(out.stdout)
    assert claims_json({"uefi_event_logs": doc["uefi_event_logs"]}) == (FIXTURES / f"{name}_out.json").read_text()
    assert {r["index"]: r["alg"] for r in doc["registers"]} == {1: "SHA-384", 2: "SHA-384", 3: "SHA-384",
                                                               4: "SHA-384", 23: "SHA-384"}
    assert "the launch is incomplete (no LaunchComplete on register 23)" in out.stderr
    rtmr0 = "8566f998798db09443b244c62de9a3041fb02e2e6936c4396d784bba2e90177329ec5aba3bb484404f2ab9cc90abe193"
    ovmf = cli("measurements", "--log", str(FIXTURES / "CCEL_data_ovmf"), "--expect-pcr", f"1={rtmr0}")
    assert "MISMATCH" not in ovmf.stdout and "register 1" not in ovmf.stderr
    wrong = cli("measurements", "--log", str(FIXTURES / "CCEL_data_ovmf"), "--expect-pcr", f"1={'0' * 96}")
    assert f"register 1: the replay gives sha384:{rtmr0}" in wrong.stderr


def test_an_incomplete_launch_fails_even_without_an_expected_value(tmp_path):
    out = cli("measurements", "--log", str(write(tmp_path, records(TEXTS[:-1]))))
    assert out.returncode == 1
    assert out.stderr.strip().endswith("the launch is incomplete (no LaunchComplete on register 23)")
    assert "2 components, INCOMPLETE (no LaunchComplete)" in out.stdout


def test_the_retired_text_log_is_named(tmp_path):
    log = write(tmp_path, ("INIT sha256/" + "0" * 64 + "\n" + TEXTS[-1] + "\n").encode())
    out = cli("measurements", "--log", str(log))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"podvm-bootstrap: error: {log}: this is the retired AAEL text log")


def test_a_malformed_log_exits_2_naming_the_byte(tmp_path):
    data = records(TEXTS)
    cut = write(tmp_path, data[:-5])
    out = cli("measurements", "--log", str(cut))
    second_last = len(records(TEXTS[:-1]))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"podvm-bootstrap: error: {cut}: byte {second_last + 50}: the event: ")
    out = cli("measurements", "--log", str(cut), "--json")
    assert out.returncode == 2 and json.loads(out.stdout)["offset"] == second_last + 50


def test_a_launch_record_whose_digest_is_not_its_event_is_malformed(tmp_path):
    data = bytearray(records(TEXTS))
    data[30] ^= 1
    out = cli("measurements", "--log", str(write(tmp_path, bytes(data))))
    assert out.returncode == 2
    assert "byte 0: the LaunchComponent record's digest is not its event's" in out.stderr


def test_garbage_and_hostile_sizes_are_one_line(tmp_path):
    for name, data in (("random", os.urandom(4096)), ("huge-size", struct.pack("<IIII", 23, 6, 0, 2**32 - 1)),
                       ("many-digests", struct.pack("<III", 23, 6, 2**32 - 1) + bytes(64))):
        out = cli("measurements", "--log", str(write(tmp_path, data, name)))
        assert out.returncode == 2, (name, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_missing_log_fifo_and_bad_expected_values(tmp_path):
    out = cli("measurements", "--log", str(tmp_path / "nope"))
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "cannot read the event log" in out.stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = cli("measurements", "--log", str(fifo))  # would block forever on a plain open()
    assert out.returncode == 1 and "not a regular file" in out.stderr
    log = str(write(tmp_path, records(TEXTS)))
    for bad in ("xyz", "23=", "sha999:" + "0" * 64, "sha384:" + "0" * 64, "0" * 63, "0" * 30, "99999999999=00"):
        out = cli("measurements", "--log", log, "--expect-pcr", bad)
        assert out.returncode == 2 and "--expect-pcr" in out.stderr and "Traceback" not in out.stderr, bad


def test_the_default_log_is_measure_eventlog_under_the_root(tmp_path):
    aa = tmp_path / "run/attestation-agent"
    aa.mkdir(parents=True)
    write(aa, records(TEXTS))
    out = cli("--root", str(tmp_path), "measurements", "--expect-pcr", VALUE.hex())
    assert out.returncode == 0, out.stderr
    config = tmp_path / "etc/podvm-bootstrap"
    config.mkdir(parents=True)
    write(tmp_path, records(TEXTS, register=16), "elsewhere")
    (config / "bootstrap.yaml").write_text(f"measure:\n  pcr: 16\n  eventlog: {tmp_path / 'elsewhere'}\n")
    out = cli("--config-dir", str(config), "measurements", "--expect-pcr", VALUE.hex())
    assert out.returncode == 0, out.stderr
    assert "launch on register 16: 2 components, complete" in out.stdout


@pytest.mark.parametrize("value", ["relative/eventlog", "''"])
def test_a_relative_eventlog_setting_exits_2_naming_the_key(tmp_path, value):
    bootstrap = tmp_path / "bootstrap.yaml"
    bootstrap.write_text(f"measure:\n  eventlog: {value}\n")
    out = cli("--config-dir", str(tmp_path), "measurements")
    assert out.returncode == 2 and out.stderr.startswith(f"podvm-bootstrap: error: {bootstrap}: measure.eventlog: ")
