"""Reading the launch set from TCG2 records (podvm_bootstrap.attest.launch_set):
LaunchComponent/LaunchComplete of our domain on the launch register, the
agent's records anywhere, and every way a launch record can be wrong."""

from __future__ import annotations

import struct

import pytest

from podvm_bootstrap.attest.jcs import canonical_json
from podvm_bootstrap.attest.launch_set import LaunchedComponent, read_launch
from podvm_bootstrap.attest.tcg_log import DOMAIN, SHA384, MalformedLog, digest, encode_record, parse_log, tagged_event

D1, D2 = ("sha256:" + c * 64 for c in "12")
AA = LaunchedComponent("attestation-agent", D1, f"quay.io/confidential-containers/attestation-agent@{D1}", "default")
APF = LaunchedComponent("agent-protocol-forwarder", D2, f"127.0.0.1:5000/podvm/apf@{D2}", "override", "initdata")


def event(operation: str, content: object, domain: str = DOMAIN) -> str:
    return f"{domain} {operation} {content if isinstance(content, str) else canonical_json(content)}"


def launch_texts(components: list[LaunchedComponent], complete: int | None = None) -> list[str]:
    n = len(components) if complete is None else complete
    return [event("LaunchComponent", c.content()) for c in components] + [event("LaunchComplete", {"components": n})]


def log_of(texts: list[str], register: int = 23) -> bytes:
    return b"".join(encode_record(register, t) for t in texts)


def read(data: bytes):
    return read_launch(parse_log(data), 23)


def test_the_launch_set_reads_back_with_the_agents_records_around_it():
    agent = "github.com/confidential-containers/guest-components CreateContainer {\"id\": \"x y\"}"
    data = log_of([agent]) + log_of(launch_texts([AA, APF])) + log_of([agent])
    launch = read(data)
    assert launch.complete and launch.register == 23
    assert [c.content() for c in launch.components] == [AA.content(), APF.content()]
    assert launch.by_name()["agent-protocol-forwarder"].requested_by == "initdata"
    assert launch.components[0].offset == len(log_of([agent]))


def test_no_launch_complete_is_an_incomplete_launch():
    launch = read(log_of(launch_texts([AA])[:-1]))
    assert not launch.complete and [c.component for c in launch.components] == ["attestation-agent"]
    assert not read(b"").complete


def offset_of(texts: list[str], index: int) -> int:
    return len(log_of(texts[:index]))


@pytest.mark.parametrize(("texts", "bad", "message"), [
    (launch_texts([AA], complete=2), 1, 'LaunchComplete must say {"components":1}'),
    (launch_texts([AA, AA]), 1, "launched twice"),
    (launch_texts([AA]) + [event("LaunchComponent", APF.content())], 2, "after LaunchComplete"),
    ([event("LaunchComponent", '{"component": "x"}')], 0, "not RFC 8785 canonical"),
    ([event("LaunchComponent", "[1]")], 0, "not a JSON object"),
    ([event("LaunchComponent", "{")], 0, "not JSON"),
    ([event("LaunchComponent", '{"a":NaN}')], 0, "not JSON"),
    ([event("LaunchStop", {})], 0, "unknown operation"),
    ([event("LaunchComponent", {**AA.content(), "source": "elsewhere"})], 0, "source must be one of"),
    ([event("LaunchComponent", {**AA.content(), "requested_by": "user-data"})], 0, "exactly the keys"),
    ([event("LaunchComponent", {k: v for k, v in APF.content().items() if k != "requested_by"})], 0,
     "an override has exactly the keys"),
    ([event("LaunchComponent", {**APF.content(), "requested_by": "host"})], 0, "requested_by must be one of"),
    ([event("LaunchComponent", {**AA.content(), "digest": "sha256:abc"})], 0, "a digest sha256:<64 hex>"),
    ([event("LaunchComponent", {**AA.content(), "image": f"elsewhere@{D2}"})], 0, "ends with @ and that digest"),
    ([event("LaunchComponent", {**AA.content(), "component": 7})], 0, "every value is a string"),
])
def test_a_wrong_launch_record_makes_the_log_malformed_naming_its_offset(texts, bad, message):
    with pytest.raises(MalformedLog, match=rf"byte {offset_of(texts, bad)}: .*{message}"):
        read(log_of(texts))


def test_a_launch_record_whose_digest_is_not_its_events_is_refused():
    record = bytearray(log_of(launch_texts([AA])[:1]))
    record[20] ^= 1  # inside the SHA-256 digest
    with pytest.raises(MalformedLog, match="byte 0: the LaunchComponent record's digest is not its event's"):
        read(bytes(record))


def test_a_launch_record_on_another_register_or_in_another_bank_is_refused():
    with pytest.raises(MalformedLog, match="LaunchComponent record on register 9; the launch is on 23"):
        read(log_of(launch_texts([AA])[:1], register=9))
    tagged = tagged_event(launch_texts([AA])[0])
    record = (struct.pack("<IIIH", 23, 6, 1, SHA384.id) + digest(SHA384, tagged)
              + struct.pack("<I", len(tagged)) + tagged)
    with pytest.raises(MalformedLog, match="other than one SHA-256 digest"):
        read(record)


def test_other_domains_and_unsplittable_texts_are_not_ours():
    launch = read(log_of(["example.org LaunchComponent {}", "nospace", "one space"] + launch_texts([])))
    assert launch.complete and launch.components == ()
