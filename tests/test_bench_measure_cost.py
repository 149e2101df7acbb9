"""bench/measure_cost.py's pure helpers: reading the daemon's timing lines,
the boots' order, the paired differences and the rows. No VM, no timing; the
benchmark itself runs with `make bench` or bench/measure_cost.py."""

import pytest
import yaml

from bench.measure_cost import MEASURE_TARGET, boot_order, daemon_timings, paired_differences, rows_for, with_tpm

STEP_TPM = ("measured launch step took 2.6 ms for 5 components (waited 0.3 ms for tpm2-pytss's bindings, "
            "opened the TPM in 0.9 ms)")
STEP_NONE = "measured launch step took 0.6 ms for 5 components (no TPM opened)"
PRELOAD = "tpm2-pytss's bindings loaded ahead of the measurement in 64.2 ms"


def test_timings_of_a_measured_boot():
    t = daemon_timings(["fetching the user-data, then planning", PRELOAD, STEP_TPM, "READY"])
    assert t == pytest.approx({"step_s": 0.0026, "components": 5, "import_wait_s": 0.0003, "open_s": 0.0009,
                               "preload_s": 0.0642})


def test_timings_of_an_unmeasured_boot_and_of_none():
    assert daemon_timings([STEP_NONE]) == pytest.approx(
        {"step_s": 0.0006, "components": 5, "import_wait_s": None, "open_s": None, "preload_s": None})
    assert daemon_timings(["something else"]) == {"step_s": None, "components": None, "import_wait_s": None,
                                                   "open_s": None, "preload_s": None}


def test_the_last_line_of_each_kind_wins():
    later = STEP_TPM.replace("2.6 ms", "7.5 ms")
    assert daemon_timings([STEP_TPM, later])["step_s"] == pytest.approx(0.0075)


def test_boot_order_alternates_which_kind_goes_first():
    assert boot_order(3) == ["tpm", "none", "none", "tpm", "tpm", "none"]
    order = boot_order(7)
    assert order.count("tpm") == order.count("none") == 7


def boot(kind, all_ready, step=0.002, first=None):
    return {"kind": kind, "all_ready_s": all_ready, "ready_s": all_ready, "step_s": step, "components": 5,
            "first_start_unit_s": first, "cpu_s": None,
            "import_wait_s": 0.0 if kind == "tpm" else None, "open_s": 0.001 if kind == "tpm" else None,
            "preload_s": 0.06 if kind == "tpm" else None}


def test_paired_differences_are_tpm_minus_none_whichever_went_first():
    boots = [boot("tpm", 0.51), boot("none", 0.50), boot("none", 0.48), boot("tpm", 0.47)]
    assert paired_differences(boots) == pytest.approx([0.01, -0.01])
    with pytest.raises(ValueError):
        paired_differences([boot("tpm", 0.5), boot("tpm", 0.5)])


def test_with_tpm_sets_measure_and_keeps_the_rest():
    settings = {"userdata": {"provider": "aws"}, "measure": {"tpm": "auto", "pcr": 16}}
    out = yaml.safe_load(with_tpm(settings, "swtpm:host=127.0.0.1,port=2321"))
    assert out == {"userdata": {"provider": "aws"},
                   "measure": {"tpm": "swtpm:host=127.0.0.1,port=2321", "pcr": 23, "initdata_pcr": 16}}
    assert settings["measure"]["tpm"] == "auto"   # the caller's copy is untouched


def test_rows_give_the_median_pair_differences_and_judge_the_first_start_unit_and_the_step():
    boots = []
    for i, (t, n) in enumerate([(0.52, 0.50), (0.49, 0.50), (0.53, 0.50)]):
        pair = [boot("tpm", t, step=0.002 + i * 0.001, first=0.250 + i * 0.01),
                boot("none", n, step=0.0005, first=0.250)]
        boots += pair if i % 2 == 0 else pair[::-1]
    rows = rows_for(boots)
    first, start_unit, step = rows[0], rows[1], rows[2]
    assert "first StartUnit" in start_unit.metric and start_unit.target is MEASURE_TARGET
    assert start_unit.value == pytest.approx(0.01) and start_unit.verdict == "MISSED"   # 10 ms is not < 10 ms
    assert "5 components" in first.metric
    assert first.value == pytest.approx(0.02) and first.target is None   # too noisy to judge 10 ms: next rows
    assert first.measured.n == first.baseline.n == 3
    assert step.value == pytest.approx(0.003) and step.measured.high == pytest.approx(0.004) and step.verdict == "ok"
    assert step.baseline.median == pytest.approx(0.0005)
    assert "waited 0.0 ms at most in 3 measured boots" in rows[-1].note
