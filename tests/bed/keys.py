"""The test bed's release key: an ECDSA P-256 key pair made once per cache
($PODVM_CACHE) on first use, never committed. The image build signs the
stand-ins with it and bakes its public half as /etc/podvm-bootstrap/keys/release.pub;
tests sign the overrides they push with it. A test fixture, not a secret."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tests.bed.cache import cache_dir
from tests.bed.cosign import SigningKey

KEY_NAME = "release"
# The name a stand-in release is signed for: the real repository, as the
# project's release pipeline would sign it (pulls reach it through the mirror).
STANDIN_IDENTITY = "quay.io/{repository}"


def release_key(cache: Path | None = None) -> SigningKey:
    """The cache's test release key, made on first use. Concurrent first uses
    agree: the key file is published with link(2), which never replaces one."""
    path = (cache or cache_dir()) / "test-release-key.pem"
    if not path.exists():
        key = SigningKey.generate(KEY_NAME)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_pem)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return SigningKey.load(KEY_NAME, path.read_bytes())


def copy_baked_keys(image: Any, root: Path) -> None:
    """The image's /etc/podvm-bootstrap/keys under `root`, for a `plan` run on
    this machine with the image's baked policy.yaml (its key paths are under --root)."""
    for lower in image.lowerdirs:
        keys = Path(lower) / "etc/podvm-bootstrap/keys"
        if keys.is_dir():
            shutil.copytree(keys, root / "etc/podvm-bootstrap/keys", dirs_exist_ok=True)
