"""TCG2 event log records, as the confidential-containers attestation agent
writes them (guest-components >= 0.15, attestation-agent/src/eventlog/tcg2.rs)
and Trustee reads them (deps/eventlog). Pure: encoding, digests, a bounded
parser and per-register replay; no file or TPM here.

One record (TCG_PCR_EVENT2, little-endian)::

    u32 register   u32 event type   u32 digest count
    count x (u16 algorithm, digest of that algorithm's size)
    u32 event size   event

The launch's records are EV_EVENT_TAG (6) with one SHA-256 digest over the
whole event, a TaggedEvent {u32 0x4141454C ("AAEL"), u32 size, text}, where
the text is "<domain> <operation> <content>". A register replays from zero:
value = H(value || digest) for each of its records' digests in bank H.

Two shapes of log are read: the records alone (the file the agent and the
daemon append to in the VM) and a whole attester log (a TCG_PCClientPCREvent
"Spec ID Event03" header giving the digest sizes, the firmware's events,
then the runtime records, then 0xFF or 0x00 padding)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from podvm_bootstrap.common.errors import EXIT_CONFIG, BootstrapError, one_line

# --- algorithms (TPM_ALG_ID), named as Trustee's claims name them ----------


@dataclass(frozen=True)
class Algorithm:
    id: int
    name: str       # Trustee's claim name: SHA-256, ...
    hashlib: str    # hashlib's name
    size: int


SHA1 = Algorithm(0x0004, "SHA-1", "sha1", 20)
SHA256 = Algorithm(0x000B, "SHA-256", "sha256", 32)
SHA384 = Algorithm(0x000C, "SHA-384", "sha384", 48)
SHA512 = Algorithm(0x000D, "SHA-512", "sha512", 64)
SM3 = Algorithm(0x0012, "SM3", "sm3", 32)
ALGORITHMS = {a.id: a for a in (SHA1, SHA256, SHA384, SHA512, SM3)}
# Listed in a Spec ID header without being a digest we can compute; Trustee
# accepts them there (and fails only on a record that uses one).
_HEADER_ONLY_IDS = {0x0001: "RSA", 0x0003: "TDES"}


def algorithm(name_or_id: str | int) -> Algorithm:
    """An algorithm by id, hashlib name or claim name (sha256, SHA-256, 0xB)."""
    for a in ALGORITHMS.values():
        if name_or_id in (a.id, a.hashlib, a.name):
            return a
    raise ValueError(f"unknown digest algorithm {name_or_id!r}")


def digest(alg: Algorithm, data: bytes) -> bytes:
    return hashlib.new(alg.hashlib, data).digest()


def extend(value: bytes, event_digest: bytes, alg: Algorithm = SHA256) -> bytes:
    """A register after one extend: H(value || digest)."""
    return digest(alg, value + event_digest)


# --- event types (the TCG PC Client names Trustee uses as type_name) --------

EV_NO_ACTION = 0x3
EV_EVENT_TAG = 0x6
EVENT_TYPES = {
    0x0: "EV_PREBOOT_CERT", 0x1: "EV_POST_CODE", 0x2: "EV_UNUSED", 0x3: "EV_NO_ACTION",
    0x4: "EV_SEPARATOR", 0x5: "EV_ACTION", 0x6: "EV_EVENT_TAG", 0x7: "EV_S_CRTM_CONTENTS",
    0x8: "EV_S_CRTM_VERSION", 0x9: "EV_CPU_MICROCODE", 0xA: "EV_PLATFORM_CONFIG_FLAGS",
    0xB: "EV_TABLE_OF_DEVICES", 0xC: "EV_COMPACT_HASH", 0xD: "EV_IPL", 0xE: "EV_IPL_PARTITION_DATA",
    0xF: "EV_NONHOST_CODE", 0x10: "EV_NONHOST_CONFIG", 0x11: "EV_NONHOST_INFO",
    0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000000: "EV_EFI_EVENT_BASE", 0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT", 0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER", 0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT", 0x80000007: "EV_EFI_ACTION", 0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES", 0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2", 0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x80000010: "EV_EFI_HCRTM_EVENT", 0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB", 0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}

# --- the AAEL tagged event ------------------------------------------------

AAEL_TAG_ID = 0x4141454C  # ASCII "AAEL", as a little-endian u32 id
DOMAIN = "github.com/confidential-containers"


def aael_text(domain: str, operation: str, content: str) -> str:
    """The text of an AAEL event, as the agent's Event displays it. The agent
    refuses a content with a line break; a space in the domain or operation
    would move the split, so neither may hold one."""
    if not domain or not operation or " " in domain or " " in operation:
        raise ValueError(f"an AAEL domain and operation are non-empty and hold no space: {domain!r} {operation!r}")
    if "\n" in content:
        raise ValueError("an AAEL content holds no line break")
    return f"{domain} {operation} {content}"


def split_aael(text: str) -> tuple[str, str, str]:
    """domain, operation, content: split at the first two spaces, as the
    agent's Event::try_from and Trustee's AaelEventEntry do (the content may
    hold spaces). ValueError when there are not two spaces."""
    first = text.find(" ")
    if first < 0:
        raise ValueError("no space in the AAEL event")
    second = text.find(" ", first + 1)
    if second < 0:
        raise ValueError("no second space in the AAEL event")
    return text[:first], text[first + 1:second], text[second + 1:]


def tagged_event(text: str) -> bytes:
    """The TaggedEvent that wraps an AAEL text: the record's event, and what its digest covers."""
    data = text.encode("utf-8")
    return struct.pack("<II", AAEL_TAG_ID, len(data)) + data


def event_digest(text: str, alg: Algorithm = SHA256) -> bytes:
    """The digest a record carries and the register is extended with."""
    return digest(alg, tagged_event(text))


def encode_record(register: int, text: str, alg: Algorithm = SHA256) -> bytes:
    """One EV_EVENT_TAG record, byte for byte the agent's Tcg2EventEntry."""
    event = tagged_event(text)
    return (struct.pack("<IIIH", register, EV_EVENT_TAG, 1, alg.id) + digest(alg, event)
            + struct.pack("<I", len(event)) + event)


def split_tagged_event(event: bytes) -> tuple[int, bytes]:
    """The tag id and the tagged data of an EV_EVENT_TAG event (bytes after
    the declared size are ignored, as Trustee does). ValueError when short."""
    if len(event) < 8:
        raise ValueError("a tagged event is shorter than its 8-byte head")
    tag, size = struct.unpack_from("<II", event)
    if size > len(event) - 8:
        raise ValueError(f"a tagged event declares {size} bytes of data, holds {len(event) - 8}")
    return tag, event[8:8 + size]


def aael_of(event_type: int, event: bytes) -> str | None:
    """The AAEL text of a record's event, or None when it is not an AAEL
    tagged event. ValueError when it claims to be one and is not UTF-8."""
    if event_type != EV_EVENT_TAG:
        return None
    try:
        tag, data = split_tagged_event(event)
    except ValueError:
        return None
    if tag != AAEL_TAG_ID:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("an AAEL tagged event is not UTF-8") from None


# --- parsing --------------------------------------------------------------

# Bounds on a log read from a file: a verifier's copy is untrusted input.
# A TDX CCEL table is typically 64 KiB to 1 MiB, padded.
MAX_LOG_BYTES = 8 * 1024 * 1024
MAX_RECORDS = 16384
MAX_DIGESTS = 8       # digests in one record (one per bank)
MAX_HEADER_ALGORITHMS = 16

SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
RETIRED_TEXT = b"INIT "


class MalformedLog(BootstrapError):
    """An event log that cannot be read; names the byte offset."""

    exit_code = EXIT_CONFIG

    def __init__(self, source: str, offset: int | None, reason: str) -> None:
        self.offset = offset
        where = f"{source}: byte {offset}: " if offset is not None else f"{source}: "
        super().__init__(where + one_line(reason))


@dataclass(frozen=True)
class Digest:
    alg: Algorithm
    value: bytes


@dataclass(frozen=True)
class Record:
    offset: int                     # where the record starts in the log
    register: int
    event_type: int
    digests: tuple[Digest, ...]
    event: bytes

    @property
    def type_name(self) -> str:
        return EVENT_TYPES[self.event_type]

    def digest(self, alg: Algorithm) -> bytes | None:
        return next((d.value for d in self.digests if d.alg == alg), None)

    @property
    def aael(self) -> str | None:
        """The AAEL text of an EV_EVENT_TAG AAEL record (None otherwise, or when not UTF-8)."""
        try:
            return aael_of(self.event_type, self.event)
        except ValueError:
            return None

    def digest_matches_event(self) -> bool:
        """Every digest is its algorithm's hash of the event (Trustee's check;
        true of the runtime records, of few firmware events)."""
        return all(digest(d.alg, self.event) == d.value for d in self.digests)


@dataclass(frozen=True)
class EventLog:
    header: tuple[Algorithm, ...] | None   # the Spec ID header's banks; None for records alone
    records: tuple[Record, ...]
    end: int                               # where the records end (padding, if any, follows)

    def registers(self) -> list[int]:
        return sorted({r.register for r in self.records})

    def bank(self, register: int) -> Algorithm:
        """The bank a register is replayed in: SHA-256 (TPM PCRs, the launch's
        records) when its records carry it, else SHA-384 (the CC MR indexes of a
        TDX log, as Trustee's TDX verifier replays them), else the first
        algorithm its records carry; for a register without records, the
        same choice among the header's banks."""
        present = [d.alg for r in self.records if r.register == register for d in r.digests]
        present = present or list(self.header or ())
        for alg in (SHA256, SHA384):
            if alg in present:
                return alg
        return present[0] if present else SHA256

    def replay(self, register: int, alg: Algorithm | None = None) -> bytes:
        return replay(self.records, register, alg or self.bank(register))


def replay(records: Iterable[Record], register: int, alg: Algorithm = SHA256) -> bytes:
    """A register's value from zero, as Trustee's replay: every digest of
    bank `alg` of every record for that register, in order (records without
    one in that bank are skipped)."""
    value = bytes(alg.size)
    for record in records:
        if record.register == register:
            for d in record.digests:
                if d.alg == alg:
                    value = extend(value, d.value, alg)
    return value


def is_whole_log(data: bytes) -> bool:
    """A whole attester log starts with the Spec ID header event: register 0,
    EV_NO_ACTION, a 20-byte SHA-1 field, a size, then the signature."""
    return (len(data) >= 48 and struct.unpack_from("<I", data, 4)[0] == EV_NO_ACTION
            and data[32:48] == SPEC_ID_SIGNATURE)


def parse_log(data: bytes, source: str = "eventlog") -> EventLog:
    """A log of either shape, bounded in size and record count, every length
    checked. Raises MalformedLog naming the byte offset of the problem."""
    if len(data) > MAX_LOG_BYTES:
        raise MalformedLog(source, None, f"larger than {MAX_LOG_BYTES} bytes")
    if data.startswith(RETIRED_TEXT):
        raise MalformedLog(source, None, "this is the retired AAEL text log (an INIT line, then text lines); "
                                         "the launch is now recorded as binary TCG2 records (EV_EVENT_TAG), "
                                         "as the attestation agent writes them since guest-components 0.15")
    if is_whole_log(data):
        header, sizes, start = _parse_header(data, source)
    else:
        header, sizes, start = None, {a.id: a.size for a in ALGORITHMS.values()}, 0
    records, end = _parse_records(data, start, sizes, source)
    return EventLog(header, tuple(records), end)


def parse_records(data: bytes, source: str = "eventlog") -> EventLog:
    """The records file as the VM keeps it: records only, no header."""
    if is_whole_log(data):
        raise MalformedLog(source, 0, "a whole attester log (Spec ID header), where the records alone were expected")
    return parse_log(data, source)


class _Reader:
    def __init__(self, data: bytes, offset: int, source: str) -> None:
        self.data, self.offset, self.source = data, offset, source

    def take(self, size: int, what: str) -> bytes:
        if size > len(self.data) - self.offset:
            raise MalformedLog(self.source, self.offset,
                               f"{what}: {size} bytes declared, {len(self.data) - self.offset} left in the log")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack("<H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.take(4, what))[0]
        return value


def _parse_header(data: bytes, source: str) -> tuple[tuple[Algorithm, ...], dict[int, int], int]:
    """The TCG_PCClientPCREvent Spec ID header: its TCG_EfiSpecIDEvent's
    algorithm list gives each bank's digest size for the records after it."""
    r = _Reader(data, 8, source)       # register and type checked by is_whole_log
    r.take(20, "the header's SHA-1 digest")
    size = r.u32("the header's event size")
    event_start = r.offset
    event = _Reader(r.take(size, "the Spec ID event"), 0, source)
    event.take(24, "the Spec ID event's signature, class and version")
    count = event.u32("the number of algorithms")
    if not 0 < count <= MAX_HEADER_ALGORITHMS:
        raise MalformedLog(source, event_start + 24, f"{count} algorithms listed (1 to {MAX_HEADER_ALGORITHMS})")
    banks: list[Algorithm] = []
    sizes: dict[int, int] = {}
    for _ in range(count):
        at = event_start + event.offset
        alg_id = event.u16("an algorithm id")
        alg_size = event.u16("an algorithm's digest size")
        alg = ALGORITHMS.get(alg_id)
        if alg is None and alg_id not in _HEADER_ONLY_IDS:
            raise MalformedLog(source, at, f"unknown algorithm 0x{alg_id:04x} in the Spec ID header")
        if alg is not None:
            if alg_size != alg.size:
                raise MalformedLog(source, at, f"{alg.name} listed with digest size {alg_size}, not {alg.size}")
            banks.append(alg)
        sizes[alg_id] = alg_size
    vendor = event.u8("the vendor info size")
    event.take(vendor, "the vendor info")
    if event.offset != size:
        raise MalformedLog(source, event_start + event.offset,
                           f"the Spec ID event is {size} bytes, its fields {event.offset}")
    return tuple(banks), sizes, r.offset


def _parse_records(data: bytes, start: int, sizes: dict[int, int], source: str) -> tuple[list[Record], int]:
    records: list[Record] = []
    r = _Reader(data, start, source)
    while r.offset < len(data):
        at = r.offset
        if len(data) - at < 8:
            raise MalformedLog(source, at, f"{len(data) - at} bytes left: not a record, not padding")
        if data[at:at + 8] in (b"\xff" * 8, bytes(8)):
            break  # the padding after the last record (Trustee's stop mark)
        if len(records) >= MAX_RECORDS:
            raise MalformedLog(source, at, f"more than {MAX_RECORDS} records")
        register = r.u32("the register")
        event_type = r.u32("the event type")
        if event_type not in EVENT_TYPES:
            raise MalformedLog(source, at + 4, f"unknown event type 0x{event_type:x}")
        count = r.u32("the digest count")
        if count > MAX_DIGESTS:
            raise MalformedLog(source, at + 8, f"{count} digests in one record (at most {MAX_DIGESTS})")
        digests = []
        for _ in range(count):
            alg_at = r.offset
            alg_id = r.u16("a digest's algorithm")
            alg = ALGORITHMS.get(alg_id)
            if alg is None or alg_id not in sizes:
                raise MalformedLog(source, alg_at, f"a digest of algorithm 0x{alg_id:04x}, "
                                                   + ("not listed in the header" if alg else "not a known hash"))
            digests.append(Digest(alg, r.take(sizes[alg_id], f"a {alg.name} digest")))
        size = r.u32("the event size")
        event = r.take(size, "the event")
        records.append(Record(at, register, event_type, tuple(digests), event))
    return records, r.offset


def aael_records(log: EventLog) -> Iterator[tuple[Record, str]]:
    """The records that are AAEL events, with their text."""
    for record in log.records:
        text = record.aael
        if text is not None:
            yield record, text
