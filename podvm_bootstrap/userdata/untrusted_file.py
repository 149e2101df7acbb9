"""Reading user-data from a file whose content (and kind) the host controls:
the file provider's file on the cidata medium, or a --user-data FILE.

fsutil.read_regular_file opens without blocking (a FIFO planted at the path
would otherwise wait for a writer forever) and reads only a regular file,
bounded; here its failures become one user-data error line."""

from __future__ import annotations

import errno
from pathlib import Path

from podvm_bootstrap.common.errors import UserDataError
from podvm_bootstrap.common.fsutil import NotARegularFile, read_regular_file


def read_userdata_file(path: Path, max_size: int, *, what: str, follow_symlinks: bool) -> bytes | None:
    """The bytes of the regular file at `path`; None when there is nothing at
    `path`. UserDataError (one line) when it is anything else than a regular
    file (with follow_symlinks=False, a symbolic link too), is larger than
    `max_size` bytes, or cannot be read."""
    try:
        data = read_regular_file(path, max_size + 1, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        return None
    except NotARegularFile as exc:
        raise UserDataError(f"{what} {path} is {exc.kind}, not a regular file; refused") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise UserDataError(f"{what} {path} is a symbolic link; refused") from None
        raise UserDataError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > max_size:
        raise UserDataError(f"{what} {path} is larger than max_size ({max_size} bytes); refused")
    return data
