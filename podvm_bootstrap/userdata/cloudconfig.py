"""User-data (untrusted) → what this daemon uses of it: files and image overrides.

Two steps, both pure:

- ``decode_payload``: the transport layers a cloud puts around the document
  (base64, gzip, base64 of gzip), every inflation bounded;
- ``parse_userdata``: the ``#cloud-config`` YAML document, read with a safe
  loader that refuses aliases, into ``UserData``.

A whole-document failure raises UserDataError (one line). A bad entry is one
line in ``UserData.problems`` and is skipped; the rest is kept. Untrusted text
in any message is rendered with ``errors.show()`` so that it cannot forge a line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from podvm_bootstrap.common.errors import UserDataError, show
from podvm_bootstrap.config.yamlfile import YamlProblem, load_yaml_text
from podvm_bootstrap.userdata.codec import GZIP_MAGIC, CodecError, b64decode_strict, gunzip_bounded

# Largest content of one provisioned file, after decoding (and of all of them
# together): user-data is size-bounded before decoding, a gzip inside it is not.
MAX_FILE_SIZE = 16 * 1024 * 1024
MAX_TOTAL_CONTENT = MAX_FILE_SIZE
_MAX_LAYERS = 2

_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]+")
_PERMISSIONS_TEXT = re.compile(r"(?:0o?)?[0-7]{1,4}")

_ENCODINGS = {
    None: "text", "": "text", "text": "text", "text/plain": "text",
    "b64": "b64", "base64": "b64",
    "gzip+b64": "gzip+b64", "gz+b64": "gzip+b64", "gzip+base64": "gzip+b64", "gz+base64": "gzip+b64",
}
# write_files keys we honour; `defer` only orders cloud-init's stages and
# `append: false` is the default, so both are accepted and ignored.
_ENTRY_KEYS = ("path", "content", "encoding", "permissions", "owner", "defer", "append")
_UNSUPPORTED_HEADERS = (
    ("#!", "a script (#!); scripts are never run"),
    ("#include", "an #include list; includes are not fetched"),
    ("#cloud-boothook", "a cloud-boothook; it is never run"),
    ("#cloud-config-archive", "a cloud-config-archive, which is not supported"),
    ("#part-handler", "a part-handler, which is not supported"),
    ("#upstart-job", "an upstart job, which is not supported"),
    ("## template:", "a template, which is not supported"),
    ("content-type:", "a multi-part MIME archive, which is not supported"),
    ("mime-version:", "a multi-part MIME archive, which is not supported"),
)


# --- transport layers ---------------------------------------------------------

def _looks_base64(data: bytes) -> bytes | None:
    """The decoded bytes when `data` is a base64 text whose content is gzip or
    UTF-8 text; None otherwise. A '#cloud-config' document has '#', ':' and
    '-' in it, none of which is in the base64 alphabet, so it never matches."""
    if not data or not _BASE64_TEXT.fullmatch(data):
        return None
    compact = b"".join(data.split())
    if not compact or len(compact) % 4:
        return None
    try:
        decoded = b64decode_strict(compact)
    except CodecError:
        return None
    if decoded.startswith(GZIP_MAGIC):
        return decoded
    try:
        decoded.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return decoded


def decode_payload(raw: bytes, max_size: int) -> bytes:
    """The cloud-config text inside a user-data body that may be plain, gzip,
    base64, or base64 of gzip (at most two layers). Plain text passes through.
    UserDataError when a layer is broken or inflates beyond `max_size`."""
    data = raw
    for _ in range(_MAX_LAYERS):
        if data.startswith(GZIP_MAGIC):
            data = gunzip_bounded(data, max_size, "gzip user-data")
            continue
        decoded = _looks_base64(data)
        if decoded is None:
            return data
        data = decoded
    if data.startswith(GZIP_MAGIC) or _looks_base64(data) is not None:
        raise UserDataError(f"user-data is wrapped in more than {_MAX_LAYERS} layers of base64/gzip")
    return data


# --- the cloud-config document ------------------------------------------------

@dataclass(frozen=True)
class WriteFile:
    """One usable write_files entry; `content` is already decoded."""

    path: str
    content: bytes
    permissions: int | None = None
    owner: str | None = None
    index: int = 0  # position in write_files, for messages


@dataclass(frozen=True)
class UserData:
    write_files: tuple[WriteFile, ...] = ()
    # component -> requested reference; a non-string request is kept as it is
    # so that the policy refuses it (and `on_rejected_override: fail` applies).
    images: dict[str, object] = field(default_factory=dict)
    problems: tuple[str, ...] = ()  # one line per unusable part, which was skipped
    ignored_keys: tuple[str, ...] = ()  # top-level cloud-config keys this daemon does not act on


def _load_yaml(text: str) -> Any:
    try:
        # The safe constructors only (no arbitrary objects), without aliases.
        return load_yaml_text(text, aliases=False)
    except YamlProblem as exc:
        raise UserDataError(f"user-data is not valid YAML: {exc}") from None


def parse_userdata(raw: bytes) -> UserData:
    """Parse decoded user-data text.

    Accepted: a ``#cloud-config`` document, and (like a cloud-api-adaptor that
    leaves the header out) a document without that header whose YAML is a
    mapping. An empty document is empty user-data. Refused with UserDataError:
    text that is not UTF-8, invalid YAML (with its line), a top level that is
    not a mapping, and the other cloud-init formats (scripts, MIME multi-part,
    includes, boothooks, templates), which this daemon never runs.

    Top-level keys other than ``write_files`` and ``podvm_bootstrap`` (runcmd,
    users, ...) are not acted on; they are listed in ``ignored_keys``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserDataError(f"user-data is not UTF-8 text (invalid byte at offset {exc.start})") from None
    text = text.removeprefix("\ufeff")
    first_line = text.lstrip().split("\n", 1)[0].strip()
    has_header = first_line.rstrip() == "#cloud-config"
    if not has_header:
        lowered = first_line.lower()
        for prefix, what in _UNSUPPORTED_HEADERS:
            if lowered.startswith(prefix):
                raise UserDataError(f"user-data is {what}")
    if "\0" in text:
        raise UserDataError("user-data contains a NUL character")
    document = _load_yaml(text)
    if document is None:
        return UserData()
    if not isinstance(document, dict):
        kind = "a cloud-config" if has_header else "user-data"
        raise UserDataError(f"{kind} document must be a YAML mapping, got {_type_name(document)}")

    problems: list[str] = []
    files = _write_files(document.get("write_files"), problems)
    images = _podvm_bootstrap(document.get("podvm_bootstrap"), problems)
    ignored = tuple(show(k) for k in document if k not in ("write_files", "podvm_bootstrap"))
    return UserData(write_files=files, images=images, problems=tuple(problems), ignored_keys=ignored)


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", bytes: "binary data"}.get(type(value), type(value).__name__)


class _EntryProblem(Exception):
    pass


def _write_files(value: object, problems: list[str]) -> tuple[WriteFile, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"write_files: expected a list, got {_type_name(value)}; no file written")
        return ()
    files: list[WriteFile] = []
    budget = MAX_TOTAL_CONTENT
    for index, entry in enumerate(value):
        try:
            wf = _write_file(index, entry, budget)
        except _EntryProblem as exc:
            problems.append(f"write_files[{index}]: {exc}; entry skipped")
            continue
        budget -= len(wf.content)
        files.append(wf)
    return tuple(files)


def _write_file(index: int, entry: object, budget: int) -> WriteFile:
    if not isinstance(entry, dict):
        raise _EntryProblem(f"expected a mapping, got {_type_name(entry)}")
    unknown = [show(k) for k in entry if k not in _ENTRY_KEYS]
    if unknown:
        raise _EntryProblem(f"unsupported key(s) {', '.join(unknown)}")
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        raise _EntryProblem("missing path" if path is None else f"path must be a string, got {_type_name(path)}")
    where = f"({show(path)})"
    if entry.get("append") not in (None, False):
        raise _EntryProblem(f"{where} append is not supported (files are rewritten at every boot)")
    owner = entry.get("owner")
    if owner is not None and not isinstance(owner, str):
        raise _EntryProblem(f"{where} owner must be a string, got {_type_name(owner)}")
    permissions = _permissions(entry.get("permissions"), where)
    content = _content(entry.get("content"), entry.get("encoding"), where, min(budget, MAX_FILE_SIZE))
    return WriteFile(path=path, content=content, permissions=permissions, owner=owner, index=index)


def _permissions(value: object, where: str) -> int | None:
    """cloud-init's rule: an octal string ('0600', '600', '0o600'), or a YAML
    integer taken as it is (unquoted 0600 is YAML 1.1 octal)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _EntryProblem(f"{where} permissions must be an octal string like '0644', got a boolean")
    if isinstance(value, int):
        if not 0 <= value <= 0o7777:
            raise _EntryProblem(f"{where} permissions {value} out of range")
        return value
    if isinstance(value, str) and _PERMISSIONS_TEXT.fullmatch(value.strip()):
        return int(value.strip(), 8)
    raise _EntryProblem(f"{where} permissions must be an octal string like '0644', got {show(value)}")


def _content(value: object, encoding: object, where: str, limit: int) -> bytes:
    """Missing content is an empty file, as in cloud-init."""
    if encoding is not None and not isinstance(encoding, str):
        raise _EntryProblem(f"{where} encoding must be a string, got {_type_name(encoding)}")
    kind = _ENCODINGS.get(encoding.strip().lower() if isinstance(encoding, str) else None)
    if kind is None:
        raise _EntryProblem(f"{where} unknown encoding {show(encoding)} (known: b64, base64, gzip+b64, gz+b64)")
    if value is None:
        data = b""
    elif isinstance(value, bytes):  # YAML !!binary
        data = value
    elif isinstance(value, str):
        data = value.encode("utf-8")
    else:
        raise _EntryProblem(f"{where} content must be a string, got {_type_name(value)}")
    if kind != "text":
        try:
            data = b64decode_strict(data, "content")
        except CodecError as exc:
            raise _EntryProblem(f"{where} {exc}") from None
    if kind == "gzip+b64":
        try:
            data = gunzip_bounded(data, limit, "content")
        except CodecError as exc:
            raise _EntryProblem(f"{where} {exc}") from None
    if len(data) > limit:
        raise _EntryProblem(f"{where} content is larger than {limit} bytes")
    return data


def _podvm_bootstrap(value: object, problems: list[str], where: str = "podvm_bootstrap") -> dict[str, object]:
    """The `images:` requests of a mapping {images: {component: reference}}:
    the user-data's `podvm_bootstrap` key, or the initdata's
    podvm-bootstrap.yaml (`where` names it in problems)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a mapping, got {_type_name(value)}; ignored")
        return {}
    for key in value:
        if key != "images":
            problems.append(f"{where}: unknown key {show(key)} ignored (known: images)")
    images = value.get("images")
    if images is None:
        return {}
    if not isinstance(images, dict):
        problems.append(f"{where}.images: expected a mapping, got {_type_name(images)}; ignored")
        return {}
    result: dict[str, object] = {}
    for name, ref in images.items():
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.images: component name must be a string, got {show(name)}; ignored")
        else:
            result[name] = ref.strip() if isinstance(ref, str) else ref
    return result


@dataclass(frozen=True)
class ImageRequests:
    """The overrides a document asks for; `problems`, one line per unusable
    part (skipped)."""

    images: dict[str, object] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def parse_image_requests(text: str, where: str, max_size: int) -> ImageRequests:
    """A YAML document holding the same `images:` mapping as the user-data's
    `podvm_bootstrap` (the initdata's "podvm-bootstrap.yaml"), read with the
    user-data's loader and bounds: at most `max_size` bytes, no aliases.
    UserDataError (one line naming `where`) when the document is unusable as
    a whole."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_size:
        raise UserDataError(f"{where} is larger than {max_size} bytes")
    if "\0" in text:
        raise UserDataError(f"{where} contains a NUL character")
    try:
        document = load_yaml_text(text.removeprefix("\ufeff"), aliases=False)
    except YamlProblem as exc:
        raise UserDataError(f"{where} is not valid YAML: {exc}") from None
    problems: list[str] = []
    if document is None:
        return ImageRequests()
    if not isinstance(document, dict):
        raise UserDataError(f"{where} must be a YAML mapping (images: {{component: image}}), "
                            f"got {_type_name(document)}")
    return ImageRequests(_podvm_bootstrap(document, problems, where), tuple(problems))
