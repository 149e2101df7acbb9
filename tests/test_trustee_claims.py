"""Trustee's own event logs and claims (tests/fixtures/upstream/trustee-eventlog,
from deps/eventlog/test_data) read by podvm_bootstrap.attest.tcg_log and
trustee_claims: the same events, digests, register values and, byte for
byte, the same `uefi_event_logs` claims; and Trustee's per-parser unit
vectors (deps/eventlog/src/ccel/*.rs tests)."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

import pytest

from podvm_bootstrap.attest.tcg_log import SHA256, SHA384, SM3, MalformedLog, encode_record, parse_log, parse_records
from podvm_bootstrap.attest.trustee_claims import claims, claims_json, entry

FIXTURES = Path(__file__).parent / "fixtures" / "upstream" / "trustee-eventlog"
LOGS = ["CCEL_AAEL_alibabacloud", "CCEL_data_ovmf", "CCEL_data_grub_gke", "CCEL_data_csv"]


def load(name: str):
    return parse_log((FIXTURES / name).read_bytes(), name)


@pytest.mark.parametrize("name", LOGS)
def test_the_claims_are_trustees_byte_for_byte(name):
    expected = (FIXTURES / f"{name}_out.json").read_text()
    assert claims_json(claims(load(name), name)) == expected


@pytest.mark.parametrize("name", LOGS)
def test_events_and_digests_are_trustees(name):
    expected = json.loads((FIXTURES / f"{name}_out.json").read_text())["uefi_event_logs"]
    log = load(name)
    assert len(log.records) == len(expected)
    for record, claim in zip(log.records, expected, strict=True):
        assert (record.register, record.type_name) == (claim["index"], claim["type_name"])
        assert [(d.alg.name, d.value.hex()) for d in record.digests] == \
            [(d["alg"], d["digest"]) for d in claim["digests"]]
        assert base64.b64encode(record.event).decode() == claim["event"]
        assert record.digest_matches_event() == claim["digest_matches_event"]


# Trustee's test_rtmr_integrity: CC MR indexes 1..4 (RTMR0..3), SHA-384.
@pytest.mark.parametrize(("name", "rtmrs"), [
    ("CCEL_data_ovmf", [
        "8566f998798db09443b244c62de9a3041fb02e2e6936c4396d784bba2e90177329ec5aba3bb484404f2ab9cc90abe193",
        "775b9f6bfe99f8a31396f0d0218e67ffa796d3b96ccf961cbb0deba48c79c00f082cda1a5567c1c16305f1fc210c13c6",
        "94eaf7a7bf398ed8d888c91057ae0261802e4f3df084213a76ca7f0b5055ac9d2241de43cd58d9e8b49c503bbf25f34a",
        "0" * 96]),
    ("CCEL_data_grub_gke", [
        "bc9945139042cf2cc75caf920aa57f14884ecfd7e893bccc51250c8ce90eb53ce72741e6adaa18183eb1331a87d4544a",
        "c17cb288a4dee302bb9ed8d27257a168f3264ad68cab53757f37eeaa7039657fa887cad65cf910e0fdc435ff110f8a7b",
        "334aeba2c985f8886cea97d1ecffbd512769d528b9a94009583db667ad7d2faa7d37fa145d75b192ceee2d2f10b2eb6d",
        "0" * 96]),
])
def test_registers_replay_to_trustees_rtmr_values(name, rtmrs):
    log = load(name)
    assert [log.replay(index).hex() for index in (1, 2, 3, 4)] == rtmrs
    assert all(log.bank(index) == SHA384 for index in (1, 2, 3))


def test_a_tdx_log_with_aael_records_replays_rtmr3_from_them():
    log = load("CCEL_AAEL_alibabacloud")
    assert log.header == (SHA384,)
    tagged = [r for r in log.records if r.register == 4]
    assert [r.aael for r in tagged] == [
        "coco.com some-operation some-content",
        'coco.com some-operation {"key": "value", "nested-key": {"sub-key": "value"}}',
    ]
    value = bytes(48)
    for record in tagged:
        assert record.digest(SHA384) == hashlib.sha384(record.event).digest()
        value = hashlib.sha384(value + record.digest(SHA384)).digest()
    assert log.replay(4) == value and log.bank(4) == SHA384
    details = [entry(r)["details"] for r in tagged]
    assert details[1]["data"] == {"domain": "coco.com", "operation": "some-operation",
                                  "content": {"key": "value", "nested-key": {"sub-key": "value"}}}
    assert details[0]["data"]["content"] == "some-content" and details[0]["unicode_name"] == "AAEL"


def test_sm3_bank_digests_are_compared():
    log = load("CCEL_data_csv")
    assert log.header == (SM3,)
    matching = [r for r in log.records if r.digest_matches_event()]
    assert matching and all(r.digest(SM3) == hashlib.new("sm3", r.event).digest() for r in matching)


# --- our own records in Trustee's claim shape ------------------------------

def test_our_launch_record_as_trustee_claims_it():
    text = 'github.com/confidential-containers LaunchComplete {"components":2}'
    log = parse_records(encode_record(23, text))
    (claim,) = claims(log)["uefi_event_logs"]
    assert claim == {
        "details": {"data": {"content": {"components": 2}, "domain": "github.com/confidential-containers",
                             "operation": "LaunchComplete"},
                    "string": text, "unicode_name": "AAEL"},
        "digest_matches_event": True,
        "digests": [{"alg": "SHA-256", "digest": log.records[0].digest(SHA256).hex()}],
        "event": base64.b64encode(log.records[0].event).decode(),
        "index": 23,
        "type_name": "EV_EVENT_TAG",
    }


def test_a_tampered_digest_is_claimed_as_not_matching():
    record = bytearray(encode_record(23, "d o c"))
    record[20] ^= 0xFF
    assert claims(parse_records(bytes(record)))["uefi_event_logs"][0]["digest_matches_event"] is False


def test_content_that_is_not_json_stays_text_as_in_serde_json():
    contents = {"NaN": "NaN", "{": "{", "1 2": "1 2", "[1]": [1], "18446744073709551616": 18446744073709551616.0}
    data = b"".join(encode_record(23, f"d o {c}") for c in contents)
    got = [e["details"]["data"]["content"] for e in claims(parse_records(data))["uefi_event_logs"]]
    assert got == list(contents.values())


# --- Trustee's parser unit vectors (ccel/*.rs #[cfg(test)]) ---------------

def record_of(event_type: int, event_hex: str) -> bytes:
    event = bytes.fromhex(event_hex)
    return struct.pack("<IIII", 1, event_type, 0, len(event)) + event


def details_of(event_type: int, event_hex: str):
    return claims(parse_records(record_of(event_type, event_hex)))["uefi_event_logs"][0]["details"]


@pytest.mark.parametrize(("event_type", "event_hex", "expected"), [
    # event_tag.rs
    (0x6, "ed223b8f1a0000004c4f414445445f494d4147453a3a4c6f61644f7074696f6e7300", "LOADED_IMAGE::LoadOptions"),
    (0x6, "ec223b8f0d0000004c696e757820696e6974726400", "Linux initrd"),
    # simple.rs
    (0x1, "73616d706c6520746573742064617461", "sample test data"),
    (0x80000007, "43616c6c696e6720454649204170706c69636174696f6e2066726f6d20426f6f74204f7074696f6e",
     "Calling EFI Application from Boot Option"),
    (0x1, "0F", "\x0f"),
    # simple_string.rs
    (0x8000000B, "095464785461626c65000100000000000000af96bb93f2b9b84e9462e0ba745642360090800000000000", "TdxTable"),
    (0x8000000B, "0b74645f7061796c6f61640000109000000000000000001000000000", "td_payload"),
    (0x8000000A, "2946762834384442354531372d373037432d343732442d393143442d31363133453745463531423029000000e0ff"
                 "000000000000020000000000", "Fv(48DB5E17-707C-472D-91CD-1613E7EF51B0)"),
])
def test_trustees_parser_vectors_give_its_strings(event_type, event_hex, expected):
    assert details_of(event_type, event_hex) == {"string": expected}


@pytest.mark.parametrize(("event_type", "event_hex"), [
    (0x6, "0F"),                                                          # event_tag: no event id
    (0x6, "0F74645f7061796c6f61640000109000000000000000001000000000"),    # event_tag: size beyond
    (0x8000000B, "0F"),                                                   # simple_string: too short
    (0x8000000B, "0F74645f7061796c6f61640000109000000000000000001000000000"),  # not UTF-8
    (0x8000000B, "3774645f7061796c6f61640000109000000000000000001000000000"),  # too short
])
def test_events_trustee_refuses_make_the_log_malformed(event_type, event_hex):
    with pytest.raises(MalformedLog, match="byte 0: .*Trustee's verifier cannot read this event"):
        details_of(event_type, event_hex)


def test_an_aael_event_that_does_not_split_is_refused_like_trustee():
    with pytest.raises(MalformedLog, match="EV_EVENT_TAG: .*no second space"):
        claims(parse_records(encode_record(23, "one space")))
