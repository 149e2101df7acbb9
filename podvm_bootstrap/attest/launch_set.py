"""The launch set as the event log records it: which image, by digest, ran
as each component. Pure: reads the AAEL records of a parsed TCG2 log
(podvm_bootstrap.attest.tcg_log); the daemon (on a restart in the same boot) and a
verifier (`measurements`) read it the same way.

On the launch register, the records of domain github.com/confidential-containers:

    LaunchComponent {"component","digest","image","source"[,"requested_by"]}
    ...
    LaunchComplete  {"components":N}

Content is RFC 8785 canonical JSON; `source` is default, variant or
override, and an override says who asked for it (`requested_by`: user-data
or initdata). The launch is complete with exactly one LaunchComplete whose N
is the number of LaunchComponent records before it, and nothing of ours
after it. Records of other domains (the attestation agent's own) may come
anywhere. A launch record that is not exactly this, whose digest is not its
event's, or that sits on another register, makes the log malformed: a
verifier must not trust a set it cannot read whole."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from podvm_bootstrap.attest.jcs import canonical_json
from podvm_bootstrap.attest.tcg_log import DOMAIN, SHA256, EventLog, MalformedLog, Record, split_aael

LAUNCH_COMPONENT = "LaunchComponent"
LAUNCH_COMPLETE = "LaunchComplete"
SOURCES = ("default", "variant", "override")
REQUESTED_BY = ("user-data", "initdata")

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_COMPONENT_KEYS = {"component", "digest", "image", "source"}


@dataclass(frozen=True)
class LaunchedComponent:
    component: str
    digest: str                      # sha256:...
    image: str                       # repo@sha256:... that runs
    source: str                      # default | variant | override
    requested_by: str | None = None  # user-data | initdata, for an override
    offset: int | None = None        # the record's byte offset in the log

    def content(self) -> dict[str, str]:
        content = {"component": self.component, "digest": self.digest, "image": self.image, "source": self.source}
        if self.requested_by is not None:
            content["requested_by"] = self.requested_by
        return content


@dataclass(frozen=True)
class LaunchSet:
    register: int
    components: tuple[LaunchedComponent, ...]
    complete: bool

    def by_name(self) -> dict[str, LaunchedComponent]:
        return {c.component: c for c in self.components}


def read_launch(log: EventLog, register: int, source: str = "eventlog") -> LaunchSet:
    """The launch set the log records on `register` (measure.pcr). Raises
    MalformedLog naming the record's offset when a launch record is not
    what the daemon writes."""
    components: list[LaunchedComponent] = []
    complete = False
    for record in log.records:
        parsed = _launch_event(record, source)
        if parsed is None:
            continue
        operation, content = parsed
        if record.register != register:
            raise MalformedLog(source, record.offset,
                               f"a {operation} record on register {record.register}; the launch is on {register}")
        if complete:
            raise MalformedLog(source, record.offset, f"a {operation} record after {LAUNCH_COMPLETE}")
        if operation == LAUNCH_COMPONENT:
            entry = _component(content, record, source)
            if any(c.component == entry.component for c in components):
                raise MalformedLog(source, record.offset, f"component {entry.component} launched twice")
            components.append(entry)
        else:
            if content != {"components": len(components)}:
                raise MalformedLog(source, record.offset,
                                   f'{LAUNCH_COMPLETE} must say {{"components":{len(components)}}}, '
                                   f"the number of {LAUNCH_COMPONENT} records before it")
            complete = True
    return LaunchSet(register, tuple(components), complete)


def _launch_event(record: Record, source: str) -> tuple[str, dict[str, Any]] | None:
    """The operation and content of one of our launch records; None for any other record."""
    text = record.aael
    if text is None:
        return None
    try:
        domain, operation, content_text = split_aael(text)
    except ValueError:
        return None
    if domain != DOMAIN:
        return None
    if operation not in (LAUNCH_COMPONENT, LAUNCH_COMPLETE):
        raise MalformedLog(source, record.offset, f"unknown operation {operation[:80]!r} in domain {DOMAIN}")
    if [d.alg for d in record.digests] != [SHA256]:
        raise MalformedLog(source, record.offset, f"a {operation} record carries other than one SHA-256 digest")
    if not record.digest_matches_event():
        raise MalformedLog(source, record.offset, f"the {operation} record's digest is not its event's")
    try:
        content = json.loads(content_text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise MalformedLog(source, record.offset, f"the {operation} content is not JSON") from None
    if not isinstance(content, dict):
        raise MalformedLog(source, record.offset, f"the {operation} content is not a JSON object")
    try:
        canonical = canonical_json(content)
    except ValueError as exc:
        raise MalformedLog(source, record.offset, f"the {operation} content: {exc}") from None
    if canonical != content_text:
        raise MalformedLog(source, record.offset, f"the {operation} content is not RFC 8785 canonical JSON")
    return operation, content


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _component(content: dict[str, Any], record: Record, source: str) -> LaunchedComponent:
    def bad(reason: str) -> MalformedLog:
        return MalformedLog(source, record.offset, f"{LAUNCH_COMPONENT}: {reason}")

    keys = set(content)
    if content.get("source") == "override":
        if keys != _COMPONENT_KEYS | {"requested_by"}:
            raise bad(f"an override has exactly the keys {sorted(_COMPONENT_KEYS | {'requested_by'})}")
        if content["requested_by"] not in REQUESTED_BY:
            raise bad(f"requested_by must be one of {', '.join(REQUESTED_BY)}")
    elif keys != _COMPONENT_KEYS:
        raise bad(f"exactly the keys {sorted(_COMPONENT_KEYS)} (source {', '.join(SOURCES)})")
    if not all(isinstance(content[k], str) for k in keys):
        raise bad("every value is a string")
    if content["source"] not in SOURCES:
        raise bad(f"source must be one of {', '.join(SOURCES)}")
    if not content["component"] or not _DIGEST.fullmatch(content["digest"]) \
            or not content["image"].endswith("@" + content["digest"]):
        raise bad("a component name, a digest sha256:<64 hex> and an image that ends with @ and that digest")
    return LaunchedComponent(content["component"], content["digest"], content["image"], content["source"],
                             content.get("requested_by"), record.offset)
