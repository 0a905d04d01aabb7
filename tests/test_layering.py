"""The import rules of docs/architecture.md ("Layering"), checked on the source.

Every ``import`` in ``src/fedloom`` (module level or inside a function) is parsed with
``ast``; each module belongs to a unit (its first name under ``fedloom``: ``server``,
``sim``, ``records`` ...) and each unit to a layer. The rules:

- core units import only core units; of them only ``runs`` and the config adapters
  (``data.federated``, ``models.zoo``) read ``fedloom.config``: the rest take arguments;
- ``server`` (orchestration) imports only the core and itself, never ``fedloom.config``;
- runtimes import the core and ``server``; ``distributed`` may build on ``sim``;
  ``transport`` imports neither ``sim`` nor ``distributed``, and neither imports it;
- faces (``cli``, ``cli_certs``, ``report``, ``console``, ``assemble``, ``tracking``,
  ``compare``, ``sweep``, ``__main__``) may
  import anything,
  and nothing else imports them;
- no import cycles between units.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fedloom"

CORE = {
    "params",
    "records",
    "config",
    "errors",
    "atomic",
    "runs",
    "metrics",
    "transforms",
    "compression",
    "aggregation",
    "attacks",
    "edge",
    "optim",
    "privacy",
    "secagg",
    "data",
    "models",
    "client",
    "task",
}
ORCHESTRATION = {"server"}
FACES = {
    "cli",
    "cli_certs",
    "cli_export",
    "cli_audit",
    "cli_compare",
    "cli_sweep",
    "compare",
    "sweep",
    "tracking",
    "audit",
    "report",
    "console",
    "progress",
    "api",
    "assemble",
    "__main__",
    "__init__",
}
# what each runtime may import besides itself
RUNTIMES = {
    "sim": CORE | ORCHESTRATION,
    "distributed": CORE | ORCHESTRATION | {"sim"},
    "transport": CORE | ORCHESTRATION,
}
CONFIG_READERS = {"fedloom.config", "fedloom.runs", "fedloom.data.federated", "fedloom.models.zoo"}


def unit(module: str) -> str:
    """``fedloom.server.engine`` -> ``server``; ``fedloom`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str) -> str:
    """``fedloom.x.y`` as imported: the module itself, or its package when ``y`` is a name
    defined in the package (``from fedloom.transport import wire`` names a module)."""
    parts = name.split(".")
    while parts:
        candidate = SRC.parent.joinpath(*parts)
        if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
            return ".".join(parts)
        parts.pop()
    return name


def imports_of(path: Path) -> set[str]:
    """Every fedloom module ``path`` imports, at any depth of its code."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            if name == "fedloom" or name.startswith("fedloom."):
                found.add(_resolve(name))
    found.discard(me)
    return found


def import_graph() -> dict[str, set[str]]:
    return {_module_name(p): imports_of(p) for p in sorted(SRC.rglob("*.py"))}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import of ``graph`` (module -> modules it imports) against the rules."""
    found: list[str] = []
    units: dict[str, set[str]] = {}
    for module, imported in sorted(graph.items()):
        src = unit(module)
        for target in sorted(imported):
            dst = unit(target)
            if dst == src:
                continue
            units.setdefault(src, set()).add(dst)
            why = None
            if dst in FACES and src not in FACES:
                why = f"{dst} is a face: nothing below the faces imports it"
            elif src in CORE and dst not in CORE:
                why = "the core imports only the core"
            elif src in ORCHESTRATION and dst not in CORE:
                why = "server/ imports only the core"
            elif src in RUNTIMES and dst not in RUNTIMES[src]:
                why = f"{src}/ may not import {dst}"
            elif src not in CORE | ORCHESTRATION | FACES | set(RUNTIMES):
                why = f"{src} belongs to no layer: add it to docs/architecture.md and this test"
            if why:
                found.append(f"{module} imports {target}: {why}")
        if (
            "fedloom.config" in imported
            and unit(module) in CORE | ORCHESTRATION
            and module not in CONFIG_READERS
        ):
            found.append(
                f"{module} imports fedloom.config: the core takes arguments, "
                "fedloom.assemble maps the config"
            )
    for cycle in _cycles(units):
        found.append(f"import cycle between {' <-> '.join(cycle)}")
    return found


def test_the_source_keeps_the_layering_rules() -> None:
    graph = import_graph()
    assert "fedloom.server.engine" in graph and "fedloom.assemble" in graph
    assert violations(graph) == []


def test_function_local_imports_are_seen() -> None:
    # cli imports assemble only inside its commands
    assert "fedloom.assemble" in import_graph()["fedloom.cli"]


@pytest.mark.parametrize(
    ("module", "target", "expected"),
    [
        ("fedloom.records", "fedloom.sim.runtime", "the core imports only the core"),
        ("fedloom.privacy.ledger", "fedloom.server.engine", "the core imports only the core"),
        ("fedloom.server.engine", "fedloom.transport.server", "server/ imports only the core"),
        ("fedloom.server.engine", "fedloom.sim.clock", "server/ imports only the core"),
        ("fedloom.transport.server", "fedloom.sim.runtime", "transport/ may not import sim"),
        ("fedloom.transport.client", "fedloom.distributed", "transport/ may not import"),
        ("fedloom.sim.runtime", "fedloom.transport.server", "sim/ may not import transport"),
        ("fedloom.sim.runtime", "fedloom.assemble", "assemble is a face"),
        ("fedloom.server.sync", "fedloom.config", "the core takes arguments"),
        ("fedloom.secagg.cohort", "fedloom.config", "the core takes arguments"),
    ],
)
def test_a_forbidden_import_is_found(module: str, target: str, expected: str) -> None:
    """The rules catch a forbidden arrow added to an otherwise clean graph."""
    graph = {
        "fedloom.records": set(),
        "fedloom.config": set(),
        "fedloom.server.engine": {"fedloom.records"},
        "fedloom.sim.runtime": {"fedloom.server.engine"},
        "fedloom.transport.server": {"fedloom.server.engine"},
        "fedloom.assemble": {"fedloom.sim.runtime", "fedloom.transport.server", "fedloom.config"},
    }
    assert violations(graph) == []
    graph.setdefault(module, set()).add(target)
    found = violations(graph)
    assert len(found) >= 1 and expected in found[0], found


def test_an_import_cycle_between_packages_is_found() -> None:
    graph = {
        "fedloom.privacy.ledger": {"fedloom.secagg.cohort"},
        "fedloom.secagg.cohort": {"fedloom.privacy.mechanisms"},
        "fedloom.privacy.mechanisms": set(),
    }
    assert violations(graph) == ["import cycle between privacy <-> secagg"]


def test_a_device_client_loads_no_simulator_registry_or_sqlite() -> None:
    """What a device imports: no simulator, no torch.distributed runtime, no server
    registry (and so no SQLite)."""
    code = (
        "import sys, fedloom.transport.client\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('fedloom'))))\n"
        "print('sqlite3' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    modules, sqlite = out[0].split(), out[1]
    assert "fedloom.transport.client" in modules
    bad = [
        m
        for m in modules
        if m.startswith(("fedloom.sim", "fedloom.distributed", "fedloom.server.registry"))
    ]
    assert bad == [] and sqlite == "False"
