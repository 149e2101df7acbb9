"""Atomic writes of state, plans and units: all or nothing, never through a
symlink, never blocked by what a killed earlier run left behind."""

from __future__ import annotations

import os
from pathlib import Path

from podvm_bootstrap.common.fsutil import atomic_write, read_at_most, read_bounded, read_json, write_if_changed


def test_writes_the_content_and_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"{}", 0o600)
    assert target.read_bytes() == b"{}"
    assert target.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    (tmp_path / "units").mkdir()
    target = tmp_path / "units" / "a.service"
    target.symlink_to(outside)
    atomic_write(target, b"new")
    assert outside.read_bytes() == b"keep"
    assert not target.is_symlink() and target.read_bytes() == b"new"


def test_a_temp_file_left_by_a_killed_run_with_the_same_pid_does_not_block(tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    (tmp_path / f".plan.json.tmp-{os.getpid()}").write_bytes(b"half")
    atomic_write(target, b"whole")
    assert target.read_bytes() == b"whole"


def test_write_if_changed_rewrites_nothing_when_content_and_mode_are_the_same(tmp_path: Path) -> None:
    target = tmp_path / "a.service"
    assert write_if_changed(target, b"x") is True
    inode = target.stat().st_ino
    assert write_if_changed(target, b"x") is False
    assert target.stat().st_ino == inode
    assert write_if_changed(target, b"y") is True
    assert target.read_bytes() == b"y"


class Refused(Exception):
    pass


def test_read_bounded_reads_up_to_the_limit_and_refuses_more(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert read_bounded(path, 100, Refused) == b"x" * 100
    try:
        read_bounded(path, 99, Refused)
    except Refused as exc:
        assert str(exc) == f"{path} is larger than 99 bytes"
    else:
        raise AssertionError("a file over the limit was read")
    try:
        read_bounded(path, 10, Refused, what="signature data")
    except Refused as exc:
        assert str(exc) == "signature data is larger than 10 bytes"
    else:
        raise AssertionError("a file over the limit was read")


def test_read_bounded_missing_file_is_none_or_file_not_found(tmp_path: Path) -> None:
    assert read_bounded(tmp_path / "absent", 10, Refused) is None
    assert read_at_most(tmp_path / "absent", 10) is None
    for read in (lambda: read_bounded(tmp_path / "absent", 10, Refused, missing_ok=False),
                 lambda: read_at_most(tmp_path / "absent", 10, missing_ok=False)):
        try:
            read()
        except FileNotFoundError:
            pass
        else:
            raise AssertionError("a missing required file was not reported")


def test_read_at_most_leaves_the_refusal_to_its_caller(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.write_bytes(b"y" * 50)
    assert read_at_most(path, 10) == b"y" * 11


def test_read_json_is_none_for_anything_but_a_bounded_json_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"components": {}}')
    assert read_json(path, 100) == {"components": {}}
    assert read_json(path, 10) is None                       # larger than the bound
    assert read_json(tmp_path / "absent.json", 100) is None
    path.write_text('{"components": ')
    assert read_json(path, 100) is None                      # not JSON
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert read_json(path, 1_000_000) is None                # nesting past the parser's recursion
    assert read_json(tmp_path, 100) is None                  # a directory: unreadable
