"""`status`: a component is `measured` only when this boot's launch went into
the TPM and its records name the digest the component runs; the initdata
binding is shown beside it."""

from __future__ import annotations

from podvm_bootstrap.cli.status import collect_status, format_status
from podvm_bootstrap.runtime.state import write_state

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def state(tmp_path, measurement):
    write_state(tmp_path, {
        "daemon": {"pid": 0, "phase": "supervising", "ready": True, "status": "2/2 ready"},
        "boot": {"measurement": measurement} if measurement is not None else {},
        "components": {"aa": {"unit": "aa.service", "digest": D1, "state": "ready"},
                       "ka": {"unit": "ka.service", "digest": D2, "state": "ready"}},
    })
    return collect_status(tmp_path, live_reader=lambda units: {})


def record(measured: bool, **extra):
    return {"eventlog": "/run/attestation-agent/eventlog", "tpm": "swtpm:host=127.0.0.1,port=1", "pcr": 23,
            "measured": measured, "value": "sha256:" + "a" * 64, "components": {"aa": D1, "ka": D1},
            "error": None, **extra}


def test_measured_only_for_the_digest_the_log_names(tmp_path):
    st = state(tmp_path, record(True))
    assert {c["name"]: c["measured"] for c in st["components"]} == {"aa": True, "ka": False}
    assert "measured launch: PCR 23 of TPM swtpm:host=127.0.0.1,port=1: sha256:" + "a" * 64 in format_status(st)


def test_unmeasured_launch_says_why(tmp_path):
    st = state(tmp_path, record(False, tpm="none"))
    assert [c["measured"] for c in st["components"]] == [False, False]
    assert "measured launch: NOT measured (measure.tpm: none)" in format_status(st)
    st = state(tmp_path, None)
    assert [c["measured"] for c in st["components"]] == [False, False] and st["measurement"] is None


INITDATA = {"pcr": 8, "digest": "sha256:" + "b" * 64, "expected": "sha256:" + "c" * 64}


def test_the_initdata_binding_is_shown(tmp_path):
    text = format_status(state(tmp_path, record(True, initdata={**INITDATA, "bound": True, "error": None})))
    assert f"initdata: sha256:{'b' * 64} bound into PCR 8: sha256:{'c' * 64}" in text.splitlines()
    text = format_status(state(tmp_path, record(False, tpm="none", initdata={**INITDATA, "bound": False,
                                                                             "error": None})))
    assert f"initdata: NOT bound into PCR 8 (measure.tpm: none); digest sha256:{'b' * 64}" in text.splitlines()
    unreadable = {"pcr": 8, "digest": None, "expected": None, "bound": False,
                  "error": "/run/peerpod/initdata.digest does not exist"}
    text = format_status(state(tmp_path, record(True, initdata=unreadable)))
    assert "initdata: NOT bound into PCR 8 (/run/peerpod/initdata.digest does not exist); digest None" in text
    assert "initdata:" not in format_status(state(tmp_path, record(True, initdata=None)))
