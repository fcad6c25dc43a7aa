"""The house's floors: every import in `alice/` runs down, and no module imports itself back.

A room (a package of `alice/`, or a module at its root) may import its own modules and the
rooms on floors below it, never a room on its own floor or above. The rule is checked twice:
statically, over every import statement (those inside functions too, which a lazy import hides
from a plain `import`), and by importing each room in a fresh interpreter and looking at what
it loaded. docs/architecture.md says which room does what.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.environment import ROOT

PACKAGE = ROOT / "alice"

# Bottom first. Rooms on one floor know nothing of each other.
FLOORS: list[set[str]] = [
    {"alice", "alice.config", "alice.logs", "alice.metrics"},  # settings, logging, counters
    {"alice.engine"},  # diffusers: families, schedulers, pipelines, the spec it draws
    {"alice.images", "alice.models", "alice.jobs", "alice.demo_training"},  # stores and the queue
    {"alice.downloads"},  # the model manager: fetches into the model store
    {"alice.protocol"},  # what clients send and get back, in the engine's words
    {"alice.serving"},  # the runtime: stores, engine and queue wired together
    {"alice.http"},  # routes, middleware, TLS
    {"alice.cli"},  # the `alice` command
    {"alice.__main__"},  # python -m alice
]
FLOOR_OF = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}
# Files that are no part of the running code (a script that writes the bundled configs).
NOT_CODE = {"alice/configs/build_configs.py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    parts = module.split(".")
    return module if len(parts) == 1 else ".".join(parts[:2])


def alice_modules() -> dict[str, Path]:
    files = [p for p in PACKAGE.rglob("*.py") if str(p.relative_to(ROOT)) not in NOT_CODE]
    return {module_name(p): p for p in files}


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The `alice` modules a file imports, wherever in the file the import stands."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this file is in
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from alice.x import y`: y may be a module of its own
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {name for name in found if name == "alice" or name.startswith("alice.")}


def import_graph() -> dict[str, set[str]]:
    modules = alice_modules()
    known = set(modules)
    return {module: imports_of(module, path, known) - {module} for module, path in modules.items()}


def test_every_room_has_a_floor():
    rooms = {room_of(module) for module in alice_modules()}
    assert rooms - FLOOR_OF.keys() == set(), "a new room of alice/: give it a floor in FLOORS and docs/architecture.md"


def test_every_import_runs_down():
    upward = []
    for module, targets in import_graph().items():
        source = room_of(module)
        for target in targets:
            room = room_of(target)
            if room != source and FLOOR_OF[room] >= FLOOR_OF[source] and room != "alice":
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that run up a floor:\n" + "\n".join(sorted(upward))


def test_no_module_imports_itself_back():
    graph = import_graph()
    circles = [sorted(c) for c in strongly_connected(graph) if len(c) > 1]
    assert not circles, "modules that import each other back:\n" + "\n".join(" <-> ".join(c) for c in circles)


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the groups of modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_the_checks_see_an_upward_import_and_a_circle():
    """The two checks above would see the faults they guard against."""
    graph = {"alice.engine.a": {"alice.protocol.b"}, "alice.protocol.b": {"alice.engine.a"}}
    assert [sorted(g) for g in strongly_connected(graph) if len(g) > 1] == [["alice.engine.a", "alice.protocol.b"]]
    assert FLOOR_OF[room_of("alice.protocol.b")] > FLOOR_OF[room_of("alice.engine.a")]
    source = "from alice.protocol.generation import GenerationSettings\ndef f():\n    from alice.jobs import queue\n"
    path = ROOT / "test-output" / "floors_probe.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(source)
    try:
        found = imports_of("alice.engine.probe", path, {"alice.jobs.queue", "alice.protocol.generation"})
    finally:
        path.unlink()
    assert found == {"alice.protocol.generation", "alice.jobs.queue"}


@pytest.mark.parametrize("room", ["alice.engine", "alice.jobs", "alice.models", "alice.images", "alice.protocol"])
def test_importing_a_room_loads_nothing_above_it(room):
    """What a room really loads, lazy imports at import time and importlib included."""
    modules = sorted(module for module in alice_modules() if room_of(module) == room)
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({'.'.join(m.split('.')[:2]) for m in sys.modules if m.startswith('alice.')})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    above = {other for other in loaded if other in FLOOR_OF and FLOOR_OF[other] >= FLOOR_OF[room] and other != room}
    assert not above, f"importing {room} loads {sorted(above)}, on its floor or above"
