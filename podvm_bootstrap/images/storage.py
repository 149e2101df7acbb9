"""Images in local storage: present or pulled by digest, then verified.

podman's store is found the way containers/storage finds it (its
storage.conf, else the defaults and the driver whose state the graph root
holds: containers_store.py), and images are found from its own files
(`<driver>-images/images.json`), with no podman API call: the API would read
those very files to answer, and every check below reads the store's files
anyway, so going through the API adds no strength, only a process to start.
The API (podman-py over podman's socket) serves what needs podman itself: a
pull, a tag resolution, an exec probe, and a store podman alone could tell
(a graph root holding the state of several drivers).

Podman checks a digest only while pulling. Before anything runs, and at every
start, the image is checked again where it lies: the manifest bytes kept in
containers storage (`<graphroot>/<driver>-images/<id>/=<base64(key)>`) must
hash to the planned digest, that manifest's config must be this very image
(config digest == image ID, and the stored config hashes to it), and the
image's layer chain must carry the config's diff IDs. A mismatch never runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podvm_bootstrap.common.backoff import Backoff
from podvm_bootstrap.common.errors import BootstrapError, one_line
from podvm_bootstrap.common.fsutil import read_bounded
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.images.containers_store import (
    Store,
    StoreError,
    find_in_store,
    json_list,
    locate_store,
)
from podvm_bootstrap.images.imageref import DIGEST_PATTERN, ImageRef
from podvm_bootstrap.images.signatures import Trust

log = get_logger("images")

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MAX_MANIFEST = 4 * 1024 * 1024


class ImageError(BootstrapError):
    """An image is not available, or is not what the plan says."""


@dataclass(frozen=True)
class VerifiedImage:
    """An image verified in local storage for one start."""
    image_id: str
    config: dict[str, Any]   # the image's config (Entrypoint, Cmd, ...), as verified by its hash
    signature: str | None = None  # the baked key that verified its signature (None: none asked for)


@dataclass(frozen=True)
class StoredImage:
    ref: ImageRef      # repository@digest: what runs
    image_id: str
    pulled: bool = False
    from_tag: str | None = None  # the tag it was resolved from, when mutable tags are allowed
    signature: str | None = None  # the policy key whose signature verified it (None: none needed)


# --- verification against containers storage (files only) ----------------


def big_data_path(image_dir: Path, key: str) -> Path:
    """containers/storage names an image's big-data file '=' + base64(key)."""
    return image_dir / ("=" + base64.b64encode(key.encode()).decode())


def _hash(digest: str, data: bytes) -> str:
    algorithm = digest.split(":", 1)[0]
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _stored_manifest(image_dir: Path, digest: str) -> dict[str, Any]:
    data = read_bounded(big_data_path(image_dir, f"manifest-{digest}"), MAX_MANIFEST, ImageError)
    if data is None:
        raise ImageError(f"no stored manifest {digest} for image {image_dir.name}")
    actual = _hash(digest, data)
    if actual != digest:
        raise ImageError(f"stored manifest hashes to {actual}, not the planned {digest}")
    try:
        manifest = json.loads(data)
    except ValueError:
        raise ImageError(f"stored manifest {digest} is not JSON") from None
    if not isinstance(manifest, dict):
        raise ImageError(f"stored manifest {digest} is not a JSON object")
    return manifest


def verify_in_storage(graph_root: Path, driver: str, image_id: str, digest: str,
                      layer_roots: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The image's config (verified by hash), or ImageError unless image
    `image_id` in the store at `graph_root` is exactly the image whose
    manifest digest is `digest`. Its layers are looked up in `graph_root`,
    then in `layer_roots`: an image pulled into podman's own store shares the
    layers it has in common with a read-only additional store (an image
    build's) from there."""
    if not DIGEST_PATTERN.fullmatch(digest):
        raise ImageError(f"invalid digest {digest!r}")
    if not (len(image_id) == 64 and all(c in "0123456789abcdef" for c in image_id)):
        raise ImageError(f"invalid image ID {image_id!r}")
    images_dir = graph_root / f"{driver}-images"
    image_dir = images_dir / image_id
    manifest = _stored_manifest(image_dir, digest)
    if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
        manifest = _instance_for_image(image_dir, manifest, image_id, digest)
    config = manifest.get("config")
    config_digest = config.get("digest") if isinstance(config, dict) else None
    if manifest.get("schemaVersion") != 2 or not isinstance(config_digest, str):
        raise ImageError(f"manifest {digest} is not a schema 2 image manifest")
    if config_digest != f"sha256:{image_id}":
        raise ImageError(f"manifest {digest} describes image {config_digest}, but the local image is "
                         f"sha256:{image_id}")
    config_bytes = read_bounded(big_data_path(image_dir, config_digest), MAX_MANIFEST, ImageError)
    if config_bytes is None or _hash(config_digest, config_bytes) != config_digest:
        raise ImageError(f"stored config of image {image_id} is missing or does not hash to its ID")
    try:
        config_json = json.loads(config_bytes)
    except ValueError:
        raise ImageError(f"stored config of image {image_id} is not JSON") from None
    _verify_layers((graph_root, *layer_roots), driver, images_dir, image_id, config_json)
    return config_json


def _instance_for_image(image_dir: Path, index: dict[str, Any], image_id: str, digest: str) -> dict[str, Any]:
    """An index pulled by digest: the image is one of its instances, whose
    manifest is stored too and was verified by hash through the index."""
    for entry in index.get("manifests") or []:
        child = entry.get("digest") if isinstance(entry, dict) else None
        if not isinstance(child, str) or not DIGEST_PATTERN.fullmatch(child):
            continue
        try:
            manifest = _stored_manifest(image_dir, child)
        except ImageError:
            continue
        config = manifest.get("config")
        if isinstance(config, dict) and config.get("digest") == f"sha256:{image_id}":
            return manifest
    raise ImageError(f"no instance of index {digest} is the local image sha256:{image_id}")


def _verify_layers(roots: tuple[Path, ...], driver: str, images_dir: Path, image_id: str,
                   config: dict[str, Any]) -> None:
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise ImageError(f"config of image {image_id} has no rootfs.diff_ids")
    images = _json_list(images_dir / "images.json")
    record = next((i for i in images if isinstance(i, dict) and i.get("id") == image_id), None)
    if record is None:
        raise ImageError(f"image {image_id} is not in {images_dir / 'images.json'}")
    layers: dict[Any, Any] = {}
    for root in dict.fromkeys(roots):   # the image's own store first, as containers/storage looks
        for layer in _json_list(root / f"{driver}-layers" / "layers.json"):
            if isinstance(layer, dict):
                layers.setdefault(layer.get("id"), layer)
    chain: list[str] = []
    layer_id = record.get("layer")
    while layer_id:
        layer = layers.get(layer_id)
        if layer is None or len(chain) > 1000:
            raise ImageError(f"layer {layer_id} of image {image_id} is not in the store")
        chain.append(str(layer.get("diff-digest")))
        layer_id = layer.get("parent")
    chain.reverse()
    if chain != diff_ids:
        raise ImageError(f"layers of image {image_id} do not match its config's diff IDs")


def _json_list(path: Path) -> list[Any]:
    try:
        return json_list(path)
    except StoreError as exc:
        raise ImageError(str(exc)) from None


def additional_image_stores(store_info: dict[str, Any]) -> tuple[Path, ...]:
    """The read-only image stores podman also reads (storage.conf's
    storage.options.additionalimagestores), from its `info` answer: the
    storage.conf it names, and the `<driver>.imagestore` option it shows (only
    the last store appears there)."""
    found: list[Path] = []
    config_file = store_info.get("configFile")
    if isinstance(config_file, str) and config_file:
        try:
            with open(config_file, "rb") as f:
                conf = tomllib.loads(f.read(1024 * 1024).decode("utf-8"))
            listed = conf.get("storage", {}).get("options", {}).get("additionalimagestores", [])
            found += [Path(p) for p in listed if isinstance(p, str)] if isinstance(listed, list) else []
        except FileNotFoundError:  # podman names its default path even when no file is there
            pass
        except (OSError, ValueError, AttributeError) as exc:  # podman read it; a problem here only narrows
            log.warning("cannot read additional image stores from %s: %s", config_file, one_line(exc))
    options = store_info.get("graphOptions")
    for key, value in (options.items() if isinstance(options, dict) else ()):
        if isinstance(key, str) and key.endswith(".imagestore") and isinstance(value, str):
            found += [Path(p) for p in value.split(",") if p]
    return tuple(dict.fromkeys(found))


# --- registry credentials -----------------------------------------------


def registry_auth(auth_file: Path | None, ref: ImageRef) -> dict[str, str] | None:
    """Credentials for `ref` from a containers-auth.json file: the entry of the
    longest key that is the registry or a repository prefix of `ref`."""
    if auth_file is None:
        return None
    try:
        data = read_bounded(auth_file, 1024 * 1024, ImageError)
    except (ImageError, OSError) as exc:
        log.error("ignoring %s: %s", auth_file, exc)
        return None
    if data is None:
        return None
    try:
        auths = json.loads(data)["auths"]
        if not isinstance(auths, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        log.error("ignoring %s: not a containers-auth.json file ({\"auths\": {...}})", auth_file)
        return None
    repository = ref.repository
    candidates = [key for key in auths if isinstance(key, str) and
                  (key == ref.registry or repository == key or repository.startswith(key + "/"))]
    for key in sorted(candidates, key=len, reverse=True):
        entry = auths[key]
        encoded = entry.get("auth") if isinstance(entry, dict) else None
        if not isinstance(encoded, str):
            continue
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, sep = "", ""
        if not sep or not user:
            log.error("ignoring the entry for %s in %s: auth is not base64 of user:password", key, auth_file)
            continue
        return {"username": user, "password": password}
    return None


# --- podman ---------------------------------------------------------------


@dataclass(frozen=True)
class PullPacing:
    retries: int = 5
    timeout: float = 300.0  # for all attempts of one image, sleeps included
    backoff: Backoff = Backoff(1.0, 30.0)


AUTO = "auto"


class PodmanImages:
    """Images in podman's storage: found and verified from the store's files
    (module docstring; storage_conf=None: through the API), pulled through
    the API (podman-py, connected at first use)."""

    def __init__(self, socket_path: str, *, auth_file: Path | None = None, pacing: PullPacing = PullPacing(),
                 api_timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, storage_conf: Path | str | None = AUTO) -> None:
        self.socket_path = socket_path
        self.auth_file = auth_file
        self.pacing = pacing
        self.sleep = sleep
        self.clock = clock
        self.api_timeout = api_timeout
        self._client: Any = None
        self._files_store = (locate_store() if storage_conf == AUTO
                             else locate_store(Path(storage_conf)) if storage_conf else None)   # None: ask podman
        if self._files_store is not None:
            log.debug("image store %s (%s)", self._files_store.graph_root, self._files_store.how)
        self._store: Store | None = self._files_store

    @property
    def client(self) -> Any:
        if self._client is None:
            from podman import PodmanClient

            self._client = PodmanClient(base_url=f"http+unix://{self.socket_path}", timeout=self.api_timeout)
        return self._client

    @property
    def reads_files(self) -> bool:
        """Images are found from the store's files, without the API."""
        return self._files_store is not None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _api_error(self, what: str, exc: Exception) -> ImageError:
        if not os.path.exists(self.socket_path):
            return ImageError(f"{what}: podman API socket {self.socket_path} does not exist")
        return ImageError(f"{what}: {one_line(exc)}")

    def store(self) -> Store:
        """podman's image store: found from its files, else asked of podman."""
        if self._store is None:
            try:
                info = self.client.info()
            except Exception as exc:  # noqa: BLE001 - any transport or API failure
                raise self._api_error("cannot ask podman for its storage", exc) from None
            store = info.get("store") or {}
            self._store = Store(Path(store.get("graphRoot", "")), str(store.get("graphDriverName", "")),
                                additional_image_stores(store))
        return self._store

    def store_of(self, image_id: str) -> tuple[Path, str]:
        """(graph root, driver) of the store holding image `image_id`: podman's
        own, or one of its read-only additional image stores (where an image
        build may have baked the defaults, e.g. on a dm-verity /usr)."""
        store = self.store()
        for root in store.roots:
            if (root / f"{store.driver}-images" / image_id).is_dir():
                return root, store.driver
        return store.graph_root, store.driver

    def _find(self, reference: str) -> tuple[Path, str, str | None] | None:
        """(store root, image ID, manifest digest) of the local image `reference` names, or None."""
        if self._files_store is not None:
            try:
                return find_in_store(self._files_store, reference)
            except StoreError as exc:
                raise ImageError(str(exc)) from None
        from podman.errors import ImageNotFound

        try:
            image = self.client.images.get(reference)
        except ImageNotFound:
            return None
        except Exception as exc:  # noqa: BLE001
            raise self._api_error(f"cannot look up {reference}", exc) from None
        digest = image.attrs.get("Digest")
        image_id = str(image.id).removeprefix("sha256:")
        return self.store_of(image_id)[0], image_id, digest if isinstance(digest, str) else None

    def lookup(self, reference: str) -> tuple[str, str | None] | None:
        """(image ID, manifest digest) of the local image `reference` names, or None."""
        found = self._find(reference)
        return (found[1], found[2]) if found is not None else None

    def verify(self, ref: ImageRef, trust: Trust | None = None) -> VerifiedImage:
        """THE check of an image for a start (every start, the daemon's and
        systemd's own restarts, goes through it before its gate opens): the
        local image for ref (which has a digest), verified in storage, and,
        when `trust` asks for one, its stored cosign signature; ImageError if
        absent or wrong."""
        from podvm_bootstrap.images.signature_store import check_signature

        found = self._find(ref.pinned)
        if found is None:
            raise ImageError(f"{ref.pinned} is not in local storage")
        root, image_id, _ = found
        store = self.store()
        config = verify_in_storage(root, store.driver, image_id, ref.digest or "", store.roots)
        return VerifiedImage(image_id, config, check_signature(Path(root), store.driver, image_id, ref, trust))

    def ensure(self, ref: ImageRef, *, allow_tag: bool = False, trust: Trust | None = None) -> StoredImage:
        """Make `ref` available locally and verified: the stored copy when there
        is one, else pulled by digest. A tag (only with allow_tag) is resolved
        to a digest once, here."""
        if ref.digest is None:
            if not allow_tag:
                raise ImageError(f"{ref} is not pinned by digest")
            image_id, digest = self.pull(str(ref), ref)
            if digest is None:
                raise ImageError(f"podman reports no manifest digest for {ref}")
            pinned = ref.with_digest(digest)
            verified = self.verify(pinned, trust)
            log.info("resolved %s to %s", ref, digest)
            return StoredImage(pinned, verified.image_id, pulled=True, from_tag=ref.tag, signature=verified.signature)
        pinned = ref.with_digest(ref.digest)
        if self.lookup(pinned.pinned) is not None:
            verified = self.verify(pinned, trust)
            return StoredImage(pinned, verified.image_id, signature=verified.signature)
        self.pull(pinned.pinned, pinned)
        verified = self.verify(pinned, trust)
        return StoredImage(pinned, verified.image_id, pulled=True, signature=verified.signature)

    def pull(self, reference: str, ref: ImageRef) -> tuple[str, str | None]:
        """Pull with bounded retries; (image ID, manifest digest)."""
        deadline = self.clock() + self.pacing.timeout
        attempts = self.pacing.retries + 1
        last = ""
        for attempt in range(1, attempts + 1):
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            try:
                image_id = self._pull_once(reference, ref, remaining)
                found = self.lookup(image_id)
                return image_id, (found[1] if found else None)
            except ImageError as exc:
                last = str(exc)
            if attempt < attempts:
                delay = min(self.pacing.backoff.delay(attempt), max(0.0, deadline - self.clock()))
                log.warning("pull of %s failed (attempt %d of %d): %s; retrying in %.1fs",
                            reference, attempt, attempts, last, delay)
                self.sleep(delay)
        raise ImageError(f"cannot pull {reference}: {last or 'pull timeout reached'}")

    def _pull_once(self, reference: str, ref: ImageRef, timeout: float) -> str:
        headers = {}
        auth = registry_auth(self.auth_file, ref)
        if auth is not None:
            headers["X-Registry-Auth"] = base64.urlsafe_b64encode(json.dumps(auth).encode()).decode()
        try:
            response = self.client.api.post("/images/pull", params={"reference": reference, "policy": "always"},
                                            headers=headers, stream=True, timeout=timeout)
            if response.status_code != 200:
                raise ImageError(f"podman answered {response.status_code}: {one_line(response.text)}")
            image_id = None
            # `timeout` bounds each read; a pull that keeps sending progress is
            # bounded here, by the whole pull's deadline.
            deadline = time.monotonic() + timeout
            for line in response.iter_lines():
                if time.monotonic() > deadline:
                    response.close()
                    raise ImageError(f"pull of {reference} did not finish within {timeout:.0f}s")
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict) and message.get("error"):
                    raise ImageError(one_line(message["error"]))
                if isinstance(message, dict) and isinstance(message.get("id"), str):
                    image_id = message["id"]
        except ImageError:
            raise
        except Exception as exc:  # noqa: BLE001 - connection errors, timeouts
            raise self._api_error("pull", exc) from None
        if not image_id:
            raise ImageError("podman reported no image")
        return image_id.removeprefix("sha256:")
