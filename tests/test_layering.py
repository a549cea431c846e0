"""Dependencies point one way (docs: ARCHITECTURE.md): the pure core imports no I/O framework,
and no dtrio module imports, even lazily, a module that imports it back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dtrio"

# The pure core, and what it imports.
PURE = (
    "dtrio._pb",
    "dtrio.entities",
    "dtrio.entities.batch",
    "dtrio.entities.context",
    "dtrio.entities.ids",
    "dtrio.durations",
    "dtrio.errors",
    "dtrio.history",
    "dtrio.events",
    "dtrio.inbox",
    "dtrio.instance_ids",
    "dtrio.payloads",
    "dtrio.registry",
    "dtrio.replay",
    "dtrio.state",
    "dtrio.times",
    "dtrio.trace_context",
    "dtrio.wire",
)
FORBIDDEN = ("trio", "sqlite3", "grpclib", "asyncio", "trio_asyncio")

# Imports every pure module in turn and prints, for each, the forbidden modules loaded so far.
# pydantic is hidden: it is no dependency of dtrio, but betterproto2 imports it when it happens to
# be installed, and pydantic_core imports asyncio.
_PROBE = """
import importlib, sys
sys.modules["pydantic"] = None
for name in sys.argv[1].split(","):
    importlib.import_module(name)
    print(name, *[m for m in sys.argv[2].split(",") if m in sys.modules])
"""


def test_pure_modules_import_no_io_framework():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(PURE), ",".join(FORBIDDEN)],
        capture_output=True, text=True, check=True, cwd=PACKAGE.parent,
    ).stdout
    loaded = {name: rest for name, *rest in (line.split() for line in out.splitlines())}
    assert loaded.keys() == set(PURE)
    assert {name: mods for name, mods in loaded.items() if mods} == {}


# ---------------------------------------------------------------- the import graph


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_by(name: str) -> set[str]:
    """The dtrio modules `name` imports when it runs: at the top, in functions (lazy imports
    still close a cycle), but not under `if TYPE_CHECKING:`. Importing `a.b.c` runs the
    packages `a` and `a.b` first, unless the importer lives in them (they are running already).
    """
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            module = ".".join(parts[:i])
            if module in MODULES and module != name and not f"{name}.".startswith(f"{module}."):
                found.add(module)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit(other)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                add(source)
                for alias in child.names:  # `from . import history` imports a module
                    if f"{source}.{alias.name}" in MODULES:
                        add(f"{source}.{alias.name}")
            else:
                visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def part_of(name: str) -> str:
    """The part of dtrio a module belongs to: `dtrio.entities.batch` -> `dtrio.entities`."""
    return ".".join(name.split(".")[:2])


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(cycles)


# The generated messages import their own package back (message_pool): not ours to change.
GRAPH = {
    name: {m for m in imported_by(name) if not m.startswith("dtrio._pb")}
    for name in MODULES
    if not name.startswith("dtrio._pb")
}


def test_no_import_cycle_among_modules():
    assert find_cycles(GRAPH) == []


def test_no_import_cycle_among_parts():
    # Coarser: a package counts as one part, so `state` importing `entities.ids` while
    # `entities.batch` imports `state` is a cycle even when no single module closes one.
    parts: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        parts.setdefault(part_of(name), set()).update(
            part_of(t) for t in targets if part_of(t) != part_of(name)
        )
    assert find_cycles(parts) == []


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if part_of(n) in PURE))
def test_pure_modules_import_only_pure_ones(name):
    assert sorted(m for m in GRAPH[name] if part_of(m) not in PURE) == []


def test_the_graph_sees_imports():
    # The checks above pass vacuously if the parser misses imports: pin a few known edges.
    assert "dtrio.replay.context" in GRAPH["dtrio.replay.executor"]
    assert "dtrio.history" in GRAPH["dtrio.state"]
    assert "dtrio.services" in GRAPH["dtrio.cli"]  # a lazy import, inside a function
    assert "dtrio.replay.executor" not in GRAPH["dtrio.replay.context"]  # TYPE_CHECKING only
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# ---------------------------------------------------------------- grpc/ is transport only


GRPC = sorted(n for n in GRAPH if part_of(n) == "dtrio.grpc")
SERVICES = sorted(n for n in GRAPH if part_of(n) == "dtrio.services")
# What grpc/ may take from the storage contract: the records it reads and the queries it makes.
RECORD_TYPES = {"EntityQuery", "EntityRecord", "InstanceQuery", "InstanceRecord",
                "ActivityWorkItem", "NameFilter"}


@pytest.mark.parametrize("name", GRPC)
def test_grpc_plans_no_step_itself(name):
    assert GRAPH[name] & {"dtrio.state", "dtrio.history"} == set()


@pytest.mark.parametrize("name", SERVICES)
def test_services_know_nothing_of_grpc(name):
    assert {m for m in GRAPH[name] if part_of(m) == "dtrio.grpc"} == set()


@pytest.mark.parametrize("name", GRPC)
def test_grpc_reaches_storage_only_through_the_client_and_the_lifecycle(name):
    tree = ast.parse(MODULES[name].read_text())
    taken = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             and (node.module or "").endswith("backend") for alias in node.names}
    assert taken <= RECORD_TYPES
    touched = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert touched & {"backend", "_backend", "_store", "Backend"} == set()


def test_the_transport_checks_see_what_they_look_for():
    tree = ast.parse("engine.backend.get_instance('x')")
    assert "backend" in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert "dtrio.services.remote" in GRAPH["dtrio.grpc.servicer"]
    assert "dtrio.services.lifecycle" in GRAPH["dtrio.services.remote"]
