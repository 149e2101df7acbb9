"""The bounds of `collect` (podvm_bootstrap.cli.collect): a command's output cut
at its cap (its head, or a journal's tail), a command killed at its
timeout, the bundle's cap over all parts, the whole collect's deadline, and
parts not scrubbed by the deadline dropped rather than kept. Real
subprocesses; a fake clock for the deadline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from podvm_bootstrap.cli import collect
from podvm_bootstrap.cli.collect import SCRUB_RESERVE, Collector, Part, run_bounded, scrub_parts
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.settings import Settings


def test_a_head_cap_keeps_the_first_bytes_and_stops_the_command():
    started = time.monotonic()
    ran = run_bounded(["yes", "line"], timeout=30, cap=1000)
    assert ran.stdout == b"line\n" * 200 and ran.truncated
    assert time.monotonic() - started < 10   # killed at the cap, not at the timeout


def test_a_tail_cap_keeps_the_last_bytes():
    ran = run_bounded(["seq", "1", "200000"], timeout=30, cap=100, keep_tail=True)
    assert len(ran.stdout) == 100 and ran.stdout.endswith(b"\n199999\n200000\n") and ran.truncated
    assert ran.returncode == 0


def test_a_command_is_killed_at_its_timeout_with_its_output_so_far():
    started = time.monotonic()
    ran = run_bounded(["sh", "-c", "echo started; echo oops >&2; sleep 60"], timeout=0.5, cap=1000)
    assert ran.returncode is None and ran.stdout == b"started\n" and ran.stderr == "oops\n"
    assert time.monotonic() - started < 10


def test_a_command_that_is_not_installed():
    with pytest.raises(FileNotFoundError):
        run_bounded(["podvm-no-such-command"], timeout=5, cap=10)


def collector(tmp_path: Path, clock=time.monotonic, **kwargs) -> Collector:
    return Collector(Paths.build(root=str(tmp_path)), Settings(), clock=clock, **kwargs)


def test_the_part_cap_cuts_a_file_and_says_so(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 5000)
    c = collector(tmp_path, part_cap=1000)
    part = c.file("big", tmp_path / "big")
    assert part.data == b"x" * 1000 and part.truncated == "its first 1000 bytes"
    assert part.manifest()["truncated"] == "its first 1000 bytes"


def test_a_command_stopped_at_its_cap_is_cut_not_failed(tmp_path):
    part = collector(tmp_path, part_cap=1000).command("yes", ["yes", "line"])
    assert part.data == b"line\n" * 200 and part.truncated == "its first 1000 bytes" and part.error is None


def test_the_bundle_cap_cuts_then_refuses_parts(tmp_path):
    c = collector(tmp_path, total_cap=1500)
    c.add(Part("a", data=b"a" * 1000))
    cut = c.add(Part("b", data=b"b" * 1000))
    refused = c.add(Part("c", data=b"c" * 10))
    assert cut.data == b"b" * 500 and "the bundle's cap of 1500 bytes" in str(cut.truncated)
    assert refused.data is None and refused.error == "not kept: the bundle's cap of 1500 bytes was reached"


def test_past_the_deadline_commands_are_skipped_with_the_reason(tmp_path):
    now = [0.0]
    c = collector(tmp_path, clock=lambda: now[0], deadline=30)
    assert c.command("first", ["true"]).exit_status == 0
    now[0] = 30 - SCRUB_RESERVE
    skipped = c.command("second", ["true"])
    assert skipped.command is None and skipped.error == "not collected: the collect's deadline of 30s passed"


def test_a_command_gets_no_more_than_the_time_left(tmp_path):
    c = collector(tmp_path, deadline=SCRUB_RESERVE + 1)
    started = time.monotonic()
    part = c.command("slow", ["sleep", "60"])
    assert time.monotonic() - started < 10
    assert part.exit_status is None and part.error is not None and "did not finish within" in part.error


def test_parts_not_scrubbed_by_the_deadline_are_dropped(tmp_path):
    c = collector(tmp_path, clock=lambda: 0.0, deadline=30)
    c.secrets.add("planted-secret-1")
    first = c.add(Part("first", data=b"x planted-secret-1 y"))
    second = c.add(Part("second", data=b"planted-secret-1"))
    ticks = iter([0.0, 31.0])   # the deadline passes once the first part is scrubbed
    c.clock = lambda: next(ticks)
    scrub_parts(c)
    assert first.data == b"x <redacted> y" and first.scrubbed == 1
    assert second.data is None and second.error == "dropped: not scrubbed of secrets before the collect's deadline"


def test_a_file_its_rule_fails_on_is_withheld_whole_and_searched_for(tmp_path, monkeypatch):
    peerpod = tmp_path / "run" / "peerpod"
    peerpod.mkdir(parents=True)
    (peerpod / "aa.toml").write_text('token = "planted-secret-2"\n')

    def broken_rule(name, data, **kwargs):
        raise RuntimeError("a bug in a rule")

    monkeypatch.setattr(collect, "redact", broken_rule)
    c = collector(tmp_path)
    collect.summarize_secrets(c)
    assert 'token = "planted-secret-2"' in c.secrets
    (summary,) = json.loads(c.parts[0].data)["files"]
    assert summary["file"] == "/run/peerpod/aa.toml" and summary["error"] == (
        "cannot be summarized (RuntimeError): withheld whole")
    assert "planted-secret-2" not in c.parts[0].data.decode()


def test_a_child_left_holding_the_pipes_is_not_waited_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    ran = run_bounded(["sh", "-c", "echo done; sleep 30 & echo $! > left.pid"], timeout=20, cap=1000)
    assert ran.stdout == b"done\n" and ran.returncode == 0
    assert time.monotonic() - started < 10
    left = int(Path("left.pid").read_text())
    for _ in range(50):   # the child it left, ended with its process group
        if not Path(f"/proc/{left}").exists() or "Z" in Path(f"/proc/{left}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the child {left} was left running")
