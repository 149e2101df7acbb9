"""The launch event log's pure core (podvm_bootstrap.eventlog): AAEL lines,
replay, prediction, and a bounded parser whose errors name the line."""

from __future__ import annotations

import hashlib

import pytest

from podvm_bootstrap.eventlog import (
    ZERO,
    LaunchEntry,
    MalformedLog,
    aael_states,
    event_line,
    extend,
    init_line,
    launch_lines,
    launch_order,
    parse_log,
    parse_value,
    predict,
    replay,
)

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
ENTRIES = [
    LaunchEntry("attestation-agent", f"quay.io/confidential-containers/attestation-agent@{D1}", D1, "default"),
    LaunchEntry("kata-agent", f"quay.io/confidential-containers/kata-agent@{D2}", D2, "default"),
    LaunchEntry("agent-protocol-forwarder", f"127.0.0.1:5000/podvm/apf@{D3}", D3, "override"),
]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_line_hashing_agrees_with_the_attestation_agents_test_vector():
    # guest-components attestation-agent eventlog: sha256 of "domain operation content"
    line = event_line("operation", {}, domain="domain").replace("{}", "content")
    assert hashlib.sha256(line.encode()).hexdigest() == \
        "65aad3b1620d4fe224d727579db2db87ff5c033f3e4424ae0fd72eb1149d3bd5"


def test_launch_lines_are_aael_with_canonical_content():
    lines = launch_lines(ZERO, ENTRIES)
    assert lines[0] == "INIT sha256/" + "0" * 64
    assert lines[1] == ('github.com/confidential-containers LaunchComponent {"component":"attestation-agent",'
                        f'"digest":"{D1}","image":"quay.io/confidential-containers/attestation-agent@{D1}",'
                        '"source":"default"}')
    assert lines[3].endswith('"source":"override"}')
    assert lines[-1] == 'github.com/confidential-containers LaunchComplete {"components":3}'
    assert all(len(line.split(" ")) == 3 for line in lines[1:])


def test_replay_extends_every_line_including_init():
    lines = launch_lines(ZERO, ENTRIES)
    pcr = ZERO
    for line in lines:  # by hand: PCR = sha256(PCR || sha256(line))
        pcr = sha(pcr + sha(line.encode()))
    assert replay(ZERO, lines)[-1] == pcr
    assert predict(ENTRIES) == (lines, pcr)
    assert parse_log(text(lines)).value == pcr


def test_replay_from_a_nonzero_init_value_starts_there():
    init = sha(b"earlier boot components")
    lines = launch_lines(init, ENTRIES)
    parsed = parse_log(text(lines))
    assert parsed.init == init and parsed.complete
    assert parsed.value == replay(init, lines)[-1] != predict(ENTRIES)[1]
    assert [e.component for e in parsed.launched] == [e.component for e in ENTRIES]


def test_order_is_start_order_then_name_within_a_layer():
    ordered = launch_order(reversed(ENTRIES), [("kata-agent", "attestation-agent"), ("agent-protocol-forwarder",)])
    assert [e.component for e in ordered] == ["attestation-agent", "kata-agent", "agent-protocol-forwarder"]
    # a reordered log replays to another value
    lines = launch_lines(ZERO, ENTRIES)
    swapped = [lines[0], lines[2], lines[1], *lines[3:]]
    assert parse_log(text(swapped)).value != parse_log(text(lines)).value


def test_truncated_log_is_incomplete_and_replays_differently():
    lines = launch_lines(ZERO, ENTRIES)
    parsed = parse_log(text(lines[:-1]))
    assert not parsed.complete and parsed.value != predict(ENTRIES)[1]


def good() -> list[str]:
    return launch_lines(ZERO, ENTRIES)


@pytest.mark.parametrize("mutate, line, words", [
    (lambda ls: ["INIT sha384/" + "0" * 96, *ls[1:]], 1, "only sha256"),
    (lambda ls: ["INIT sha256/" + "A" * 64, *ls[1:]], 1, "lower-case"),
    (lambda ls: ["NOPE", *ls[1:]], 1, "INIT"),
    (lambda ls: [ls[0], ls[1].replace(" {", "  {"), *ls[2:]], 2, "single spaces"),
    (lambda ls: [ls[0], ls[1].replace("LaunchComponent", "Other"), *ls[2:]], 2, "not a launch event"),
    (lambda ls: [ls[0], ls[1].split(" ")[0] + " LaunchComponent {\"component\":", *ls[2:]], 2, "not JSON"),
    (lambda ls: [ls[0], ls[1].replace('"source":"default"', '"source":"host"'), *ls[2:]], 2, "source"),
    (lambda ls: [ls[0], ls[1].replace('"default"}', '"default","z":1.5}'), *ls[2:]], 2, "floats"),
    (lambda ls: [ls[0], ls[1][:-1] + ',"component":"x"}', *ls[2:]], 2, "canonical"),
    (lambda ls: [ls[0], ls[1], ls[1], *ls[2:]], 3, "twice"),
    (lambda ls: [*ls, ls[1]], 6, "after LaunchComplete"),
    (lambda ls: [*ls[:-1], ls[-1].replace("3", "2")], 5, '{"components":3}'),
    (lambda ls: [ls[0], ls[1].replace("image\":\"quay.io", "image\":\"evil.io")
                             .replace(D1 + '","source', "x\",\"source"), *ls[2:]], 2, "digest"),
])
def test_malformed_logs_name_the_line(mutate, line, words):
    with pytest.raises(MalformedLog) as info:
        parse_log(text(mutate(good())), "the-log")
    assert info.value.line == line
    assert str(info.value).startswith(f"the-log: line {line}: ") and words in str(info.value)
    assert info.value.exit_code == 2


def test_parse_is_bounded():
    with pytest.raises(MalformedLog, match="larger than"):
        parse_log(b"INIT sha256/" + b"0" * 64 + b"\n" + b"x" * (1024 * 1024))
    with pytest.raises(MalformedLog, match="more than 4096 lines"):
        parse_log(b"\n".join([b"INIT sha256/" + b"0" * 64] + [b"a b c"] * 4100))
    with pytest.raises(MalformedLog, match="line 2: longer than"):
        parse_log(b"INIT sha256/" + b"0" * 64 + b"\n" + b"a b " + b"c" * 20000)
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(MalformedLog, match="line 2"):
        parse_log(text([good()[0], f"github.com/confidential-containers LaunchComponent {deep}"]))
    with pytest.raises(MalformedLog, match="line 2: not UTF-8"):
        parse_log(text([good()[0]]) + b"\xff\xfe x y\n")
    with pytest.raises(MalformedLog, match="empty"):
        parse_log(b"")


def test_values_as_users_give_them():
    value = bytes(range(32))
    for form in (value.hex(), value.hex().upper(), "sha256:" + value.hex(), "0x" + value.hex().upper()):
        assert parse_value(form) == value
    for bad in ("", "12", "sha384:" + "0" * 64, "zz" * 32):
        with pytest.raises(ValueError):
            parse_value(bad)


def test_aael_states_of_the_attestation_agents_own_log_continue_ours():
    ours = predict(ENTRIES)[1]
    aa = [init_line(ours), "domain operation content"]
    init, states = aael_states(text(aa))
    assert init == ours and states[-1] == extend(extend(ours, aa[0]), aa[1])
    with pytest.raises(ValueError):
        aael_states(b"not a log\n")
