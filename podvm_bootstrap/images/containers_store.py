"""Where podman's image store is, found the way containers/storage finds it,
without asking podman; and finding an image in it from its own files.

containers/storage (as root) reads `$CONTAINERS_STORAGE_CONF`, else
`/etc/containers/storage.conf` when it exists, else
`/usr/share/containers/storage.conf`; with no file at all (Debian's podman
ships none) every key has its default: graph root
`/var/lib/containers/storage`, no additional image stores, and no driver,
which it then guesses from the graph root. `$STORAGE_DRIVER` wins over the
file's `driver`. The guess: the one driver whose state the graph root already
holds (`<graphroot>/<driver>-images`, the image index containers/storage
keeps per driver), several being an error podman refuses to start with; an
empty graph root gets the first driver of its priority list the file system
supports (overlay on a pod VM's disk). An empty graph root holds no image,
whatever the driver, so only the read-only additional image stores (where an
image build bakes the defaults) need the driver then: the one whose state
they hold, else overlay.

Each image of a store is a record in `<root>/<driver>-images/images.json`;
an image is found as podman resolves a reference: by name, by ID, or for
repo@digest an image of that repository carrying that digest.

This module loads nothing but the standard library and the project's small
helpers: the boot's head start (early_start.py) asks it which baked
defaults are already in storage before anything else is loaded."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podvm_bootstrap.common.errors import BootstrapError
from podvm_bootstrap.common.fsutil import read_bounded

STORAGE_CONF_PATHS = ("/etc/containers/storage.conf", "/usr/share/containers/storage.conf")  # podman's order
DEFAULT_GRAPHROOT = "/var/lib/containers/storage"
DEFAULT_DRIVER = "overlay"   # first of containers/storage's priority list, where the file system supports it
# The drivers containers/storage registers on Linux, in its priority order.
DRIVERS = ("overlay", "btrfs", "zfs", "vfs", "devicemapper", "aufs")
MAX_STORAGE_CONF = 1024 * 1024
MAX_STORE_INDEX = 64 * 1024 * 1024


class StoreError(BootstrapError):
    """A store's file cannot be read."""


@dataclass(frozen=True)
class Store:
    graph_root: Path
    driver: str
    additional: tuple[Path, ...] = ()   # read-only image stores, looked in after the graph root
    how: str = ""                       # how it was found, for the journal

    @property
    def roots(self) -> tuple[Path, ...]:
        return (self.graph_root, *self.additional)


def storage_conf_path(root: Path = Path("/"), environ: Mapping[str, str] = os.environ) -> Path:
    """The storage.conf containers/storage (as root) reads: $CONTAINERS_STORAGE_CONF,
    else the first that exists of /etc/containers and /usr/share/containers,
    else the latter (absent: every key its default)."""
    env = environ.get("CONTAINERS_STORAGE_CONF")
    if env:
        return Path(env)
    paths = [root / p.lstrip("/") for p in STORAGE_CONF_PATHS]
    return next((p for p in paths if p.exists()), paths[-1])


def _drivers_with_state(top: Path) -> list[str]:
    return [d for d in DRIVERS if (top / f"{d}-images").is_dir()]


def locate_store(conf_path: Path | None = None, *, root: Path = Path("/"),
                 environ: Mapping[str, str] = os.environ) -> Store | None:
    """podman's store (module docstring), its paths under `root`; None when
    podman itself could not tell (a storage.conf it would refuse, a graph
    root holding the state of several drivers)."""
    conf_path = conf_path if conf_path is not None else storage_conf_path(root, environ)
    try:
        data = read_bounded(conf_path, MAX_STORAGE_CONF, StoreError)
        conf = tomllib.loads(data.decode()) if data is not None else {}
    except (OSError, StoreError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    storage = conf.get("storage", {})
    if not isinstance(storage, dict):
        return None
    driver, graph_root = storage.get("driver") or "", storage.get("graphroot") or DEFAULT_GRAPHROOT
    raw_options = storage.get("options")
    options = raw_options if isinstance(raw_options, dict) else {}
    extra = options.get("additionalimagestores") or []
    if not (isinstance(driver, str) and isinstance(graph_root, str) and graph_root.startswith("/")
            and isinstance(extra, list) and all(isinstance(e, str) and e.startswith("/") for e in extra)):
        return None
    source = str(conf_path) if data is not None else f"no {conf_path}: defaults"
    driver = environ.get("STORAGE_DRIVER") or driver
    graph = root / graph_root.lstrip("/")
    stores = tuple(root / e.lstrip("/") for e in extra)
    if driver:
        return Store(graph, driver, stores, f"{source}, driver {driver}")
    found = _drivers_with_state(graph)
    if len(found) > 1:
        return None   # containers/storage: "contains several valid graphdrivers"
    if not found:
        in_stores = sorted({d for s in stores for d in _drivers_with_state(s)})
        found = in_stores if len(in_stores) == 1 else [DEFAULT_DRIVER]
    return Store(graph, found[0], stores, f"{source}, driver {found[0]} (guessed from the store's state)")


def json_list(path: Path) -> list[Any]:
    """A store index (images.json, layers.json): its list, [] when absent."""
    data = read_bounded(path, MAX_STORE_INDEX, StoreError)
    if data is None:
        return []
    try:
        value = json.loads(data)
    except ValueError:
        raise StoreError(f"{path} is not JSON") from None
    return value if isinstance(value, list) else []


def repository_of(name: str) -> str:
    """quay.io/x/y:tag or quay.io/x/y@sha256:... -> quay.io/x/y"""
    name = name.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def find_in_store(store: Store, reference: str) -> tuple[Path, str, str | None] | None:
    """(store root, image ID, manifest digest) of the local image that
    `reference` (repo@digest, or an image ID) names, as podman resolves it:
    the store's own images first, then the additional stores; a name equal to
    the reference, or for repo@digest an image of that repository carrying
    that digest (pulled by tag, then named by digest). StoreError for an
    index that is not JSON."""
    return find_all_in_store(store, [reference])[reference]


def find_all_in_store(store: Store, references: list[str]) -> dict[str, tuple[Path, str, str | None] | None]:
    """find_in_store for each of the references, each index read once (the
    boot's head start asks for every baked default before its first start)."""
    found: dict[str, tuple[Path, str, str | None] | None] = dict.fromkeys(references)
    for top in store.roots:
        wanted = [r for r in references if found[r] is None]
        if not wanted:
            break
        for record in json_list(top / f"{store.driver}-images" / "images.json"):
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                continue
            names = [n for n in record.get("names") or [] if isinstance(n, str)]
            digests = [d for d in record.get("digests") or [] if isinstance(d, str)]
            if record.get("digest") and record["digest"] not in digests:
                digests.append(record["digest"])
            repositories = {repository_of(n) for n in names}
            for reference in wanted:
                repository, _, digest = reference.partition("@")
                if found[reference] is None and (
                        reference in names or record["id"] == reference
                        or (digest and digest in digests and repository in repositories)):
                    found_digest = record.get("digest")
                    found[reference] = top, record["id"], found_digest if isinstance(found_digest, str) else None
    return found
