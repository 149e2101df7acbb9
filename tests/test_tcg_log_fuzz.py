"""Fuzzing the event log readers (hypothesis, derandomized and bounded): a
log handed to `measurements` is untrusted. Whatever the bytes, reading them
(tcg_log.parse_log), building Trustee's claims (trustee_claims.claims) and
the launch set (launch_set.read_launch) returns or raises the one-line
MalformedLog, never another exception, within a memory bound; mutations of
a valid log (Trustee's own TDX log, our records) are read the same way."""

from __future__ import annotations

import tracemalloc
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podvm_bootstrap.attest.launch_set import read_launch
from podvm_bootstrap.attest.tcg_log import EV_EVENT_TAG, MAX_RECORDS, MalformedLog, encode_record, parse_log
from podvm_bootstrap.attest.trustee_claims import claims
from tests.test_trustee_claims import FIXTURES

MEMORY_BOUND = 16 * 1024 * 1024
FUZZ = settings(max_examples=300, derandomize=True, deadline=timedelta(seconds=5), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TDX_LOG = (FIXTURES / "CCEL_AAEL_alibabacloud").read_bytes()
OURS = b"".join(encode_record(23, t) for t in (
    'github.com/confidential-containers LaunchComponent {"component":"a","digest":"sha256:' + "1" * 64
    + '","image":"q/a@sha256:' + "1" * 64 + '","source":"default"}',
    'github.com/confidential-containers LaunchComplete {"components":1}'))


def read_everything(data: bytes) -> object:
    tracemalloc.start()
    try:
        try:
            log = parse_log(data)
            claims(log)
            read_launch(log, 23)
            result: object = log
        except MalformedLog as exc:
            assert "\n" not in str(exc)
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@FUZZ
@given(st.binary(max_size=4096))
def test_any_bytes_are_read_or_refused_in_one_line(data):
    _, peak = read_everything(data)
    assert peak < MEMORY_BOUND


@FUZZ
@given(st.sampled_from([TDX_LOG, OURS]), st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)),
                                                  min_size=1, max_size=8))
def test_mutated_logs_are_read_or_refused_in_one_line(base, flips):
    data = bytearray(base)
    for position, value in flips:
        data[position % len(data)] = value
    _, peak = read_everything(bytes(data))
    assert peak < 4 * MEMORY_BOUND


@FUZZ
@given(st.binary(max_size=600), st.integers(0, 2**32 - 1))
def test_records_with_any_event_round_trip(event, register):
    text = event.decode("latin-1")
    record = encode_record(register, text)
    (parsed,) = parse_log(record).records
    assert (parsed.register, parsed.event_type, parsed.aael) == (register, EV_EVENT_TAG, text)
    assert parsed.digest_matches_event()


def test_the_most_records_a_log_may_hold_are_read_within_the_memory_bound():
    """The worst log by record count (16384 empty separators) is read whole, claims included."""
    data = (b"\x17\0\0\0\x04\0\0\0\0\0\0\0\0\0\0\0") * MAX_RECORDS
    log, peak = read_everything(data)
    assert len(log.records) == MAX_RECORDS and peak < 4 * MEMORY_BOUND
