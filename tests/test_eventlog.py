"""The launch's records as the daemon writes them (podvm_bootstrap.attest.eventlog):
AAEL texts with canonical content in start order, TCG2 records on the launch
register, the register's value from zero; and read back by the verifier's
reader (tcg_log, launch_set) to the same launch set and value."""

from __future__ import annotations

import hashlib
import struct

from podvm_bootstrap.attest.eventlog import ZERO, format_value, launch_order, launch_texts, predict
from podvm_bootstrap.attest.launch_set import LaunchedComponent, read_launch
from podvm_bootstrap.attest.tcg_log import encode_record, parse_records, replay

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
ENTRIES = [
    LaunchedComponent("attestation-agent", D1, f"quay.io/confidential-containers/attestation-agent@{D1}", "default"),
    LaunchedComponent("kata-agent", D2, f"quay.io/confidential-containers/kata-agent@{D2}", "variant"),
    LaunchedComponent("agent-protocol-forwarder", D3, f"127.0.0.1:5000/podvm/apf@{D3}", "override", "initdata"),
]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_texts_are_aael_with_canonical_content_and_requested_by_for_an_override():
    texts = launch_texts(ENTRIES)
    assert texts[0] == ('github.com/confidential-containers LaunchComponent {"component":"attestation-agent",'
                        f'"digest":"{D1}","image":"quay.io/confidential-containers/attestation-agent@{D1}",'
                        '"source":"default"}')
    assert texts[1].endswith('"source":"variant"}')
    assert texts[2].endswith('"requested_by":"initdata","source":"override"}')
    assert texts[-1] == 'github.com/confidential-containers LaunchComplete {"components":3}'


def test_records_are_the_agents_layout_on_the_launch_register():
    prediction = predict(23, ENTRIES)
    assert prediction.records == tuple(encode_record(23, t) for t in prediction.texts)
    # by hand: u32 register, u32 type 6, u32 count 1, u16 SHA-256, digest, u32 size, TaggedEvent
    text = prediction.texts[-1].encode()
    tagged = struct.pack("<II", 0x4141454C, len(text)) + text
    assert prediction.records[-1] == (struct.pack("<IIIH", 23, 6, 1, 0x000B) + sha(tagged)
                                      + struct.pack("<I", len(tagged)) + tagged)


def test_the_value_is_every_records_digest_extended_from_zero():
    prediction = predict(23, ENTRIES)
    value = ZERO
    for text in prediction.texts:
        tagged = struct.pack("<II", 0x4141454C, len(text.encode())) + text.encode()
        value = sha(value + sha(tagged))
        assert prediction.values[prediction.texts.index(text)] == value
    assert prediction.value == value
    assert format_value(value) == "sha256:" + value.hex()


def test_the_verifiers_reader_gives_back_the_launch_set_and_the_value():
    prediction = predict(16, ENTRIES)
    log = parse_records(b"".join(prediction.records))
    launch = read_launch(log, 16)
    assert launch.complete
    assert [c.content() for c in launch.components] == [e.content() for e in ENTRIES]
    assert replay(log.records, 16) == prediction.value


def test_an_empty_launch_is_launch_complete_alone():
    prediction = predict(23, [])
    assert prediction.texts == ('github.com/confidential-containers LaunchComplete {"components":0}',)
    assert read_launch(parse_records(prediction.records[0]), 23).complete


def test_order_is_start_order_then_name_within_a_layer():
    a, k, f = ENTRIES
    extra = LaunchedComponent("zz-late", D1, f"example.org/zz@{D1}", "default")
    ordered = launch_order([f, extra, k, a], [["attestation-agent"], ["kata-agent", "agent-protocol-forwarder"]])
    assert [e.component for e in ordered] == ["attestation-agent", "agent-protocol-forwarder", "kata-agent",
                                              "zz-late"]
