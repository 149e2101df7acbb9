"""Files: atomic writes (a temp file in the same directory, fsync, rename: a
reader never sees a half-written file, and a crash leaves either the old
content or the new one), and the bounded reads every module uses
(read_bounded for a baked or store file, read_regular_file for a file the
host controls, which may be a FIFO or a device)."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Literal, overload


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` atomically with `mode`. The final rename replaces
    a symlink at `path` itself rather than writing through it."""
    directory = path.parent
    # A random part: a temp file left by a killed earlier run never blocks this one.
    tmp = directory / f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    # O_EXCL|O_NOFOLLOW: never reuse or follow something planted at the temp name.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, path)
        _fsync_directory(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_if_changed(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Atomically write `data` unless `path` already holds exactly it (and the
    mode). Returns whether the file was written."""
    try:
        st = os.lstat(path)
        if (st.st_mode & 0o7777) == mode and not os.path.islink(path):
            with open(path, "rb") as f:
                if f.read() == data:
                    return False
    except FileNotFoundError:
        pass
    atomic_write(path, data, mode)
    return True


class NotARegularFile(OSError):
    """What read_regular_file found is not a regular file; `kind` says what it is."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"not a regular file ({kind})", str(path))
        self.kind = kind


def file_kind(mode: int) -> str:
    """What an st_mode is, for messages ("a FIFO", "a directory", ...)."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def read_at_most(path: Path, limit: int, *, missing_ok: bool = True) -> bytes | None:
    """Up to limit + 1 bytes of `path`; None when it does not exist (with
    missing_ok=False: FileNotFoundError). A caller that gets more than `limit`
    bytes knows the file is larger (read_bounded refuses it)."""
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return None


@overload
def read_bounded(path: Path, limit: int, too_large: Callable[[str], Exception], *, what: str | None = None,
                 missing_ok: Literal[False]) -> bytes: ...
@overload
def read_bounded(path: Path, limit: int, too_large: Callable[[str], Exception], *, what: str | None = None,
                 missing_ok: bool = True) -> bytes | None: ...
def read_bounded(path: Path, limit: int, too_large: Callable[[str], Exception], *, what: str | None = None,
                 missing_ok: bool = True) -> bytes | None:
    """The bytes of a baked or store file of at most `limit` bytes: a larger
    one is refused with too_large("<what> is larger than <limit> bytes"),
    `what` being the path unless given. None when it does not exist (with
    missing_ok=False: FileNotFoundError); other OSErrors pass."""
    data = read_at_most(path, limit, missing_ok=missing_ok)
    if data is not None and len(data) > limit:
        raise too_large(f"{what or path} is larger than {limit} bytes")
    return data


def read_json(path: Path, limit: int) -> object | None:
    """The JSON value of a runtime file the daemon wrote (state.json,
    plan.json); None when it is missing, unreadable, larger than `limit`
    bytes or not JSON: a broken record is no record."""
    try:
        data = read_bounded(path, limit, ValueError)
        return json.loads(data) if data is not None else None
    except (OSError, ValueError, RecursionError):
        return None


def read_regular_file(path: Path | str, limit: int, *, follow_symlinks: bool = True,
                      dir_fd: int | None = None) -> bytes:
    """At most `limit` bytes of `path`, which must be a regular file: a FIFO or
    a device planted there can neither block the read nor feed it forever
    (O_NONBLOCK makes opening a FIFO return at once, O_NOCTTY keeps a
    terminal from becoming ours). With follow_symlinks=False a symbolic link
    at `path` fails the open (ELOOP). OSError otherwise (NotARegularFile when
    it is something else than a regular file). `dir_fd`: `path` is relative
    to that directory."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(Path(path), file_kind(mode))
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
