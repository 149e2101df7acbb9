"""The TCG2 record codec (podvm_bootstrap.attest.tcg_log): records byte for byte as
the attestation agent writes them, its digest test vectors, a bounded parser
of the records file and of a whole attester log, and per-register replay."""

from __future__ import annotations

import hashlib
import struct

import pytest

from podvm_bootstrap.attest import tcg_log
from podvm_bootstrap.attest.tcg_log import (
    AAEL_TAG_ID,
    EV_EVENT_TAG,
    EV_NO_ACTION,
    MAX_LOG_BYTES,
    MAX_RECORDS,
    SHA1,
    SHA256,
    SHA384,
    SHA512,
    SM3,
    MalformedLog,
    aael_text,
    encode_record,
    event_digest,
    extend,
    parse_log,
    parse_records,
    replay,
    split_aael,
    tagged_event,
)

TEXT = 'github.com/confidential-containers LaunchComplete {"components":2}'


# --- the agent's own vectors (attestation-agent/src/eventlog/mod.rs, test_event_digest) ---

@pytest.mark.parametrize(("alg", "expected"), [
    (SHA256, "46df8dacf00a07d34a83cdf56d7978697790787cf2ba1432ef7c38f22cd96351"),
    (SHA384, "dad5f0e226318ffa9839b75a472c6aa7fdb5834949d0a0a22990cf04d5692440fb00f3aa0609db7e49cd8d793f670d02"),
    (SHA512, "b708d222ca8bd44dfe6ba0c4ca2cbb72379276fba8091025217064be45a813e5"
             "d6124ccf073219edb617d1faf007d55061465bdf34b7437dbdc9a7405bd4e9c0"),
])
def test_event_digest_agrees_with_the_attestation_agents_test_vectors(alg, expected):
    assert event_digest("domain operation content", alg).hex() == expected


def test_a_record_is_the_agents_tcg2_event_entry_byte_for_byte():
    # Built field by field after tcg2.rs: Tcg2EventEntry::to_le_bytes over a TaggedEvent.
    text = TEXT.encode()
    tagged = (0x4141454C).to_bytes(4, "little") + len(text).to_bytes(4, "little") + text
    assert tagged[:4] == b"LEAA"  # "AAEL" as a little-endian u32
    expected = (
        (23).to_bytes(4, "little") + (6).to_bytes(4, "little") + (1).to_bytes(4, "little")
        + (0x000B).to_bytes(2, "little") + hashlib.sha256(tagged).digest()
        + len(tagged).to_bytes(4, "little") + tagged
    )
    assert tagged_event(TEXT) == tagged
    assert encode_record(23, TEXT) == expected
    assert event_digest(TEXT) == hashlib.sha256(tagged).digest()


def test_extend_is_hash_of_value_then_digest():
    value, d = bytes(32), event_digest(TEXT)
    assert extend(value, d) == hashlib.sha256(value + d).digest()
    assert extend(bytes(48), d[:16] * 3, SHA384) == hashlib.sha384(bytes(48) + d[:16] * 3).digest()


def test_aael_text_is_split_at_the_first_two_spaces_like_the_agent():
    assert split_aael("domain operation some content with spaces") == \
        ("domain", "operation", "some content with spaces")
    assert split_aael("d o ") == ("d", "o", "")
    for bad in ("nospace", "one space"):
        with pytest.raises(ValueError):
            split_aael(bad)
    assert aael_text("d", "op", '{"a":1}') == 'd op {"a":1}'
    for domain, operation, content in (("d d", "op", "c"), ("d", "o p", "c"), ("d", "op", "c\nd"), ("", "op", "c")):
        with pytest.raises(ValueError):
            aael_text(domain, operation, content)


# --- the records file as the VM keeps it ----------------------------------

def records_file(texts: list[str], register: int = 23) -> bytes:
    return b"".join(encode_record(register, t) for t in texts)


def test_records_parse_back_to_their_register_type_digest_and_text():
    texts = ["d LaunchComponent {}", TEXT, "other.domain op content with spaces"]
    data = records_file(texts)
    log = parse_records(data)
    assert log.header is None and log.end == len(data)
    assert [r.register for r in log.records] == [23, 23, 23]
    assert [r.type_name for r in log.records] == ["EV_EVENT_TAG"] * 3
    assert [r.aael for r in log.records] == texts
    assert [r.digest(SHA256) for r in log.records] == [event_digest(t) for t in texts]
    assert all(r.digest_matches_event() for r in log.records)
    offsets = [r.offset for r in log.records]
    assert offsets[0] == 0 and offsets[1] == len(encode_record(23, texts[0]))


def test_replay_from_zero_per_register_as_the_extends_did():
    data = records_file(["a b 1", "a b 2"], 23) + records_file(["a b 3"], 8) + records_file(["a b 4"], 23)
    log = parse_records(data)
    pcr23 = bytes(32)
    for t in ("a b 1", "a b 2", "a b 4"):
        pcr23 = hashlib.sha256(pcr23 + event_digest(t)).digest()
    assert log.replay(23) == replay(log.records, 23) == pcr23
    assert log.replay(8) == hashlib.sha256(bytes(32) + event_digest("a b 3")).digest()
    assert log.registers() == [8, 23]
    assert log.bank(23) == SHA256
    assert replay(log.records, 5) == bytes(32)


def test_an_empty_records_file_is_no_records():
    log = parse_records(b"")
    assert log.records == () and log.registers() == []


def test_the_agents_sha384_records_replay_in_sha384():
    record = (struct.pack("<IIIH", 4, EV_EVENT_TAG, 1, SHA384.id) + event_digest("d o c", SHA384)
              + struct.pack("<I", len(tagged_event("d o c"))) + tagged_event("d o c"))
    log = parse_records(record)
    assert log.bank(4) == SHA384
    assert log.replay(4) == hashlib.sha384(bytes(48) + event_digest("d o c", SHA384)).digest()
    assert log.records[0].aael == "d o c"


# --- a whole attester log -------------------------------------------------

def spec_id_header(algorithms: list[tuple[int, int]], vendor: bytes = b"") -> bytes:
    event = (tcg_log.SPEC_ID_SIGNATURE + struct.pack("<IBBBB", 0, 0, 2, 0, 2)
             + struct.pack("<I", len(algorithms)) + b"".join(struct.pack("<HH", a, s) for a, s in algorithms)
             + bytes([len(vendor)]) + vendor)
    return struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(event)) + event


def firmware_event(register: int, event_type: int, event: bytes, algs: list[tcg_log.Algorithm],
                   measured: bytes | None = None) -> bytes:
    """A crypto-agile TCG_PCR_EVENT2 with one digest per bank (of `measured`, else of the event)."""
    body = measured if measured is not None else event
    digests = b"".join(struct.pack("<H", a.id) + hashlib.new(a.hashlib, body).digest() for a in algs)
    return struct.pack("<III", register, event_type, len(algs)) + digests + struct.pack("<I", len(event)) + event


def whole_log(padding: bytes = b"\xff" * 64) -> bytes:
    algs = [SHA1, SHA256, SHA384, SHA512, SM3]
    return (spec_id_header([(a.id, a.size) for a in algs], vendor=b"vendor")
            + firmware_event(0, 0x80000008, b"firmware blob", algs, measured=b"the blob's contents")
            + firmware_event(7, 0x4, b"\0\0\0\0", algs)
            + records_file([TEXT])
            + padding)


def test_a_whole_log_has_a_header_firmware_events_in_any_bank_our_records_and_padding():
    data = whole_log()
    log = parse_log(data)
    assert log.header == (SHA1, SHA256, SHA384, SHA512, SM3)
    assert [r.type_name for r in log.records] == ["EV_EFI_PLATFORM_FIRMWARE_BLOB", "EV_SEPARATOR", "EV_EVENT_TAG"]
    assert log.end == len(data) - 64
    blob, separator, ours = log.records
    assert not blob.digest_matches_event() and separator.digest_matches_event()
    assert blob.digest(SM3) == hashlib.new("sm3", b"the blob's contents").digest()
    assert ours.aael == TEXT
    assert log.replay(23) == hashlib.sha256(bytes(32) + event_digest(TEXT)).digest()
    assert log.replay(0, SHA384) == hashlib.sha384(bytes(48) + hashlib.sha384(b"the blob's contents").digest()).digest()
    assert log.bank(0) == SHA256


def test_zero_padding_ends_the_log_too():
    assert len(parse_log(whole_log(bytes(100))).records) == 3


def test_a_whole_log_is_not_the_records_file():
    with pytest.raises(MalformedLog, match="whole attester log"):
        parse_records(whole_log())


def test_a_record_in_a_bank_the_header_does_not_list_is_refused_with_its_offset():
    header = spec_id_header([(SHA384.id, SHA384.size)])
    data = header + records_file([TEXT])
    with pytest.raises(MalformedLog, match=f"byte {len(header) + 12}: .*0x000b, not listed in the header"):
        parse_log(data, "log")


# --- malformed and hostile input: one line, the offset, bounded -----------

def test_the_retired_text_format_is_named():
    with pytest.raises(MalformedLog, match="retired AAEL text log") as info:
        parse_log(b"INIT sha256/" + b"0" * 64 + b"\n" + TEXT.encode() + b"\n", "eventlog")
    assert "\n" not in str(info.value) and info.value.exit_code == 2


@pytest.mark.parametrize("cut", [1, 7, 12, 14, 40, 49, 53])
def test_a_truncated_record_names_where(cut):
    data = records_file([TEXT, TEXT])
    first = len(data) // 2
    with pytest.raises(MalformedLog, match=r"^eventlog: byte \d+: ") as info:
        parse_records(data[:first + cut])
    assert info.value.offset is not None and first <= info.value.offset <= first + cut


def test_an_event_size_beyond_the_data_is_refused_not_read():
    record = bytearray(encode_record(23, TEXT))
    struct.pack_into("<I", record, 46, 0xFFFFFFFF)
    with pytest.raises(MalformedLog, match="byte 50: the event: 4294967295 bytes declared"):
        parse_records(bytes(record))


def test_unknown_types_and_algorithms_and_too_many_digests_are_refused():
    record = bytearray(encode_record(23, TEXT))
    bad_type = bytearray(record)
    struct.pack_into("<I", bad_type, 4, 0x77)
    with pytest.raises(MalformedLog, match="byte 4: unknown event type 0x77"):
        parse_records(bytes(bad_type))
    bad_alg = bytearray(record)
    struct.pack_into("<H", bad_alg, 12, 0x0001)
    with pytest.raises(MalformedLog, match="byte 12: .*0x0001, not a known hash"):
        parse_records(bytes(bad_alg))
    many = bytearray(record)
    struct.pack_into("<I", many, 8, 1000)
    with pytest.raises(MalformedLog, match="byte 8: 1000 digests"):
        parse_records(bytes(many))


def test_trailing_bytes_that_are_neither_a_record_nor_padding_are_refused():
    with pytest.raises(MalformedLog, match="3 bytes left"):
        parse_records(records_file([TEXT]) + b"abc")


def test_a_header_whose_sizes_disagree_or_overrun_is_refused():
    with pytest.raises(MalformedLog, match="SHA-256 listed with digest size 20"):
        parse_log(spec_id_header([(SHA256.id, 20)]))
    with pytest.raises(MalformedLog, match="unknown algorithm 0x0099"):
        parse_log(spec_id_header([(0x99, 32)]))
    header = bytearray(spec_id_header([(SHA256.id, 32)]))
    struct.pack_into("<I", header, 28, len(header))  # event size past the end
    with pytest.raises(MalformedLog, match="byte 32: the Spec ID event"):
        parse_log(bytes(header))
    longer = bytearray(spec_id_header([(SHA256.id, 32)]) + b"\0")
    struct.pack_into("<I", longer, 28, struct.unpack_from("<I", longer, 28)[0] + 1)
    with pytest.raises(MalformedLog, match="its fields"):
        parse_log(bytes(longer))


def test_size_and_record_count_are_bounded():
    with pytest.raises(MalformedLog, match=f"larger than {MAX_LOG_BYTES} bytes"):
        parse_log(bytes(MAX_LOG_BYTES + 1))
    tiny = struct.pack("<IIII", 23, EV_EVENT_TAG, 0, 0)  # 16 bytes, no digest, empty event
    parse_records(tiny * MAX_RECORDS)
    with pytest.raises(MalformedLog, match=f"more than {MAX_RECORDS} records"):
        parse_records(tiny * (MAX_RECORDS + 1))


def test_a_tagged_event_that_is_not_aael_or_short_has_no_text():
    other = struct.pack("<II", 0x8F3B22EC, 5) + b"hello"
    short = struct.pack("<II", AAEL_TAG_ID, 50) + b"hello"
    data = b"".join(struct.pack("<IIII", 9, EV_EVENT_TAG, 0, len(e)) + e for e in (other, short))
    assert [r.aael for r in parse_records(data).records] == [None, None]
