"""Finding podman's image store as containers/storage does, without podman:
with a storage.conf, and on a tree without one (Debian's podman ships none),
the driver guessed from the state the graph root holds. The real-podman
check that the store found is podman's own is in test_images.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podvm_bootstrap.images import containers_store
from podvm_bootstrap.images.containers_store import (
    Store,
    find_all_in_store,
    find_in_store,
    locate_store,
    storage_conf_path,
)

ROOT = "/var/lib/containers/storage"
ADDITIONAL = "/usr/share/containers/storage"


def _tree(tmp_path: Path, conf: str | None = None, where: str = "/etc/containers/storage.conf",
          state: dict[str, list[str]] | None = None) -> Path:
    """A pod VM tree: its storage.conf (None: none at all), and per store
    directory (as the VM sees it) the drivers whose image index it holds."""
    if conf is not None:
        path = tmp_path / where.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(conf)
    for top, drivers in (state or {}).items():
        for driver in drivers:
            (tmp_path / top.lstrip("/") / f"{driver}-images").mkdir(parents=True)
    return tmp_path


def _locate(tree: Path, **environ: str) -> Store | None:
    return locate_store(root=tree, environ=environ)


def test_no_storage_conf_anywhere_means_the_defaults_and_the_driver_the_graph_root_holds(tmp_path: Path) -> None:
    tree = _tree(tmp_path, state={ROOT: ["overlay"]})
    store = _locate(tree)
    assert store is not None
    assert (store.graph_root, store.driver, store.additional) == (tree / ROOT.lstrip("/"), "overlay", ())
    assert "defaults" in store.how and "guessed" in store.how


@pytest.mark.parametrize("state, driver", [
    ({ROOT: ["vfs"]}, "vfs"),                              # a graph root podman filled with vfs
    ({}, "overlay"),                                       # an empty store: podman's first choice
    ({ROOT: ["btrfs"]}, "btrfs"),
])
def test_the_driver_is_the_one_whose_state_the_graph_root_holds(tmp_path: Path, state: dict, driver: str) -> None:
    store = _locate(_tree(tmp_path, state=state))
    assert store is not None and store.driver == driver


def test_a_graph_root_with_the_state_of_two_drivers_is_left_to_podman(tmp_path: Path) -> None:
    """containers/storage refuses such a graph root ("contains several valid
    graphdrivers"): nothing is guessed."""
    assert _locate(_tree(tmp_path, state={ROOT: ["overlay", "vfs"]})) is None


def test_a_storage_conf_without_driver_or_graph_root_takes_their_defaults(tmp_path: Path) -> None:
    conf = (f'[storage]\nrunroot = "/run/containers/storage"\n'
            f'[storage.options]\nadditionalimagestores = ["{ADDITIONAL}"]\n')
    tree = _tree(tmp_path, conf, "/usr/share/containers/storage.conf", state={ADDITIONAL: ["vfs"]})
    store = _locate(tree)
    # An empty graph root: the baked store's driver (an image build filled it).
    assert store == Store(tree / ROOT.lstrip("/"), "vfs", (tree / ADDITIONAL.lstrip("/"),), store.how if store else "")
    assert str(tree / "usr/share/containers/storage.conf") in store.how  # type: ignore[union-attr]


def test_etc_wins_over_usr_share_and_the_environment_over_both(tmp_path: Path) -> None:
    tree = _tree(tmp_path, '[storage]\ndriver = "vfs"\ngraphroot = "/g"\n', "/usr/share/containers/storage.conf")
    _tree(tree, '[storage]\ndriver = "overlay"\ngraphroot = "/etc-g"\n')
    assert storage_conf_path(tree, {}) == tree / "etc/containers/storage.conf"
    store = _locate(tree)
    assert store is not None and (store.graph_root, store.driver) == (tree / "etc-g", "overlay")
    other = tmp_path / "other.conf"
    other.write_text('[storage]\ndriver = "zfs"\ngraphroot = "/z"\n')
    store = _locate(tree, CONTAINERS_STORAGE_CONF=str(other))
    assert store is not None and (store.graph_root, store.driver) == (tree / "z", "zfs")
    store = _locate(tree, STORAGE_DRIVER="vfs")        # podman's $STORAGE_DRIVER over the file's driver
    assert store is not None and store.driver == "vfs"


@pytest.mark.parametrize("text", [
    '[storage\n',                                          # not TOML: podman would refuse to start
    '\xff',
    '[storage]\ngraphroot = "relative"\n',
    '[storage]\ndriver = 3\n',
    '[storage]\ndriver = "vfs"\n[storage.options]\nadditionalimagestores = ["rel"]\n',
    'storage = 1\n',
])
def test_a_storage_conf_podman_would_refuse_is_left_to_podman(tmp_path: Path, text: str) -> None:
    conf = tmp_path / "etc/containers/storage.conf"
    conf.parent.mkdir(parents=True)
    conf.write_bytes(text.encode("latin-1"))
    assert _locate(tmp_path) is None


def test_an_explicit_storage_conf_says_it_plainly(tmp_path: Path) -> None:
    conf = tmp_path / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{ROOT}"\n'
                    f'[storage.options]\nadditionalimagestores = ["{ADDITIONAL}"]\n')
    store = locate_store(conf, environ={})
    assert store is not None
    assert (store.graph_root, store.driver, store.additional) == (Path(ROOT), "vfs", (Path(ADDITIONAL),))


D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def two_stores(tmp_path: Path) -> tuple[Store, Path, Path]:
    """A graph root and an additional store; the image a*64 in the first is
    also named by digest (c*64) in the second."""
    own, extra = tmp_path / "own", tmp_path / "extra"
    for root, records in ((own, [{"id": "a" * 64, "names": ["q.io/x/y:1"], "digest": D1, "digests": [D1]}]),
                          (extra, [{"id": "b" * 64, "names": [f"q.io/x/z@{D2}"], "digest": D2},
                                   {"id": "c" * 64, "names": [f"q.io/x/y@{D1}"], "digest": D1}])):
        (root / "vfs-images").mkdir(parents=True)
        (root / "vfs-images" / "images.json").write_text(json.dumps(records))
    return Store(own, "vfs", (extra,)), own, extra


def test_find_in_store_looks_in_podmans_order_and_matches_as_podman_does(tmp_path: Path) -> None:
    store, own, extra = two_stores(tmp_path)
    d1, d2 = D1, D2
    assert find_in_store(store, f"q.io/x/y@{d1}") == (own, "a" * 64, d1)     # by digest and repository, own first
    assert find_in_store(store, f"q.io/x/z@{d2}") == (extra, "b" * 64, d2)   # in the additional store
    assert find_in_store(store, f"q.io/x/other@{d1}") is None                # that digest, another repository
    assert find_in_store(store, "b" * 64) == (extra, "b" * 64, d2)


def test_finding_many_reads_each_index_once_and_agrees_with_one_by_one(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The head start asks for every baked default at once: one read of each
    store's index, not one per image (30 defaults: 30 parses of the index)."""
    store, own, extra = two_stores(tmp_path)
    references = [f"q.io/x/y@{D1}", f"q.io/x/z@{D2}", f"q.io/x/other@{D1}", "b" * 64, "q.io/x/y:1"]
    one_by_one = {r: find_in_store(store, r) for r in references}
    reads: list[Path] = []
    real = containers_store.json_list
    monkeypatch.setattr(containers_store, "json_list", lambda path: reads.append(path) or real(path))
    assert find_all_in_store(store, references) == one_by_one
    assert one_by_one[f"q.io/x/y@{D1}"] == (own, "a" * 64, D1) and one_by_one[f"q.io/x/z@{D2}"][0] == extra
    assert sorted(reads) == sorted([own / "vfs-images" / "images.json", extra / "vfs-images" / "images.json"])
    reads.clear()
    assert find_all_in_store(store, [f"q.io/x/y@{D1}"])[f"q.io/x/y@{D1}"] == (own, "a" * 64, D1)
    assert reads == [own / "vfs-images" / "images.json"]   # all found in the graph root: the others not read
