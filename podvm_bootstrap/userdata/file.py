"""The file provider: a user-data file in the image's file system (a libvirt
cidata ISO mounted by the image, or a BYOM upload), under --root."""

from __future__ import annotations

from pathlib import Path

from podvm_bootstrap.errors import UserDataError
from podvm_bootstrap.paths import under_root


def path_of(root: Path, file: str) -> Path:
    return under_root(root, file)


def fetch(root: Path, file: str, max_size: int) -> bytes | None:
    """The file's bytes; None when there is no such file."""
    path = path_of(root, file)
    try:
        with open(path, "rb") as f:
            data = f.read(max_size + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserDataError(f"file: cannot read user-data {path}: {exc.strerror or exc}") from None
    if len(data) > max_size:
        raise UserDataError(f"file: user-data {path} is larger than max_size ({max_size} bytes); refused")
    return data
