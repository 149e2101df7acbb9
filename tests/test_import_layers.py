"""The packages by stage import one way: a package imports only from the
packages below it in LAYERS (and from itself), never from one above.

The source of every module is read (imports inside functions and under
TYPE_CHECKING count too: a type from a higher layer is a dependency on it),
so a lazy import cannot hide a cycle between stages. The root package holds
only __version__ and may be imported from anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "podvm_bootstrap"

# Lowest first. The data flows user-data -> plan -> images -> measurement ->
# units -> supervision; the layers put the vocabulary each stage needs below it
# (image references and signatures under the baked policy that names them).
LAYERS = ("common", "images", "config", "userdata", "attest", "units", "runtime", "cli")


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def layer_of(module: str) -> int | None:
    """The index in LAYERS of a module's package; None for the root package and
    __main__ (above every layer)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__main__":
        return None
    return LAYERS.index(parts[1])


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that an import statement of the file names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the layers check reads absolute ones"
            if node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
    return {n for n in names if n in modules}


def upward_imports(files: dict[str, Path]) -> list[str]:
    modules = set(files)
    found = []
    for module, path in files.items():
        own = layer_of(module)
        if own is None:
            continue
        for target in sorted(imported_modules(path, modules)):
            theirs = layer_of(target)
            if theirs is not None and theirs > own:
                found.append(f"{module} imports {target} ({LAYERS[own]}/ is below {LAYERS[theirs]}/)")
    return found


def test_every_module_is_in_a_layer_package() -> None:
    files = module_files()
    top = {m for m in files if m.count(".") == 1 and files[m].name != "__init__.py"} - {f"{PACKAGE}.__main__"}
    assert not top, f"modules outside the stage packages: {sorted(top)}"
    packages = {p.name for p in (ROOT / PACKAGE).iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS), f"packages not in LAYERS: {sorted(packages ^ set(LAYERS))}"


def test_no_package_imports_from_a_higher_one() -> None:
    found = upward_imports(module_files())
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The probe works: a config module importing the runtime is found, in a
    function body too."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from podvm_bootstrap.runtime.daemon import run\n")
    files = {f"{PACKAGE}.config.bad": bad, f"{PACKAGE}.runtime.daemon": bad}
    assert upward_imports(files) == [
        f"{PACKAGE}.config.bad imports {PACKAGE}.runtime.daemon (config/ is below runtime/)"]
    type_only = tmp_path / "type_only.py"
    type_only.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                         "    from podvm_bootstrap.cli import status\n")
    files = {f"{PACKAGE}.units.t": type_only, f"{PACKAGE}.cli.status": type_only}
    assert len(upward_imports(files)) == 1


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_package_says_what_it_holds(layer: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / PACKAGE / layer / "__init__.py").read_text()))
    assert doc and len(doc) > 40, f"{PACKAGE}/{layer}/__init__.py: a docstring saying what the stage holds"
