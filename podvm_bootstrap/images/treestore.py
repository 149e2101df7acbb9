"""An image tree's container storage, from the build machine (no chroot).

`bake` runs on the machine that builds a pod VM image, with the image's tree
at TREE. Images go into the tree's own store (`TREE/var/lib/containers/storage`,
or the graphroot the tree's storage.conf names), or into a separate store
inside the tree that the tree's storage.conf lists under
`storage.options.additionalimagestores` (read-only at run time). podman runs
on the build machine with --root/--runroot/--storage-driver pointed into the
tree, a storage.conf of our own (the build machine's must not leak in) and
the tree's registries.d (the signatures the image expects are fetched with
the images); skopeo resolves tags. Both read the build machine's
registries.conf, or the one CONTAINERS_REGISTRIES_CONF names.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from podvm_bootstrap.common.errors import BootstrapError, ConfigError, UsageError, one_line
from podvm_bootstrap.common.fsutil import read_at_most, read_bounded
from podvm_bootstrap.common.paths import under_root
from podvm_bootstrap.images.containers_store import MAX_STORE_INDEX
from podvm_bootstrap.images.imageref import ImageRef
from podvm_bootstrap.images.storage import MAX_MANIFEST, ImageError, verify_in_storage

STORAGE_CONF = "/etc/containers/storage.conf"
REGISTRIES_D = "/etc/containers/registries.d"
DEFAULT_GRAPHROOT = "/var/lib/containers/storage"
DEFAULT_DRIVER = "overlay"  # containers-storage's default, and Debian's
RESOLVE_TIMEOUT = 120.0
PULL_TIMEOUT = 1800.0
MAX_STORAGE_CONF = 1024 * 1024


class BakeError(BootstrapError):
    """The image build must fail: an image cannot be had, or is not what it claims."""


@dataclass(frozen=True)
class StoreLayout:
    """Where bake puts images: the graph root as the running VM sees it, and
    on the build machine (under TREE)."""

    graph_root: str     # e.g. /usr/share/containers/storage
    host_path: Path     # TREE/usr/share/containers/storage
    driver: str


def store_layout(tree: Path, store: str | None) -> StoreLayout:
    """The store bake fills, from the tree's storage.conf; ConfigError when the
    tree's storage.conf cannot be read or does not list `store` as an
    additional image store."""
    conf_path = under_root(tree, STORAGE_CONF)
    conf = _read_storage_conf(conf_path)
    raw_storage = conf.get("storage")
    storage = raw_storage if isinstance(raw_storage, dict) else {}
    driver = storage.get("driver") or DEFAULT_DRIVER
    if not isinstance(driver, str):
        raise ConfigError(conf_path, "storage.driver", f"expected a string, got {driver!r}")
    if store is None:
        graph_root = storage.get("graphroot") or DEFAULT_GRAPHROOT
        if not isinstance(graph_root, str) or not graph_root.startswith("/"):
            raise ConfigError(conf_path, "storage.graphroot", f"expected an absolute path, got {graph_root!r}")
        return StoreLayout(graph_root, under_root(tree, graph_root), driver)
    if not store.startswith("/") or ".." in store.split("/"):
        raise UsageError(f"--store: expected an absolute path inside the image without '..', got {store!r}")
    raw_options = storage.get("options")
    options = raw_options if isinstance(raw_options, dict) else {}
    listed = options.get("additionalimagestores") or []
    if not isinstance(listed, list) or store.rstrip("/") not in [str(p).rstrip("/") for p in listed]:
        raise ConfigError(conf_path, "storage.options.additionalimagestores",
                          f"must list {store} (the read-only store --store fills), got {listed!r}")
    return StoreLayout(store, under_root(tree, store), driver)


def _read_storage_conf(path: Path) -> dict:
    data = read_bounded(path, MAX_STORAGE_CONF, lambda why: ConfigError(path, "", why), what="the file")
    if data is None:
        return {}
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"not TOML: {one_line(exc, 200)}") from None


def find_in_store(layout: StoreLayout, ref: ImageRef) -> str | None:
    """The ID of the image named `ref` (repository@digest) in the store, verified
    against its digest there (files only, no podman); None when absent or when
    what is there does not verify (a pull then replaces it)."""
    images_json = layout.host_path / f"{layout.driver}-images" / "images.json"
    try:
        data = read_at_most(images_json, MAX_STORE_INDEX)
        records = json.loads(data) if data is not None else None
    except ValueError:
        return None
    if not isinstance(records, list):
        return None
    for record in records:
        if isinstance(record, dict) and ref.pinned in (record.get("names") or []):
            image_id = str(record.get("id"))
            try:
                verify_in_storage(layout.host_path, layout.driver, image_id, ref.digest or "")
            except ImageError:
                return None
            return image_id
    return None


def _registries_conf_args() -> list[str]:
    # podman honours CONTAINERS_REGISTRIES_CONF, Debian 12's skopeo 1.9 only its flag.
    conf = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    return ["--registries-conf", conf] if conf else []


def resolve_digest(ref: ImageRef) -> str:
    """The manifest digest a registry serves for `ref` (a tag) now: sha256 of
    the exact manifest bytes (an index stays an index: podman picks the
    platform's image from it at pull, by digest)."""
    argv = ["skopeo", *_registries_conf_args(), "inspect", "--raw", f"docker://{ref}"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=RESOLVE_TIMEOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise BakeError(f"cannot resolve {ref}: skopeo is not installed (bake needs it to resolve tags)") from None
    except subprocess.TimeoutExpired:
        raise BakeError(f"cannot resolve {ref}: no answer within {RESOLVE_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        raise BakeError(f"cannot resolve {ref}: {_last_error(done.stderr.decode(errors='replace'))}")
    if not done.stdout or len(done.stdout) > MAX_MANIFEST:
        raise BakeError(f"cannot resolve {ref}: the registry sent no manifest or one over {MAX_MANIFEST} bytes")
    return "sha256:" + hashlib.sha256(done.stdout).hexdigest()


def _last_error(text: str) -> str:
    """The line that says what went wrong in podman's or skopeo's output."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("Error:") or "level=fatal" in line or "level=error" in line:
            return one_line(line.removeprefix("Error: "))
    return one_line(lines[-1]) if lines else "failed with no message"


class TreePodman:
    """podman on the build machine, working on one store inside the tree."""

    def __init__(self, tree: Path, layout: StoreLayout, progress: Callable[[str], None]) -> None:
        self.layout = layout
        self.progress = progress
        self._tmp = Path(tempfile.mkdtemp(prefix="podvm-bake-"))
        self._conf = self._tmp / "storage.conf"
        self._conf.write_text(f'[storage]\ndriver = "{layout.driver}"\n'
                              f'graphroot = "{layout.host_path}"\nrunroot = "{self._tmp / "run"}"\n')
        # podman keeps its own database beside the images; made here it would
        # name the build machine's paths and podman in the VM refuses it then.
        self._db_existed = (layout.host_path / "libpod").exists()
        self._home = self._registries_d_home(tree)

    def _registries_d_home(self, tree: Path) -> Path | None:
        """A HOME whose ~/.config/containers/registries.d (which podman reads
        before /etc's) is the tree's: the pulls then fetch the signature
        attachments the image's own registries.d asks for
        (use-sigstore-attachments), and podman keeps them in the store."""
        source = under_root(tree, REGISTRIES_D)
        if not source.is_dir():
            return None
        home = self._tmp / "home"
        target = home / ".config/containers/registries.d"
        target.mkdir(parents=True)
        for entry in sorted(source.glob("*.yaml")):
            if entry.is_file():
                shutil.copyfile(entry, target / entry.name)
        docker_auth = Path(os.environ.get("HOME", "/root")) / ".docker"
        if docker_auth.is_dir():  # keep credentials podman finds under HOME
            (home / ".docker").symlink_to(docker_auth)
        return home

    def close(self) -> None:
        if not self._db_existed:
            shutil.rmtree(self.layout.host_path / "libpod", ignore_errors=True)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def pull(self, ref: ImageRef, label: str) -> None:
        """`podman pull REPO@DIGEST` into the store; progress lines go to
        `progress`, a failure is one BakeError line."""
        self.layout.host_path.mkdir(parents=True, exist_ok=True)
        # A mount namespace of its own: what the overlay driver mounts ends with
        # the process instead of staying mounted inside the image tree.
        unshare = ["unshare", "--mount", "--propagation", "private"] if os.geteuid() == 0 else []
        argv = [*unshare, "podman", "--root", str(self.layout.host_path), "--runroot", str(self._tmp / "run"),
                "--storage-driver", self.layout.driver, "pull", ref.pinned]
        env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(self._conf))
        if self._home is not None:
            env["HOME"] = str(self._home)
        lines: list[str] = []

        def on_line(line: str) -> None:
            lines.append(line)
            self.progress(f"{label}: {line}")
        try:
            code = _run_streaming(argv, env, PULL_TIMEOUT, on_line)
        except FileNotFoundError:
            raise BakeError(f"cannot pull {ref.pinned}: podman is not installed") from None
        if code is None:
            raise BakeError(f"cannot pull {ref.pinned}: not done within {PULL_TIMEOUT:.0f}s")
        if code != 0:
            raise BakeError(f"cannot pull {ref.pinned}: {_last_error(chr(10).join(lines))}")


def _run_streaming(argv: list[str], env: dict[str, str], timeout: float,
                   on_line: Callable[[str], object]) -> int | None:
    """Run argv, handing each output line (stdout and stderr merged) to
    on_line as it comes; the exit code, or None when it ran past `timeout`
    (then it is killed)."""
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        for line in _lines_until(proc.stdout, deadline):
            on_line(line)
        remaining = deadline - time.monotonic()
        if remaining > 0:
            try:
                return proc.wait(remaining)
            except subprocess.TimeoutExpired:
                pass
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _lines_until(stream, deadline: float) -> Iterator[str]:
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                if raw.strip():
                    yield one_line(raw.decode(errors="replace"), 500)
            buffer = buffer[-65536:]  # a line without end cannot grow without bound
    if buffer.strip():
        yield one_line(buffer.decode(errors="replace"), 500)
