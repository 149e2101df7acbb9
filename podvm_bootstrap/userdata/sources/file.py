"""The file provider: a user-data file in the image's file system (a libvirt
cidata ISO mounted by the image, or a BYOM upload), under --root."""

from __future__ import annotations

from pathlib import Path

from podvm_bootstrap.common.paths import under_root
from podvm_bootstrap.userdata.untrusted_file import read_userdata_file


def path_of(root: Path, file: str) -> Path:
    return under_root(root, file)


def fetch(root: Path, file: str, max_size: int) -> bytes | None:
    """The file's bytes; None when there is no such file. The file is on a
    medium the host writes: only a regular file is read, never a symbolic
    link (followed, it could name any file of the VM), a FIFO or a device."""
    return read_userdata_file(path_of(root, file), max_size, what="file: user-data", follow_symlinks=False)
