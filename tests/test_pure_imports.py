"""The pure core stays pure: none of its modules loads anything that does I/O.

The pure core is the list of modules that pyproject.toml has mypy check
strictly (its one home). Importing one of them, in a fresh interpreter, must
not load a library that talks to the outside (network, processes, D-Bus, the
TPM, podman) nor any module of this package outside the core, except the few
in SHELL_ALLOWED. And no import statement in a core module, even one inside a
function (run later, on first use), may name such a module. A new module of
the package is outside the core until it is added to that list."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "podvm_bootstrap"

# Libraries that do I/O with the world outside the process.
IO_LIBRARIES = (
    "requests", "urllib3", "urllib.request", "http.client", "socket", "ssl", "subprocess",
    "podman", "gi", "pydbus", "sdnotify", "tpm2_pytss",
)

# Modules outside the core that the core may import, and why that is harmless.
SHELL_ALLOWED = {
    f"{PACKAGE}.common.fsutil": "the manifest and policy loaders read their baked file through its bounded read",
    f"{PACKAGE}.common.log": "stdlib logging; its handler is set up by the command line, not by the core",
    f"{PACKAGE}.units.gate": "render takes the gate's entrypoint and volume strings; its FIFO code needs only os",
}


def pure_core() -> list[str]:
    """The modules of pyproject.toml's strict mypy override."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    strict = [o for o in config["tool"]["mypy"]["overrides"] if o.get("disallow_untyped_defs")]
    assert len(strict) == 1, "pyproject.toml: expected one mypy override with disallow_untyped_defs (the pure core)"
    return list(strict[0]["module"])


def package_modules() -> set[str]:
    """Every module of the package, from its files."""
    modules = set()
    for path in (ROOT / PACKAGE).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def source_path(module: str) -> Path:
    """The file of a module: its .py, or a package's __init__.py."""
    base = ROOT / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def bare_packages() -> set[str]:
    """The packages whose __init__ imports nothing (a docstring): importing a
    pure module loads them, harmlessly."""
    def imports_nothing(path: Path) -> bool:
        return not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(ast.parse(path.read_text())))
    return {m for m in package_modules() if source_path(m).name == "__init__.py" and imports_nothing(source_path(m))}


PURE = pure_core()


def forbidden_project_modules() -> set[str]:
    return package_modules() - set(PURE) - set(SHELL_ALLOWED) - bare_packages()


def is_forbidden(module: str, project: set[str]) -> bool:
    return module in project or any(module == lib or module.startswith(f"{lib}.") for lib in IO_LIBRARIES)


def loaded_by_import(module: str) -> list[str]:
    """The modules that importing `module` loads, in a fresh interpreter
    (isolated from the environment) that imports this tree's package."""
    code = (f"import json, sys\nsys.path.insert(0, {str(ROOT)!r})\nbefore = set(sys.modules)\n"
            f"import {module}\nprint(json.dumps(sorted(set(sys.modules) - before)))\n")
    run = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, f"importing {module} failed: {run.stderr.strip()[-2000:]}"
    return json.loads(run.stdout)


def imported_by_source(module: str, modules: set[str]) -> set[str]:
    """Every module that an import statement of `module`'s source names,
    wherever it stands (a function body too), except under TYPE_CHECKING."""
    path = source_path(module)
    tree = ast.parse(path.read_text(), str(path))
    skipped = {id(node) for stmt in ast.walk(tree)
               if isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Name) and stmt.test.id == "TYPE_CHECKING"
               for node in ast.walk(stmt)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # `from package import module` names a module too
            names.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
    return names


def test_the_pure_core_names_modules_that_exist() -> None:
    modules = package_modules()
    assert len(PURE) >= 10 and len(set(PURE)) == len(PURE)
    assert set(PURE) <= modules, f"not modules of the package: {sorted(set(PURE) - modules)}"
    assert set(SHELL_ALLOWED) <= modules - set(PURE)


@pytest.mark.parametrize("module", PURE + sorted(SHELL_ALLOWED))
def test_importing_a_pure_module_loads_nothing_that_does_io(module: str) -> None:
    project = forbidden_project_modules()
    loaded = loaded_by_import(module)
    assert module in loaded or module == PACKAGE
    bad = [m for m in loaded if is_forbidden(m, project)]
    assert not bad, f"importing {module} loads {bad}: I/O belongs to the shell, not to the pure core"


@pytest.mark.parametrize("module", PURE + sorted(SHELL_ALLOWED))
def test_no_import_statement_in_a_pure_module_names_io(module: str) -> None:
    modules = package_modules()
    project = forbidden_project_modules()
    bad = sorted(m for m in imported_by_source(module, modules) if is_forbidden(m, project))
    assert not bad, f"{module} imports {bad} (even on first use, it is I/O in the pure core)"


def test_the_checks_see_io_in_shell_modules() -> None:
    """The probes themselves work, on shell modules: the metadata clients load
    requests and socket; the image build's store runs podman (subprocess) and
    reads container storage (images); the command line imports the commands
    inside main()."""
    project = forbidden_project_modules()
    found = {m for m in loaded_by_import(f"{PACKAGE}.userdata.sources") if is_forbidden(m, project)}
    assert {"requests", "urllib3", "socket", f"{PACKAGE}.userdata.sources.http"} <= found
    found = {m for m in loaded_by_import(f"{PACKAGE}.images.treestore") if is_forbidden(m, project)}
    assert {"subprocess", f"{PACKAGE}.images.storage"} <= found
    modules = package_modules()
    assert {"subprocess", f"{PACKAGE}.images.storage"} <= imported_by_source(f"{PACKAGE}.images.treestore", modules)
    assert f"{PACKAGE}.cli.commands" in imported_by_source(f"{PACKAGE}.cli.main", modules)
