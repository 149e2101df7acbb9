"""What of a secret-bearing file may leave the pod VM in a `collect` bundle:
the one home of the redaction rules (pure).

The files user-data provisions (registry credentials, the forwarder's TLS
key and certificates, the attestation agent's and data hub's configurations,
initdata) and the user-data itself are never copied. Each is summarized by
the rule its name selects: the file is named, its size and sha256 are kept
(an operator compares them with what was sent), and its structure is kept
where the rule knows it (JSON keys, TOML tables and keys, the paths
user-data writes), every value replaced by a placeholder saying its type and
size. A file no rule names is opaque: size and digest only.

Each rule also hands back the values it withheld (`Redacted.secrets`), so
that the bundle's other parts (journals, status, units) are scrubbed of any
of them a component may have logged: `scrub_forms` turns them into the byte
strings to search for, `scrub` replaces them. Values shorter than
MIN_SCRUB characters are withheld from the summaries but not searched for
elsewhere (a `true` or a port number would blank half a journal)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from podvm_bootstrap.common.errors import UserDataError, one_line
from podvm_bootstrap.userdata.cloudconfig import decode_payload, parse_userdata
from podvm_bootstrap.userdata.initdata import parse_initdata
from podvm_bootstrap.userdata.tomlbounds import TomlBoundsError, check_toml_bounds

PLACEHOLDER = b"<redacted>"   # what a scrubbed value becomes in the bundle's other parts
MIN_SCRUB = 6                 # shorter values are not searched for in the other parts
MAX_DEPTH = 32                # nesting of a JSON/TOML document summarized; deeper is cut

# Rule names.
JSON_VALUES = "json: keys kept, every value redacted"
JSON_SECRET_KEYS = "json: keys kept, keys/certificates/credentials redacted"
TOML_VALUES = "toml: tables and keys kept, every value redacted"
INITDATA = "initdata: algorithm, version, digest and data names kept, contents redacted"
USERDATA = "user-data: written paths, sizes and digests kept, contents redacted"
HEX_DIGEST = "digest: kept when it is a hex digest, else opaque"
OPAQUE = "opaque: size and sha256 only"

# The file name (its last path part) -> its rule; any other name is OPAQUE.
RULES: Mapping[str, str] = MappingProxyType({
    "auth.json": JSON_VALUES,          # registry credentials (containers-auth.json or the adaptor's resources JSON)
    "apf.json": JSON_SECRET_KEYS,      # the forwarder's pod network (kept) and TLS key/certificates (redacted)
    "aa.toml": TOML_VALUES,
    "cdh.toml": TOML_VALUES,
    "initdata": INITDATA,
    "initdata.digest": HEX_DIGEST,
    "user-data": USERDATA,
})

# apf.json: a value is a secret when a part of its key (split at - _ . and
# case) is one of these, or when it holds a PEM block.
SECRET_KEY_PARTS = frozenset({
    "key", "cert", "certs", "certificate", "crt", "ca", "pem", "secret", "token", "password", "passwd",
    "auth", "credential", "credentials", "private", "passphrase",
})
_KEY_PARTS = re.compile(r"[A-Za-z][a-z]*|[0-9]+")
_PEM = "-----BEGIN "
_HEX = re.compile(r"[0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{128}")


@dataclass(frozen=True)
class Redacted:
    """A file's summary (JSON-ready, no secret in it) and the values withheld."""

    summary: dict[str, Any]
    secrets: frozenset[str]


def sha256_hex(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rule_for(name: str) -> str:
    return RULES.get(name.rsplit("/", 1)[-1], OPAQUE)


def redact(name: str, data: bytes, *, max_size: int = 16 * 1024 * 1024) -> Redacted:
    """The summary of the file `name` (a path or a file name: its last part
    chooses the rule) holding `data`. A file its rule cannot parse is
    summarized as opaque, with the reason (which never quotes the content)."""
    rule = rule_for(name)
    summary: dict[str, Any] = {"file": name, "rule": rule, "size": len(data), "sha256": sha256_hex(data)}
    secrets: set[str] = set()
    try:
        if rule in (JSON_VALUES, JSON_SECRET_KEYS):
            summary["shape"] = _json_shape(data, secrets, everything=rule == JSON_VALUES)
        elif rule == TOML_VALUES:
            summary["shape"] = _toml_shape(data, secrets)
        elif rule == INITDATA:
            summary["initdata"] = _initdata(data, secrets, max_size)
        elif rule == USERDATA:
            summary["user-data"] = _userdata(data, secrets, max_size)
        elif rule == HEX_DIGEST:
            text = data.decode("ascii", "replace").strip()
            if _HEX.fullmatch(text):
                summary["value"] = text
            else:
                summary["note"] = "not a hex digest: withheld"
    except _Unparsed as exc:
        summary["note"] = f"not parsed ({exc}): withheld whole"
    kept_whole = "value" in summary or (rule == JSON_SECRET_KEYS and "shape" in summary)
    if not kept_whole:
        # Withheld is secret: the text and its lines are searched for elsewhere
        # (apf.json's kept values and a kept digest are no secret).
        _add_text(secrets, data)
    secrets.discard("")
    return Redacted(summary, frozenset(secrets))


class _Unparsed(Exception):
    """The file is not what its rule expects (the message never quotes it)."""


def withheld_text(data: bytes) -> frozenset[str]:
    """What to search the other parts for when a file is withheld whole
    without a rule's summary (the text and its lines)."""
    secrets: set[str] = set()
    _add_text(secrets, data)
    secrets.discard("")
    return frozenset(secrets)


def _add_text(secrets: set[str], data: bytes | str) -> None:
    """A withheld text: the whole of it, and each of its lines (a component
    logs a line, not a file)."""
    # surrogateescape: bytes that are not UTF-8 come back as themselves in scrub_forms
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    secrets.add(text.strip())
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("-----"):   # PEM armour lines are no secret and are in every PEM
            secrets.add(line)


def _placeholder(value: object) -> str:
    if isinstance(value, str):
        return f"<redacted: string, {len(_encode(value))} bytes>"
    if isinstance(value, bool):
        return "<redacted: boolean>"
    if isinstance(value, (int, float)):
        return "<redacted: number>"
    if value is None:
        return "<redacted: null>"
    return f"<redacted: {type(value).__name__}>"


def _is_secret_key(key: str) -> bool:
    return any(part.lower() in SECRET_KEY_PARTS for part in _KEY_PARTS.findall(key))


def _shape(value: object, secrets: set[str], secret: Callable[[str, object], bool], inherited: bool,
           depth: int = 0) -> object:
    """`value` with every leaf that is secret (inherited from a secret key
    above, or by `secret(key, value)`) replaced by its placeholder."""
    if depth > MAX_DEPTH:
        _add_json(secrets, value)
        return "<redacted: nested too deep>"
    if isinstance(value, dict):
        return {str(k): _shape(v, secrets, secret, inherited or secret(str(k), v), depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v, secrets, secret, inherited or secret("", v), depth + 1) for v in value]
    if not inherited:
        return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
    if isinstance(value, str):
        _add_text(secrets, value)
    return _placeholder(value)


def _add_json(secrets: set[str], value: object) -> None:
    """Every string inside `value` (a part cut for depth)."""
    stack, seen = [value], 0
    while stack and seen < 100_000:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            _add_text(secrets, item)


def _json_shape(data: bytes, secrets: set[str], *, everything: bool) -> object:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise _Unparsed("not JSON") from None

    def secret(key: str, value: object) -> bool:
        return everything or _is_secret_key(key) or (isinstance(value, str) and _PEM in value)

    return _shape(document, secrets, secret, everything or (isinstance(document, str) and _PEM in document))


def _toml_document(data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
        check_toml_bounds(text)
        return tomllib.loads(text)
    except UnicodeDecodeError:
        raise _Unparsed("not UTF-8 text") from None
    except TomlBoundsError as exc:
        raise _Unparsed(f"TOML refused: {one_line(exc, 120)}") from None
    except (tomllib.TOMLDecodeError, RecursionError, ValueError, OverflowError):
        raise _Unparsed("not valid TOML") from None


def _toml_shape(data: bytes, secrets: set[str]) -> object:
    return _shape(_toml_document(data), secrets, lambda key, value: True, True)


def _initdata(data: bytes, secrets: set[str], max_size: int) -> dict[str, Any]:
    try:
        parsed = parse_initdata(data, max_size)
    except UserDataError as exc:
        # The initdata module's messages name the problem, never the content.
        raise _Unparsed(one_line(exc, 160)) from None
    files: dict[str, Any] = {}
    for name, content in parsed.files.items():
        inner = redact(name, content, max_size=max_size)
        secrets.update(inner.secrets)
        files[name] = inner.summary
    return {"algorithm": parsed.algorithm, "version": parsed.version, "digest": parsed.digest_hex, "data": files}


def _userdata(data: bytes, secrets: set[str], max_size: int) -> dict[str, Any]:
    try:
        text = decode_payload(data, max_size)
        userdata = parse_userdata(text)
    except UserDataError as exc:
        # cloudconfig's messages say what is wrong (a line number, a type),
        # never a value of the document.
        raise _Unparsed(one_line(exc, 160)) from None
    written = []
    for entry in userdata.write_files:
        inner = redact(entry.path, entry.content, max_size=max_size)
        secrets.update(inner.secrets)
        _add_text(secrets, entry.content)
        # how the cloud-api-adaptor carries a file (encoding: b64): search for that form too
        secrets.add(base64.b64encode(entry.content).decode("ascii"))
        written.append({"path": entry.path, **{k: v for k, v in inner.summary.items() if k != "file"}})
    return {"write_files": written, "overrides_requested": sorted(userdata.images),
            "ignored_keys": list(userdata.ignored_keys), "problems": len(userdata.problems)}


def scrub_forms(secrets: Iterable[str]) -> list[bytes]:
    """The byte strings to search the other parts for: each secret of at
    least MIN_SCRUB characters as UTF-8 and as it appears inside a JSON
    string, longest first (a secret is replaced before any part of it)."""
    forms: set[bytes] = set()
    for secret in secrets:
        if len(secret) < MIN_SCRUB:
            continue
        forms.add(_encode(secret))
        forms.add(_encode(json.dumps(secret)[1:-1]))
        forms.add(_encode(json.dumps(secret, ensure_ascii=False)[1:-1]))
    return sorted(forms, key=lambda f: (-len(f), f))


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")   # the bytes _add_text decoded
    except UnicodeEncodeError:                           # a lone surrogate from a JSON escape
        return text.encode("utf-8", "surrogatepass")


def scrub(data: bytes, forms: Iterable[bytes]) -> tuple[bytes, int]:
    """`data` with every occurrence of each form replaced by PLACEHOLDER, and
    how many were replaced."""
    count = 0
    for form in forms:
        found = data.count(form)
        if found:
            count += found
            data = data.replace(form, PLACEHOLDER)
    return data, count
