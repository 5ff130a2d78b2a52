"""docs/architecture.md is the map: every `file: name` it names must exist, so the map cannot rot quietly; and the
package's imports keep its rules (no cycle, no `_private` name taken from another module)."""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from conftest import ROOT

REF = re.compile(r"`([\w/]+\.py): (\w+)`")


def test_every_file_and_name_on_the_map_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    refs = REF.findall(text)
    assert len(refs) > 30
    missing = []
    for path, name in refs:
        source = (ROOT / path).read_text() if (ROOT / path).is_file() else ""
        if not re.search(rf"^(def|class) {name}\b|^{name}\s*[:=]|^    def {name}\b", source, re.M):
            missing.append(f"{path}: {name}")
    assert not missing, missing


def test_every_device_module_sits_in_a_room_the_map_names():
    """device/ is rooms that follow the loop (issue 30): the map's block lists the rooms and what stays at the
    top; a new module lands in one of them or the map says why not."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("device/    edgecls.device", 1)[1].split("fleet/", 1)[0]
    rooms = set(re.findall(r"^  (\w+)/ ", block, re.M))
    top = set(re.findall(r"(\w+)\.py", block.split("capture/", 1)[0]))
    found_rooms = {p.parent.name for p in (ROOT / "device").glob("*/__init__.py")}
    found_top = {p.stem for p in (ROOT / "device").glob("*.py")} - {"__init__"}
    assert found_rooms == rooms and len(rooms) >= 5
    assert found_top <= top, sorted(found_top - top)
    assert not [p for p in (ROOT / "device").glob("*/*.py") if p.parent.name not in rooms]


# ---------------------------------------------------------------- the package's imports (issue 30)

def _package_modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name: edgecls/ and the stage folders that
    pyproject.toml's package-dir maps into it (train/ → edgecls.train, …)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    roots = {"edgecls": "edgecls", **dict(re.findall(r'^"(edgecls\.\w+)" = "(\w+)"$', pyproject, re.M))}
    modules = {}
    for package, folder in roots.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(module: str, path: Path, modules: dict) -> list[tuple[str, str]]:
    """(imported module, imported name or "") for every import in `path`, at any depth (lazy imports in functions
    too), except those under `if TYPE_CHECKING:`, which never run."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in
                   ast.unparse(block.test) for stmt in block.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the module's own package upwards
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".")
            found += [(f"{base}.{alias.name}", "") if f"{base}.{alias.name}" in modules else (base, alias.name)
                      for alias in node.names]
    return found


def _owner(name: str, modules: dict) -> str | None:
    """The package module `name` is, or is inside (None: not ours)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


@functools.lru_cache(maxsize=None)
def _import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """module → the package modules it imports; and every import of a `_private` name from another module."""
    modules = _package_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for module, path in modules.items():
        for target, name in _imports(module, path, modules):
            owner = _owner(target, modules)
            if owner is None or owner == module:
                continue
            graph[module].add(owner)
            if name.startswith("_") and not name.startswith("__"):
                private.append(f"{module} imports {name} from {owner}")
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: groups of two or more modules that each reach all the others."""
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    groups = {tuple(sorted({m} | {o for o in reach[m] if m in reach[o]})) for m in graph if m in reach[m]}
    return sorted(list(g) for g in groups)


def test_the_package_has_no_import_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]   # the rule itself
    graph, _ = _import_graph()
    assert len(graph) > 80 and "edgecls.stopping" in graph["edgecls.train.trainer"]   # lazy imports are seen
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_no_module_imports_a_private_name_from_another():
    _, private = _import_graph()
    assert not private, private


# `X` below is `tests/test_x.py`, `Y` `tests/test_y.py`, (`C` = `tests/test_c.py`): the letters a table's rows use.
ABBREVIATION = re.compile(r"`(\w+)`(?: below is| is| =)? `(tests/[\w/]+\.py)`")
TEST_REF = re.compile(r"`((?:tests/[\w/]+\.py|\w+))::(\w+)`")


def test_every_test_the_guarantees_name_exists():
    """docs/guarantees.md pairs each promise with the test that guards it: a renamed test must not leave a
    promise pointing at nothing (a letter means the file the nearest definition above, or in its row, names)."""
    files, missing = {}, []
    for line in (ROOT / "docs" / "guarantees.md").read_text().splitlines():
        files.update(ABBREVIATION.findall(line))
        for file, name in TEST_REF.findall(line):
            path = ROOT / files.get(file, file)
            if not path.is_file() or not re.search(rf"^\s*(?:async )?def {name}\(", path.read_text(), re.M):
                missing.append(f"{file}::{name} ({files.get(file, file)})")
    assert not missing, missing
