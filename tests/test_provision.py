"""Provisioning write_files into the allow-list, on the real filesystem."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import stat
from pathlib import Path

import pytest

from podvm_bootstrap.config.settings import DEFAULT_ALLOWED_PATHS
from podvm_bootstrap.userdata.cloudconfig import MAX_FILE_SIZE, WriteFile
from podvm_bootstrap.userdata.initdata import PLACEHOLDER_TOML
from podvm_bootstrap.userdata.provision import ProvisionResult, file_mode, provision_files

ALLOWED = DEFAULT_ALLOWED_PATHS


def wf(path: str, content: bytes = b"data", permissions: int | None = None, index: int = 0) -> WriteFile:
    return WriteFile(path=path, content=content, permissions=permissions, index=index)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def peerpod(root: Path) -> Path:
    return root / "run" / "peerpod"


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name] if directory.exists() else []


def test_writes_allowed_files_with_content_and_mode(root):
    results = provision_files([wf("/run/peerpod/apf.json", b'{"pod-network": {}}'),
                               wf("/run/peerpod/aa.toml", b"[token_configs]", 0o600)], ALLOWED, root)
    assert [r.line() for r in results] == [
        "wrote /run/peerpod/apf.json (19 bytes, mode 0644)",
        "wrote /run/peerpod/aa.toml (15 bytes, mode 0600)",
    ]
    assert (peerpod(root) / "apf.json").read_bytes() == b'{"pod-network": {}}'
    assert stat.S_IMODE((peerpod(root) / "apf.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((peerpod(root) / "aa.toml").stat().st_mode) == 0o600
    # created parents are 0755 whatever the umask
    assert stat.S_IMODE(peerpod(root).stat().st_mode) == 0o755
    assert leftovers(peerpod(root)) == []


def test_created_directories_are_0755_under_a_strict_umask(root):
    old = os.umask(0o077)
    try:
        provision_files([wf("/run/peerpod/apf.json")], ALLOWED, root)
    finally:
        os.umask(old)
    assert stat.S_IMODE((root / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE(peerpod(root).stat().st_mode) == 0o755


@pytest.mark.parametrize("permissions, mode", [
    (None, 0o644), (0o600, 0o600), (0o400, 0o400), (0o640, 0o640), (0o777, 0o644), (0o755, 0o644),
    (0o4755, 0o644), (0o2600, 0o600), (0o1666, 0o644), (0o666, 0o644), (0o000, 0o000),
])
def test_mode_is_never_looser_than_0644(root, permissions, mode):
    assert file_mode(permissions) == mode
    provision_files([wf("/run/peerpod/apf.json", permissions=permissions)], ALLOWED, root)
    assert stat.S_IMODE((peerpod(root) / "apf.json").stat().st_mode) == mode


def test_existing_file_mode_is_replaced_not_kept(root):
    peerpod(root).mkdir(parents=True)
    target = peerpod(root) / "apf.json"
    target.write_bytes(b"old")
    target.chmod(0o777)
    provision_files([wf("/run/peerpod/apf.json", b"new")], ALLOWED, root)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


@pytest.mark.parametrize("path, reason", [
    ("/run/peerpod/../../etc/passwd", "not in the allow-list"),
    ("/run/peerpod/./aa.toml/../../x", "not in the allow-list"),
    ("/etc/shadow", "not in the allow-list"),
    ("/run/peerpod/other.json", "not in the allow-list"),
    ("/run/peerpod", "not in the allow-list"),
    ("run/peerpod/aa.toml", "not an absolute path"),
    ("../run/peerpod/aa.toml", "not an absolute path"),
    ("/run/peerpod/aa.toml/", "path ends with '/'"),
    ("/run/peerpod/aa.toml\0.evil", "path contains a NUL byte"),
    ("", "empty path"),
])
def test_paths_outside_the_allow_list_are_refused(root, path, reason):
    results = provision_files([wf(path), wf("/run/peerpod/apf.json", b"still written")], ALLOWED, root)
    assert results[0].written is False
    assert results[0].reason == reason
    assert results[0].line().startswith("refused ")
    assert results[1].written is True
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert written == ["run/peerpod/apf.json"]


def test_traversal_that_normalizes_into_the_list_writes_the_normalized_path(root):
    results = provision_files([wf("/run/peerpod/../peerpod/./aa.toml", b"x")], ALLOWED, root)
    assert results[0].written
    assert (peerpod(root) / "aa.toml").read_bytes() == b"x"


def test_newline_in_path_cannot_forge_an_output_line(root):
    evil = "/etc/x\nwrote /run/peerpod/aa.toml (4 bytes, mode 0644)"
    line = provision_files([wf(evil)], ALLOWED, root)[0].line()
    assert "\n" not in line
    assert line == "refused '/etc/x\\nwrote /run/peerpod/aa.toml (4 bytes, mode 0644)': not in the allow-list"


def test_symlink_at_the_target_name_is_replaced_not_followed(root, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    peerpod(root).mkdir(parents=True)
    link = peerpod(root) / "apf.json"
    link.symlink_to(outside)
    results = provision_files([wf("/run/peerpod/apf.json", b"new content")], ALLOWED, root)
    assert results[0].written
    assert outside.read_bytes() == b"precious"
    assert not link.is_symlink()
    assert stat.S_ISREG(link.lstat().st_mode)
    assert link.read_bytes() == b"new content"


def test_symlinked_parent_directory_is_refused(root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "run").mkdir()
    peerpod(root).symlink_to(elsewhere)
    results = provision_files([wf("/run/peerpod/apf.json"), wf("/run/peerpod/aa.toml")], ALLOWED, root)
    assert [r.written for r in results] == [False, False]
    assert results[0].reason == "/run/peerpod is a symlink; nothing is written through it"
    assert list(elsewhere.iterdir()) == []


def test_symlinked_grandparent_directory_is_refused(root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "peerpod").mkdir(parents=True)
    (root / "run").symlink_to(elsewhere)
    results = provision_files([wf("/run/peerpod/apf.json")], ALLOWED, root)
    assert results[0].reason == "/run is a symlink; nothing is written through it"
    assert list((elsewhere / "peerpod").iterdir()) == []


def test_a_file_where_a_directory_belongs_is_refused(root):
    (root / "run").mkdir()
    peerpod(root).write_bytes(b"not a dir")
    results = provision_files([wf("/run/peerpod/apf.json")], ALLOWED, root)
    assert results[0].reason == "/run/peerpod is not a directory; nothing is written through it"
    assert peerpod(root).read_bytes() == b"not a dir"


def test_root_itself_may_be_a_symlink(tmp_path):
    real = tmp_path / "real-root"
    real.mkdir()
    (tmp_path / "root-link").symlink_to(real)
    results = provision_files([wf("/run/peerpod/apf.json", b"x")], ALLOWED, tmp_path / "root-link")
    assert results[0].written
    assert (real / "run/peerpod/apf.json").read_bytes() == b"x"


def test_oversize_content_is_refused(root):
    results = provision_files([wf("/run/peerpod/apf.json", b"\0" * (MAX_FILE_SIZE + 1)),
                               wf("/run/peerpod/aa.toml", b"ok")], ALLOWED, root)
    assert results[0].written is False
    assert results[0].reason == f"content is larger than {MAX_FILE_SIZE} bytes"
    assert not (peerpod(root) / "apf.json").exists()
    assert results[1].written


def test_duplicate_paths_last_wins_and_earlier_are_reported(root):
    results = provision_files([wf("/run/peerpod/apf.json", b"first", index=0),
                               wf("/run/peerpod/aa.toml", b"aa", index=1),
                               wf("/run/peerpod/./apf.json", b"second", index=2)], ALLOWED, root)
    assert [r.written for r in results] == [False, True, True]
    assert results[0].line() == ("refused /run/peerpod/apf.json: superseded by write_files[2] "
                                 "(the last entry for a path wins)")
    assert (peerpod(root) / "apf.json").read_bytes() == b"second"


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(root):
    peerpod(root).mkdir(parents=True)
    (peerpod(root) / "apf.json").write_bytes(b"old")
    # The final name is a non-empty directory: the rename fails after the temp
    # file was fully written, which must then be removed.
    (peerpod(root) / "aa.toml").mkdir()
    (peerpod(root) / "aa.toml" / "keep").write_bytes(b"k")
    results = provision_files([wf("/run/peerpod/aa.toml", b"new"), wf("/run/peerpod/apf.json", b"newer")],
                              ALLOWED, root)
    assert results[0].written is False
    assert results[0].line().startswith("failed /run/peerpod/aa.toml: cannot write: ")
    assert (peerpod(root) / "aa.toml" / "keep").read_bytes() == b"k"
    assert results[1].written
    assert leftovers(peerpod(root)) == []


def test_no_temp_files_after_success(root):
    for _ in range(3):
        provision_files([wf(p) for p in ALLOWED if not p.endswith("initdata")], ALLOWED, root)
    names = sorted(p.name for p in peerpod(root).iterdir())
    assert names == sorted(Path(p).name for p in ALLOWED if not p.endswith("initdata"))


def test_result_line_shapes():
    assert ProvisionResult("/run/peerpod/a", True, "3 bytes, mode 0644").line() == \
        "wrote /run/peerpod/a (3 bytes, mode 0644)"
    assert ProvisionResult("/etc/shadow", False, "not in the allow-list").line() == \
        "refused /etc/shadow: not in the allow-list"


# --- initdata -----------------------------------------------------------------

INITDATA_TOML = (b'algorithm = "sha384"\nversion = "0.1.0"\n[data]\n'
                 b'"aa.toml" = "[token_configs]\\n"\n"cdh.toml" = "socket = \'x\'\\n"\n'
                 b'"policy.rego" = "package agent_policy\\n"\n')


def initdata_blob(toml: bytes = INITDATA_TOML) -> bytes:
    return base64.b64encode(gzip.compress(toml)) + b"\n"


def test_initdata_is_extracted_beside_it(root):
    results = provision_files([wf("/run/peerpod/initdata", initdata_blob())], ALLOWED, root)
    assert [r.path for r in results] == ["/run/peerpod/initdata", "/run/peerpod/aa.toml", "/run/peerpod/cdh.toml",
                                         "/run/peerpod/policy.rego", "/run/peerpod/initdata.digest"]
    assert all(r.written for r in results)
    d = peerpod(root)
    assert (d / "initdata").read_bytes() == initdata_blob()
    assert (d / "aa.toml").read_bytes() == b"[token_configs]\n"
    assert (d / "cdh.toml").read_bytes() == b"socket = 'x'\n"
    assert (d / "policy.rego").read_bytes() == b"package agent_policy\n"
    assert (d / "initdata.digest").read_bytes() == hashlib.sha384(INITDATA_TOML).hexdigest().encode()
    assert stat.S_IMODE((d / "policy.rego").stat().st_mode) == 0o644


def test_initdata_wins_over_a_write_files_entry_for_the_same_file(root):
    results = provision_files([wf("/run/peerpod/initdata", initdata_blob()),
                               wf("/run/peerpod/aa.toml", b"from write_files")], ALLOWED, root)
    assert all(r.written for r in results)
    assert (peerpod(root) / "aa.toml").read_bytes() == b"[token_configs]\n"


def test_derived_files_never_go_through_a_symlink(root, tmp_path):
    outside = tmp_path / "outside-policy"
    outside.write_bytes(b"precious")
    peerpod(root).mkdir(parents=True)
    (peerpod(root) / "policy.rego").symlink_to(outside)
    provision_files([wf("/run/peerpod/initdata", initdata_blob())], ALLOWED, root)
    assert outside.read_bytes() == b"precious"
    assert (peerpod(root) / "policy.rego").read_bytes() == b"package agent_policy\n"


def test_invalid_initdata_is_one_line_and_the_file_stays_written(root):
    peerpod(root).mkdir(parents=True)
    (peerpod(root) / "initdata.digest").write_bytes(b"stale")
    results = provision_files([wf("/run/peerpod/initdata", b"@@not base64@@")], ALLOWED, root)
    assert len(results) == 2
    assert results[0].written and (peerpod(root) / "initdata").read_bytes() == b"@@not base64@@"
    assert results[1].written is False
    assert results[1].line() == ("cannot extract /run/peerpod/initdata: files not extracted: "
                                 "initdata is not valid base64")
    assert not (peerpod(root) / "initdata.digest").exists()
    assert not (peerpod(root) / "aa.toml").exists()


def test_initdata_not_extracted_when_initdata_is_not_allowed(root):
    allowed = [p for p in ALLOWED if not p.endswith("/initdata")]
    results = provision_files([wf("/run/peerpod/initdata", initdata_blob())], allowed, root)
    assert len(results) == 1 and not results[0].written
    assert not peerpod(root).exists()


# --- the adaptor's placeholder initdata -----------------------------------------

PLACEHOLDER_DIGEST = b"adb48cc14fea9403d3d51f3b5f5068fd4d80445a14e94f1b3d5dbabaad66478d"  # the adaptor's


def test_without_initdata_the_adaptors_placeholder_is_written_and_extracted(root):
    results = provision_files([wf("/run/peerpod/apf.json")], ALLOWED, root, placeholder=True)
    assert [r.line() for r in results] == [
        "wrote /run/peerpod/apf.json (4 bytes, mode 0644)",
        "wrote /run/peerpod/initdata (108 bytes, mode 0644, the cloud-api-adaptor's placeholder: "
        "the user-data carries no initdata)",
        "wrote /run/peerpod/aa.toml (0 bytes, mode 0644)",
        "wrote /run/peerpod/initdata.digest (64 bytes, mode 0644)",
    ]
    d = peerpod(root)
    assert gzip.decompress(base64.b64decode((d / "initdata").read_bytes())) == PLACEHOLDER_TOML
    assert (d / "initdata.digest").read_bytes() == PLACEHOLDER_DIGEST
    assert (d / "aa.toml").read_bytes() == b""


def test_the_placeholders_empty_aa_toml_does_not_replace_the_user_datas(root):
    results = provision_files([wf("/run/peerpod/aa.toml", b"[token_configs]")], ALLOWED, root, placeholder=True)
    assert [r.path for r in results] == ["/run/peerpod/aa.toml", "/run/peerpod/initdata",
                                         "/run/peerpod/initdata.digest"]
    assert (peerpod(root) / "aa.toml").read_bytes() == b"[token_configs]"
    assert (peerpod(root) / "initdata.digest").read_bytes() == PLACEHOLDER_DIGEST


def test_the_user_datas_initdata_means_no_placeholder(root):
    provision_files([wf("/run/peerpod/initdata", initdata_blob())], ALLOWED, root, placeholder=True)
    assert (peerpod(root) / "initdata").read_bytes() == initdata_blob()
    assert (peerpod(root) / "initdata.digest").read_bytes() == hashlib.sha384(INITDATA_TOML).hexdigest().encode()


def test_an_initdata_the_allow_list_refuses_is_no_initdata(root):
    allowed = [p for p in ALLOWED if not p.endswith("/initdata")]
    results = provision_files([wf("/run/peerpod/initdata", initdata_blob())], allowed, root, placeholder=True)
    assert results[0].line() == "refused /run/peerpod/initdata: not in the allow-list"
    assert (peerpod(root) / "initdata.digest").read_bytes() == PLACEHOLDER_DIGEST


def test_an_invalid_initdata_is_not_replaced_by_the_placeholder(root):
    """The owner sent initdata that cannot be read: no digest, nothing a relying party would accept."""
    provision_files([wf("/run/peerpod/initdata", b"@@not base64@@")], ALLOWED, root, placeholder=True)
    assert (peerpod(root) / "initdata").read_bytes() == b"@@not base64@@"
    assert not (peerpod(root) / "initdata.digest").exists()
