"""Reading a file whose content (and kind) the host controls: the file
provider's user-data on the cidata medium, or a --user-data FILE.

The open never blocks (O_NONBLOCK: a FIFO planted at the path would otherwise
wait for a writer forever, and a device could be a terminal: O_NOCTTY), then
fstat on the open descriptor decides: only a regular file is read, and at
most max_size + 1 bytes of it."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from podvm_bootstrap.errors import UserDataError

_READ_CHUNK = 1024 * 1024


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: Path, max_size: int, *, what: str, follow_symlinks: bool) -> bytes | None:
    """The bytes of the regular file at `path`; None when there is nothing at
    `path`. UserDataError (one line) when it is anything else than a regular
    file (with follow_symlinks=False, a symbolic link too), is larger than
    `max_size` bytes, or cannot be read."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise UserDataError(f"{what} {path} is a symbolic link; refused") from None
        raise UserDataError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UserDataError(f"{what} {path} is {_kind(mode)}, not a regular file; refused")
        data = bytearray()
        while len(data) <= max_size:  # bounded: each pass reads at least one byte or ends
            chunk = os.read(fd, min(_READ_CHUNK, max_size + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise UserDataError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_size:
        raise UserDataError(f"{what} {path} is larger than max_size ({max_size} bytes); refused")
    return bytes(data)
