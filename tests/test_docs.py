"""The manual (README.md and docs/*.md) cannot rot silently: every relative
link points at a file that exists and, with a #fragment, at a heading of it
(as GitHub renders the anchors), every file of the repository it names in
code exists, and the code map of docs/design.md lists exactly the package's
modules, by layer in the order tests/test_import_layers.py holds them to."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_import_layers import LAYERS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the text may run over a line break
_LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def prose(text: str) -> Iterator[tuple[int, str]]:
    """The lines outside fenced code blocks, with their numbers."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            yield n, line


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text without markup, lower case,
    every character that is not a letter, digit, space, - or _ dropped,
    spaces as -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose(text):
        if m := _HEADING.match(line):
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line, target) of every link outside code blocks and code spans."""
    lines = dict(prose(text))
    joined = "\n".join(_CODE_SPAN.sub("", lines.get(n, "")) for n in range(1, len(text.splitlines()) + 1))
    for m in _LINK.finditer(joined):
        yield joined.count("\n", 0, m.start()) + 1, m.group(2)


def broken_links(page: Path) -> list[str]:
    """What is wrong with each relative link of a page: a missing file, or a
    fragment no heading of its file has."""
    problems = []
    for line, target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{page.name}:{line}: {target}: no such file")
        elif fragment and (dest.is_dir() or fragment not in anchors(dest.read_text())):
            problems.append(f"{page.name}:{line}: {target}: no heading #{fragment} in {dest.name}")
    return problems


# A path of this repository named in code (`podvm_bootstrap/redaction.py`,
# `tests/cases/`): its first directory is one of these.
REPO_DIRS = ("podvm_bootstrap", "tests", "bench", "image", "scripts", "systemd", "containers", "examples", "debian",
             "docs")
_REPO_PATH = re.compile(rf"(?<![\w./-])(?:{'|'.join(REPO_DIRS)})/[\w./-]*")


def repository_paths(text: str) -> Iterator[tuple[int, str]]:
    """(line, path) of every repository path in the code spans and blocks."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        for code in [line] if fenced else re.findall(r"`([^`]+)`", line):
            for path in _REPO_PATH.findall(code):
                yield n, path.rstrip(".")


# --- the checker itself ---------------------------------------------------------


def test_anchors_are_githubs() -> None:
    assert slug("Start gates: every start verified, nothing run before its time") == \
        "start-gates-every-start-verified-nothing-run-before-its-time"
    assert slug("The pod VM as a disk (`make image-disk`, `make demo-vm`)") == \
        "the-pod-vm-as-a-disk-make-image-disk-make-demo-vm"
    assert slug("How the daemon finds podman's store") == "how-the-daemon-finds-podmans-store"
    assert slug("3. `podvm-bootstrap bake`") == "3-podvm-bootstrap-bake"
    assert anchors("# A\n\n## A\n\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_the_checker_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\nSee [it](other.md#a-section), [here](#page) and\n"
                    "[a link over\ntwo lines](other.md), [gone](missing.md), [no such](other.md#nothing),\n"
                    "[own](#nowhere), [web](https://example.com/x#y) and `[code](not-a-link.md)`.\n\n"
                    "```\n[in a block](nor-this.md)\n```\n")
    assert broken_links(page) == [
        "page.md:5: missing.md: no such file",
        "page.md:5: other.md#nothing: no heading #nothing in other.md",
        "page.md:6: #nowhere: no heading #nowhere in page.md",
    ]


def test_repository_paths_are_found_in_code_only() -> None:
    text = "See `podvm_bootstrap/a.py` and `tests/cases/`, not podvm_bootstrap/b.py.\n\n```\ncat image/x.yaml\n```\n" \
           "`/etc/podvm_bootstrap/c` `TREE/image/d`"
    assert list(repository_paths(text)) == [(1, "podvm_bootstrap/a.py"), (1, "tests/cases/"), (4, "image/x.yaml")]


# --- the manual -----------------------------------------------------------------


def test_the_manual_has_its_pages() -> None:
    assert {p.name for p in PAGES} >= {"README.md", "operating.md", "configuration.md", "userdata.md",
                                       "image-building.md", "measured-launch.md", "benchmarks.md", "design.md"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page: Path) -> None:
    assert list(links(page.read_text())), f"{page.name} links to nothing: a page that stands alone still links"
    assert broken_links(page) == []


def test_the_readme_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = {target.partition("#")[0] for _, target in links(readme)}
    assert {f"docs/{p.name}" for p in PAGES if p.parent == ROOT / "docs"} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_of_the_repository_the_manual_names_exists(page: Path) -> None:
    missing = [f"{page.name}:{n}: {path}" for n, path in repository_paths(page.read_text())
               if not (ROOT / path).exists()]
    assert missing == []


def code_map() -> list[tuple[str, str]]:
    """(package heading, module) of each row of docs/design.md's code map tables."""
    text = (ROOT / "docs/design.md").read_text()
    section = text[text.index("\n## Code map\n") + 1:]
    section = section[:m.start() + 1] if (m := re.search(r"^## ", section[1:], re.M)) else section
    rows, package = [], ""
    for line in section.splitlines():
        if m := re.match(r"^### `?(\w+)/", line):
            package = m.group(1)
        elif m := re.match(r"^\| `([\w/]+\.py)` \|", line):
            rows.append((package, m.group(1)))
    return rows


def test_the_code_map_lists_every_module_of_the_package_once_in_its_layer() -> None:
    package = ROOT / "podvm_bootstrap"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    listed = [module for _, module in code_map()]
    assert sorted(m for m in set(listed) if listed.count(m) > 1) == [], "named more than once"
    assert sorted(modules - set(listed)) == [], "modules the code map does not list"
    assert sorted(set(listed) - modules) == [], "the code map lists modules that do not exist"
    assert [(p, m) for p, m in code_map() if m.split("/")[0] != p] == [], "a module under another package's heading"
    assert list(dict.fromkeys(p for p, _ in code_map())) == list(LAYERS), "the layers, lowest first"


def test_the_paths_table_lists_every_file_of_the_man_page() -> None:
    """docs/operating.md "Paths in the pod VM" and podvm-bootstrap(8)'s FILES
    (scripts/build-man.py, from the code's own defaults) name the same
    places: a path the code moves shows up as a missing row."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_man", ROOT / "scripts/build-man.py")
    assert spec is not None and spec.loader is not None
    build_man = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_man)
    text = (ROOT / "docs/operating.md").read_text()
    section = text.split("\n## Paths in the pod VM\n", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1).rstrip("/") for m in re.finditer(r"^\| `([^`]+)` \|", section, re.M)}
    files = {path.rstrip("/") for path, _ in build_man.FILES}
    assert len(files) >= 5 and files <= rows, f"in the man page's FILES, not in the docs' table: {files - rows}"
