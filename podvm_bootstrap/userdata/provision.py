"""Write user-data's files into the allow-list, safely.

Rules (docs/userdata.md "User-data format (untrusted)"):

- An entry's path is normalized lexically (posixpath.normpath) and must then be
  exactly one of the allowed paths; relative paths, NUL bytes and trailing
  slashes are refused before that. Nothing is resolved through the filesystem.
- The file goes under `root`, and every directory from `root` down is opened
  with O_NOFOLLOW relative to its parent's descriptor: a symlink anywhere below
  `root` is refused, never followed. Missing directories are created 0755.
- Writes are atomic: a fresh temp file (O_EXCL|O_NOFOLLOW) in the final
  directory, fchmod, fsync, rename over the final name. A symlink planted at
  the final name is replaced, not written through; a failed write leaves the
  old file as it was and no temp file behind.
- Mode: 0644, or the entry's permissions when tighter. Precisely
  ``permissions & 0o644``: never group/other-writable, never executable,
  no setuid/setgid/sticky ('0600' → 0600, '0777' → 0644, '0640' → 0640).
  `owner` is not applied: files belong to the daemon (root), like the
  cloud-api-adaptor's process-user-data.
- Duplicate paths: the last entry wins, as in cloud-init; the earlier ones are
  reported as refused and never written (so no intermediate content is seen).
- When the initdata file is written, its aa.toml, cdh.toml, policy.rego and
  initdata.digest are written beside it by the same writer, after every
  write_files entry (initdata is what attestation covers, so it wins over a
  write_files entry for the same file). An invalid initdata is one line; the
  initdata file itself stays written and a stale initdata.digest is removed.
- When the user-data carries no initdata (no write_files entry for it that
  the allow-list accepts), the cloud-api-adaptor's placeholder initdata is
  written in its place and extracted (initdata.PLACEHOLDER_TOML), as the
  adaptor's process-user-data does: the attestation agent finds an aa.toml,
  and the digest bound into the TPM is one a relying party knows. Unlike the
  adaptor, its empty aa.toml does not replace one the write_files wrote.
"""

from __future__ import annotations

import errno
import os
import posixpath
import secrets
import stat
from collections.abc import Sequence, Set
from dataclasses import dataclass
from pathlib import Path

from podvm_bootstrap.common.errors import UserDataError, show
from podvm_bootstrap.common.fsutil import NotARegularFile, read_regular_file
from podvm_bootstrap.userdata import initdata
from podvm_bootstrap.userdata.cloudconfig import MAX_FILE_SIZE, WriteFile

INITDATA_PATH = "/run/peerpod/initdata"
DEFAULT_MODE = 0o644
_DIR_MODE = 0o755
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class ProvisionResult:
    path: str
    written: bool
    reason: str
    verb: str = ""  # "" → "wrote" / "refused" from `written`; "failed" for I/O errors

    def line(self) -> str:
        """One line for the operator; the untrusted path is escaped so that it
        cannot forge a second line."""
        verb = self.verb or ("wrote" if self.written else "refused")
        if self.written:
            return f"{verb} {show(self.path)} ({self.reason})"
        return f"{verb} {show(self.path)}: {self.reason}"


class _Refused(Exception):
    pass


def file_mode(permissions: int | None) -> int:
    return DEFAULT_MODE if permissions is None else permissions & DEFAULT_MODE


def check_path(path: str, allowed: frozenset[str]) -> str:
    """The normalized allowed path for `path`, or _Refused with the reason."""
    if not isinstance(path, str) or not path:
        raise _Refused("empty path")
    if "\0" in path:
        raise _Refused("path contains a NUL byte")
    if not path.startswith("/"):
        raise _Refused("not an absolute path")
    if path.endswith("/"):
        raise _Refused("path ends with '/'")
    normalized = posixpath.normpath(path)
    if normalized not in allowed:
        raise _Refused("not in the allow-list")
    return normalized


def provision_files(files: Sequence[WriteFile], allowed_paths: Sequence[str], root: Path, *,
                    placeholder: bool = False) -> list[ProvisionResult]:
    """Write the entries; with `placeholder` (a boot's provisioning), the
    adaptor's placeholder initdata when they carry no initdata."""
    allowed = frozenset(allowed_paths)
    results: list[ProvisionResult | None] = [None] * len(files)
    last_for_path: dict[str, int] = {}
    targets: dict[int, str] = {}
    for i, wf in enumerate(files):
        try:
            targets[i] = check_path(wf.path, allowed)
        except _Refused as exc:
            results[i] = ProvisionResult(wf.path, False, str(exc))
            continue
        last_for_path[targets[i]] = i

    initdata_blob: bytes | None = None
    for i, wf in enumerate(files):
        if i not in targets:
            continue
        target = targets[i]
        last = last_for_path[target]
        if last != i:
            results[i] = ProvisionResult(
                wf.path, False, f"superseded by write_files[{files[last].index}] (the last entry for a path wins)")
            continue
        result = results[i] = _write_one(root, target, wf.path, wf.content, file_mode(wf.permissions))
        if target == INITDATA_PATH and result.written:
            initdata_blob = wf.content

    out = [r for r in results if r is not None]
    if initdata_blob is not None:
        out.extend(_extract_initdata(root, initdata_blob))
    elif placeholder and initdata_entry(files, allowed_paths) is None:
        out.extend(_write_placeholder(root, written={targets[i] for i, r in enumerate(results)
                                                     if r is not None and r.written}))
    return out


def _write_placeholder(root: Path, written: Set[str]) -> list[ProvisionResult]:
    """The adaptor's placeholder initdata and what it derives (its digest, an
    empty aa.toml), except a file the user-data's write_files wrote: the
    placeholder configures nothing, and an empty aa.toml must not replace the
    host's."""
    blob = initdata.placeholder_blob()
    placeholder = _write_one(root, INITDATA_PATH, INITDATA_PATH, blob, DEFAULT_MODE)
    if not placeholder.written:
        return [placeholder]
    placeholder.reason += ", the cloud-api-adaptor's placeholder: the user-data carries no initdata"
    return [placeholder, *_extract_initdata(root, blob, keep=written)]


def initdata_entry(files: Sequence[WriteFile], allowed_paths: Sequence[str]) -> bytes | None:
    """The initdata the user-data carries: the content of the last write_files
    entry for the initdata file that the allow-list accepts; None when there is
    none (the placeholder is written then)."""
    allowed = frozenset(allowed_paths)
    found = None
    for wf in files:
        try:
            if check_path(wf.path, allowed) == INITDATA_PATH:
                found = wf.content
        except _Refused:
            continue
    return found


def _extract_initdata(root: Path, blob: bytes, keep: Set[str] = frozenset()) -> list[ProvisionResult]:
    """The initdata's files and digest beside it, except the paths in `keep`."""
    directory = posixpath.dirname(INITDATA_PATH)
    try:
        derived = initdata.extract(blob, MAX_FILE_SIZE)
    except UserDataError as exc:
        _remove_stale(root, posixpath.join(directory, initdata.DIGEST_FILE))
        return [ProvisionResult(INITDATA_PATH, False, f"files not extracted: {exc}", verb="cannot extract")]
    results = []
    for name in initdata.DERIVED_FILES:  # fixed names only, never one from the blob
        path = posixpath.join(directory, name)
        if name in derived and path not in keep:
            results.append(_write_one(root, path, path, derived[name], DEFAULT_MODE))
    return results


def _write_one(root: Path, target: str, shown_path: str, content: bytes, mode: int) -> ProvisionResult:
    if len(content) > MAX_FILE_SIZE:
        return ProvisionResult(shown_path, False, f"content is larger than {MAX_FILE_SIZE} bytes")
    try:
        _safe_write(root, target, content, mode)
    except _Refused as exc:
        return ProvisionResult(shown_path, False, str(exc))
    except OSError as exc:
        return ProvisionResult(shown_path, False, f"cannot write: {exc.strerror or exc}", verb="failed")
    return ProvisionResult(shown_path, True, f"{len(content)} bytes, mode {mode:04o}")


def _open_parent(root: Path, target: str, create: bool) -> int:
    """A descriptor of `target`'s directory under `root`, reached without
    following any symlink below `root` (creating missing directories when
    `create`). The caller closes it."""
    parts = target.strip("/").split("/")[:-1]
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = ""
    try:
        for part in parts:
            walked += "/" + part
            try:
                child = os.open(part, _O_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, _DIR_MODE, dir_fd=fd)
                except FileExistsError:
                    pass
                child = os.open(part, _O_DIR, dir_fd=fd)
                os.fchmod(child, _DIR_MODE)  # not narrowed by the umask
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    what = "a symlink" if _is_symlink(part, fd) else "not a directory"
                    raise _Refused(f"{walked} is {what}; nothing is written through it") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _safe_write(root: Path, target: str, content: bytes, mode: int) -> None:
    name = posixpath.basename(target)
    dir_fd = _open_parent(root, target, create=True)
    try:
        tmp = f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_provisioned(root: Path, target: str, limit: int) -> bytes | None:
    """The content of the file provisioning wrote at `target` under `root`,
    reached the way it is written (no symlink followed anywhere below `root`,
    only a regular file, at most `limit` bytes); None when there is none.
    UserDataError (one line) when it cannot be read as such."""
    try:
        dir_fd = _open_parent(root, target, create=False)
    except FileNotFoundError:
        return None
    except _Refused as exc:
        raise UserDataError(f"{target} not read: {exc}") from None
    except OSError as exc:
        raise UserDataError(f"{target} cannot be read: {exc.strerror or exc}") from None
    try:
        data = read_regular_file(posixpath.basename(target), limit + 1, follow_symlinks=False, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except NotARegularFile as exc:
        raise UserDataError(f"{target} is {exc.kind}, not a regular file; not read") from None
    except OSError as exc:
        what = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise UserDataError(f"{target} cannot be read: {what}") from None
    finally:
        os.close(dir_fd)
    if len(data) > limit:
        raise UserDataError(f"{target} is larger than {limit} bytes; not read")
    return data


def _remove_stale(root: Path, target: str) -> None:
    """Remove a file left by an earlier run (best effort, never through a symlink)."""
    try:
        dir_fd = _open_parent(root, target, create=False)
    except (OSError, _Refused):
        return
    try:
        os.unlink(posixpath.basename(target), dir_fd=dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
