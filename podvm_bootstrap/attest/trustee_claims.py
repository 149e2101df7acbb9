"""An event log as the claims Trustee hands an attestation policy: the
`uefi_event_logs` entries of its deps/eventlog crate (CcEventLog), field for
field, so that `measurements --json` shows a relying party exactly what its
policy will read. Pure.

Each entry: `index`, `type_name`, `digests` [{`alg`, `digest` (hex)}],
`event` (base64 of the event data), `digest_matches_event` (every digest is
its algorithm's hash of the event data) and `details`, which Trustee's
per-type parsers fill (ccel/*.rs): `string` for text events, the EFI
variable fields, `device_paths` for a loaded image, and for an AAEL tagged
event `string`, `unicode_name` "AAEL" and `data` {`domain`, `operation`,
`content`: the content as JSON when it parses, else the text}.

Where Trustee's parser fails on an event (the verifier then refuses the
whole log), so does this, naming the record. One deliberate difference:
Trustee cannot compute a SHA-1 digest and fails on any log with a SHA-1
bank; here SHA-1 digests are compared like the others."""

from __future__ import annotations

import base64
import json
import struct
import unicodedata
from typing import Any

from podvm_bootstrap.attest.tcg_log import AAEL_TAG_ID, EventLog, MalformedLog, Record, split_aael, split_tagged_event

_MAX_DEVICE_PATH_NODES = 256


class _Unreadable(ValueError):
    """An event Trustee's parser for its type refuses."""


def claims(log: EventLog, source: str = "eventlog") -> dict[str, Any]:
    """{"uefi_event_logs": [...]}: the claim Trustee derives from the log."""
    return {"uefi_event_logs": [entry(record, source) for record in log.records]}


def claims_json(value: Any) -> str:
    """JSON text as Trustee's serde_json gives it: a Value's object keys
    sorted, non-ASCII characters as themselves (pretty, two spaces)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def entry(record: Record, source: str = "eventlog") -> dict[str, Any]:
    try:
        details = _details(record)
    except (_Unreadable, UnicodeDecodeError, struct.error) as exc:
        raise MalformedLog(source, record.offset,
                           f"{record.type_name}: Trustee's verifier cannot read this event: {exc}") from None
    return {
        "details": details,
        "digest_matches_event": record.digest_matches_event(),
        "digests": [{"alg": d.alg.name, "digest": d.value.hex()} for d in record.digests],
        "event": base64.b64encode(record.event).decode("ascii"),
        "index": record.register,
        "type_name": record.type_name,
    }


def _details(record: Record) -> dict[str, Any]:
    data = record.event
    parser = _PARSERS.get(record.type_name)
    return parser(data) if parser else {}


# --- Trustee's per-type parsers (deps/eventlog/src/ccel) ------------------

def _simple(data: bytes) -> dict[str, Any]:
    """EvSimpleParser: the event as UTF-8 text."""
    return {"string": data.decode("utf-8")}


def _event_tag(data: bytes) -> dict[str, Any]:
    """EvEventTagParser: TCG_PCClientTaggedEvent; AAEL tagged events split."""
    try:
        tag, tagged = split_tagged_event(data)
    except ValueError as exc:
        raise _Unreadable(str(exc)) from None
    details: dict[str, Any] = {"string": tagged.decode("utf-8", "replace").replace("\0", "")}
    if tag == AAEL_TAG_ID:
        text = tagged.decode("utf-8")
        try:
            domain, operation, content = split_aael(text)
        except ValueError as exc:
            raise _Unreadable(str(exc)) from None
        details["data"] = {"content": _json_or_text(content), "domain": domain, "operation": operation}
        details["unicode_name"] = "AAEL"
    return details


def _json_or_text(text: str) -> Any:
    """serde_json::from_str, else the text as a JSON string (NaN and
    Infinity are not JSON there; integers beyond 64 bits become floats)."""
    try:
        return _fit_numbers(json.loads(text, parse_constant=_not_json))
    except (ValueError, RecursionError):
        return text


def _not_json(name: str) -> None:
    raise ValueError(name)


def _fit_numbers(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -2**63 <= value < 2**64:
        return float(value)
    if isinstance(value, list):
        return [_fit_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _fit_numbers(v) for k, v in value.items()}
    return value


def _efi_variable(data: bytes) -> dict[str, Any]:
    """EvEfiVariableParser: UEFI_VARIABLE_DATA."""
    if len(data) < 32:
        raise _Unreadable("shorter than a UEFI_VARIABLE_DATA head")
    guid = data[:16]
    name_length, data_length = struct.unpack_from("<QQ", data, 16)
    name_end = 32 + 2 * name_length
    if name_end > len(data):
        raise _Unreadable("Out of bounds while reading description bytes")
    name = data[32:name_end].decode("utf-16-le")
    if data_length and name_end + data_length > len(data):
        raise _Unreadable("Out of bounds while reading variable_data")
    variable = base64.b64encode(data[name_end:name_end + data_length]).decode("ascii") if data_length else ""
    return {"unicode_name": name, "unicode_name_length": name_length, "variable_data": variable,
            "variable_data_length": data_length,
            "variable_name": "-".join(guid[a:b].hex() for a, b in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 16)))}


def _simple_string(data: bytes) -> dict[str, Any]:
    """SimpleStringParser (EV_EFI_PLATFORM_FIRMWARE_BLOB2, EV_EFI_HANDOFF_TABLES2).
    Trustee reads bytes 1 up to the size byte's value, so the description's
    last byte (its NUL) is left out."""
    if not data:
        raise _Unreadable("Data is too short: expected at least 1 byte")
    end = data[0]
    if end == 0:
        raise _Unreadable("a zero description size")
    if len(data) < end:
        raise _Unreadable(f"Data is too short: expected at least {end} bytes")
    return {"string": data[1:end].decode("utf-8")}


def _ipl(data: bytes) -> dict[str, Any]:
    """EvIplParser: Google's UTF-16 form (prefix 2e00), else text up to the first NUL, else hex."""
    if len(data) < 2:
        raise _Unreadable("Data is too short: expected at least 2 bytes")
    if data[:2] == b"\x2e\x00":
        rest = len(data) - 2
        if rest == 0 or rest % 2:
            raise _Unreadable("Data is too short or not UTF-16 string")
        return {"string": data[2:rest].decode("utf-16-le", "replace")}
    cut = data.find(b"\0")
    try:
        return {"string": data[:cut if cut >= 0 else len(data)].decode("utf-8")}
    except UnicodeDecodeError:
        return {"string": data.hex()}


def _platform_config_flags(data: bytes) -> dict[str, Any]:
    """EvPlatformConfigFlagsParser: UTF-8 (else empty), 0x10 as a space, control characters dropped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    text = text.replace("\x10", " ")
    return {"string": "".join(c for c in text if unicodedata.category(c) != "Cc")}


def _boot_services_application(data: bytes) -> dict[str, Any]:
    """EvBootServicesAppParser: UEFI_IMAGE_LOAD_EVENT's device path nodes."""
    if len(data) < 32:
        raise _Unreadable("Data is too short: expected at least 32 bytes")
    (path_length,) = struct.unpack_from("<Q", data, 24)
    if path_length == 0:
        return {}
    if path_length < 4:
        raise _Unreadable("a device path shorter than its end node")
    end = 32 + path_length - 4  # Trustee leaves out the end node's 4 bytes
    if len(data) < end:
        raise _Unreadable("Data is shorter than claimed by dev_path_offset")
    nodes = data[32:end]
    if len(nodes) < 4:
        raise _Unreadable("Remaining device path is shorter than 4 bytes")
    paths: list[str] = []
    while nodes:
        if len(nodes) < 4 or len(paths) >= _MAX_DEVICE_PATH_NODES:
            raise _Unreadable("a device path node shorter than its 4-byte head, or too many nodes")
        node_type, sub_type, length = struct.unpack_from("<BBH", nodes)
        if length < 4 or len(nodes) < length:
            raise _Unreadable(f"Data is too short: expected at least {length} bytes")
        paths.append(_device_path(node_type, sub_type, nodes[4:length]))
        nodes = nodes[length:]
    return {"device_paths": paths}


def _device_path(node_type: int, sub_type: int, data: bytes) -> str:
    """One node as Trustee prints it; Path(type,subtype,hex) for the kinds it has no parser for."""
    parser = _NODE_PARSERS.get((node_type, sub_type))
    if parser is not None:
        try:
            return parser(data)
        except (_Unreadable, UnicodeDecodeError, struct.error, IndexError):
            pass
    return f"Path({node_type},{sub_type},{data.hex()})"


def _uefi_guid(b: bytes) -> str:
    d1, d2, d3 = struct.unpack_from("<IHH", b)
    return f"{d1:08X}-{d2:04X}-{d3:04X}-{b[8]:02X}{b[9]:02X}-{b[10:16].hex().upper()}"


def _pci(data: bytes) -> str:
    if len(data) < 2:
        raise _Unreadable("PCI data is too short")
    return f"Pci({data[0]},{data[1]})"


def _acpi(data: bytes) -> str:
    if len(data) < 8:
        raise _Unreadable("ACPI sub type data length must be at least 8 bytes")
    hid, uid = struct.unpack_from("<II", data)
    vendor = hid & 0xFFFF
    letters = "".join(chr(((vendor >> shift) & 0x1F) + 0x40) for shift in (10, 5, 0))
    return f"ACPI({letters}{hid >> 16:04X},{uid})"


def _hard_drive(data: bytes) -> str:
    if len(data) < 37:
        raise _Unreadable("Hard drive data is too short")
    number, start, size = struct.unpack_from("<IQQ", data)
    signature, partition_format = data[20:36], data[36]
    if partition_format == 1:
        prefix, sig = "MBR", f"{struct.unpack_from('<I', signature)[0]:#010x}"
    elif partition_format == 2:
        prefix, sig = "GPT", _uefi_guid(signature)
    else:
        raise _Unreadable(f"Unknown partition format {partition_format}")
    extent = f",{start:#x},{size:#x}" if number != 0 else ""
    return f"HD({number},{prefix},{sig}{extent})"


def _media_vendor(data: bytes) -> str:
    if len(data) < 16:
        raise _Unreadable("Vendor media data is too short")
    return f"VenMedia({_uefi_guid(data)},{data[16:].hex()})"


def _file_path(data: bytes) -> str:
    if not data or len(data) % 2:
        raise _Unreadable("File path is too short")
    return f"File({data[:-2].decode('utf-16-le', 'replace')})"


def _fibre_channel_ex(data: bytes) -> str:
    if len(data) < 16:
        raise _Unreadable("Fibre channel data is too short")
    return f"FibreEx(0x{data[:8].hex()},0x{data[8:16].hex()})"


def _usb(data: bytes) -> str:
    if len(data) < 2:
        raise _Unreadable("USB data is too short")
    return f"USB({data[0]},{data[1]})"


def _mac(data: bytes) -> str:
    if len(data) != 33:
        raise _Unreadable("MAC data is too short")
    return f"Mac({data[:31].hex().rstrip('0').upper()},{data[32]:#04x})"


def _ipv4(data: bytes) -> str:
    local, remote, _lport, _rport, protocol, kind, gateway, mask = struct.unpack_from("<IIHHHBII", data)

    def address(bits: int) -> str:
        return ".".join(str(bits >> shift & 0xFF) for shift in (24, 16, 8, 0))

    proto = {6: "TCP", 17: "UDP"}.get(protocol, "")
    origin = {0: "DHCP", 1: "Static"}.get(kind, "")
    extra = f",{gateway},{mask}" if gateway or mask else ""
    return f"IPv4({address(remote)},{proto},{origin},{address(local)}{extra})"


_BBS_TYPES = {0x01: "FLOPPY", 0x02: "HARD_DRIVE", 0x03: "CDROM", 0x04: "PCMCIA", 0x05: "USB",
              0x06: "EMBEDDED_NETWORK", 0x80: "DEV", 0xFF: "UNKNOWN"}


def _bbs(data: bytes) -> str:
    device_type, status = struct.unpack_from("<HH", data)
    description = data[4:]
    cut = description.find(b"\0")
    text = description[:cut if cut >= 0 else len(description)].decode("utf-8")
    return f"BBS({_BBS_TYPES.get(device_type, str(device_type))},{text},{status})"


_NODE_PARSERS = {
    (1, 0x01): _pci, (2, 0x01): _acpi,
    (3, 0x15): _fibre_channel_ex, (3, 0x05): _usb, (3, 0x0B): _mac, (3, 0x0C): _ipv4,
    (4, 0x01): _hard_drive, (4, 0x03): _media_vendor, (4, 0x04): _file_path,
    (5, 0x01): _bbs,
}

_PARSERS = {
    "EV_POST_CODE": _simple, "EV_ACTION": _simple, "EV_COMPACT_HASH": _simple,
    "EV_OMIT_BOOT_DEVICE_EVENTS": _simple, "EV_EFI_ACTION": _simple,
    "EV_EVENT_TAG": _event_tag,
    "EV_PLATFORM_CONFIG_FLAGS": _platform_config_flags,
    "EV_IPL": _ipl,
    "EV_EFI_VARIABLE_DRIVER_CONFIG": _efi_variable, "EV_EFI_VARIABLE_BOOT": _efi_variable,
    "EV_EFI_VARIABLE_BOOT2": _efi_variable, "EV_EFI_VARIABLE_AUTHORITY": _efi_variable,
    "EV_EFI_BOOT_SERVICES_APPLICATION": _boot_services_application,
    "EV_EFI_PLATFORM_FIRMWARE_BLOB2": _simple_string, "EV_EFI_HANDOFF_TABLES2": _simple_string,
}
