"""The measured launch's records, as the daemon writes them. Pure: which
records a launch set makes, in which order, and the register value they give
from zero; the record layout itself is tcg_log's, and reading a launch set
back is launch_set's.

One record per component that will run, in start order (by name within a
layer), then LaunchComplete; each an AAEL event of domain
github.com/confidential-containers wrapped in a TCG2 EV_EVENT_TAG record on
register `measure.pcr`, byte for byte what the attestation agent writes:

    LaunchComponent {"component":...,"digest":...,"image":...,"source":...[,"requested_by":...]}
    LaunchComplete {"components":N}

Content is RFC 8785 canonical JSON; `requested_by` (user-data | initdata) is
there for an override only. The register: value = sha256(value || digest),
digest = sha256(the record's TaggedEvent)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from podvm_bootstrap.attest.jcs import canonical_json
from podvm_bootstrap.attest.launch_set import LAUNCH_COMPLETE, LAUNCH_COMPONENT, LaunchedComponent
from podvm_bootstrap.attest.tcg_log import DOMAIN, SHA256, aael_text, encode_record, event_digest, extend

ZERO = bytes(SHA256.size)


def launch_order(entries: Iterable[LaunchedComponent],
                 start_order: Sequence[Sequence[str]]) -> list[LaunchedComponent]:
    """The entries in start order, by name within a layer (deterministic, so a
    relying party can predict the log). Entries in no layer come last, by name."""
    by_name = {e.component: e for e in entries}
    ordered: list[LaunchedComponent] = []
    for layer in start_order:
        ordered += [by_name.pop(name) for name in sorted(layer) if name in by_name]
    return ordered + [by_name[name] for name in sorted(by_name)]


def launch_texts(entries: Sequence[LaunchedComponent]) -> list[str]:
    """The AAEL text of every record of a launch, LaunchComplete last."""
    return ([aael_text(DOMAIN, LAUNCH_COMPONENT, canonical_json(e.content())) for e in entries]
            + [aael_text(DOMAIN, LAUNCH_COMPLETE, canonical_json({"components": len(entries)}))])


@dataclass(frozen=True)
class Prediction:
    """A launch's records on `register` and the register's value after each, from zero."""

    register: int
    texts: tuple[str, ...]
    records: tuple[bytes, ...]
    values: tuple[bytes, ...]

    @property
    def value(self) -> bytes:
        return self.values[-1]


def predict(register: int, entries: Sequence[LaunchedComponent]) -> Prediction:
    texts = launch_texts(entries)
    values, value = [], ZERO
    for text in texts:
        value = extend(value, event_digest(text))
        values.append(value)
    return Prediction(register, tuple(texts), tuple(encode_record(register, t) for t in texts), tuple(values))


def format_value(value: bytes) -> str:
    return f"sha256:{value.hex()}"
