"""The project's import graph: no cycles, and data flowing one way (common <- gan <- weights <- eval/app);
inside gan/attention/, method modules built only from the base contract and the shared parts.

Reads every module's source with ``ast`` (function-level imports included), so a lazy import cannot
hide a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "gan", "weights", "eval", "app")
# What each top-level package may import from the project (besides itself).
ALLOWED = {
    "common": set(),
    "gan": set(),
    "weights": {"common", "gan"},
    "eval": {"common", "gan", "weights"},
    "app": {"common", "gan", "weights", "eval"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere in its source (``from pkg import mod`` counts as pkg.mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
            if not name.startswith(base + "."):  # an ancestor package is already being imported: no edge
                targets.append(base)
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def test_graph_sees_the_known_imports(graph):
    # guards the walker itself: these edges exist in the code
    assert "gan.attention.registry" in graph["gan.attention"]
    assert "common.files" in graph["weights"]
    assert "gan.attention.base" in graph["gan.attention.registry"]


def test_no_import_cycles(graph):
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_packages_import_only_downwards(graph):
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        for target in targets
        if target.split(".")[0] != name.split(".")[0] and target.split(".")[0] not in ALLOWED[name.split(".")[0]]
    )
    assert not wrong, "; ".join(wrong)


ATTENTION = "gan.attention"
METHOD_GROUPS = ("published", "variants")  # one module per method
GROUPS = (*METHOD_GROUPS, "parts")


def attention_group(name: str) -> str | None:
    """The group of a module (or group package) under gan/attention/, read from its path; None for the top
    (registry, base, the package itself) and for modules elsewhere."""
    parts = name.split(".")
    if parts[:2] != ATTENTION.split(".") or len(parts) < 3 or parts[2] not in GROUPS:
        return None
    return parts[2]


def test_attention_groups_exist(graph):
    # guards the group test itself: every group holds modules, and the registry reaches every method module
    groups = {attention_group(name) for name in graph} - {None}
    assert groups == set(GROUPS)
    methods = {name for name in graph if attention_group(name) in METHOD_GROUPS and name.count(".") == 3}
    assert methods and methods <= graph["gan.attention.registry"]


def test_method_modules_import_no_other_method_module(graph):
    # A published method or a project variant is built from base and parts only; parts import no method module,
    # and no published method depends on a variant. Derived from the path, so a new module is held to it.
    wrong = []
    for name, targets in graph.items():
        group = attention_group(name)
        if group is None:
            continue
        for target in targets:
            other = attention_group(target)
            if group in METHOD_GROUPS and other in METHOD_GROUPS:
                wrong.append(f"method module {name} imports method module {target}")
            elif group == "parts" and other in METHOD_GROUPS:
                wrong.append(f"part {name} imports method module {target}")
            elif group == "published" and other == "variants":
                wrong.append(f"published {name} imports variant {target}")
            elif target.startswith(ATTENTION + ".") and target != f"{ATTENTION}.base" and other is None:
                wrong.append(f"{name} imports {target} (only base and parts are below the methods)")
    assert not wrong, "; ".join(sorted(wrong))
