"""The package's layers hold: imports go downward only, and nothing imports in a circle.

``docs/actor-design.md`` ("Layers, and where a change goes") names the layers; this test
is what keeps that page true. A module-level import may reach its own layer or a lower
one. A late import (inside a function) may reach upward only where listed in
``LATE_UPWARD`` below, each with its reason, so a new one is a decision, not an accident.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "brama_actors"

#: Lowest first. A module belongs to the first layer with a matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("values", ("_frozen", "_errors", "_events", "_status", "_config", "_keys", "_durations")),
    ("rules", ("_rules", "_window")),
    ("runtime", ("_runtime",)),
    ("delivery", ("_delivery", "telemetry")),
    ("wire", ("_remote._wire", "_remote._ops", "_remote._frames", "_remote._link")),
    ("authority", ("_authority",)),
    ("guard", ("_guard",)),
    ("system", ("_system", "testing", "pytest_plugin")),
    ("integrations", ("_http", "httpx", "requests", "starlette")),
    ("remote", ("_remote",)),
    ("tools", ("_cli", "__main__", "", "prometheus", "opentelemetry")),
]

#: Late imports that reach a higher layer, and why each is there.
LATE_UPWARD = {
    # serve() loads the socket layer only when a system is served.
    ("_system._brama", "_remote._server"),
    ("_system._default", "_remote._server"),
    # The package's lazy attributes (PEP 562): connect/Client/Server/spawn.
    ("", "_remote._client"),
    ("", "_remote._server"),
    ("", "_remote._spawn"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix and module.startswith(prefix + ".")):
                return index
    raise AssertionError(f"module {module!r} is in no layer: add it to LAYERS")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module relative to the package, is it a late import)."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "brama_actors":
                names = [alias.name for alias in node.names]
            elif node.module.startswith("brama_actors."):
                names = [node.module.removeprefix("brama_actors.")]
        elif isinstance(node, ast.Import):
            names = [a.name.removeprefix("brama_actors.") for a in node.names
                     if a.name.startswith("brama_actors.")]
        late = id(node) not in top
        found.extend((name, late) for name in names
                     if (PACKAGE / name.replace(".", "/")).exists()
                     or (PACKAGE / (name.replace(".", "/") + ".py")).exists())
    return found


def _graph() -> dict[str, list[tuple[str, bool]]]:
    return {_module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_imports_downward() -> None:
    """A module-level import never reaches a higher layer; late ones only as listed."""
    wrong = []
    for module, imports in _graph().items():
        for target, late in imports:
            if _layer(target) <= _layer(module):
                continue
            if late and (module, target) in LATE_UPWARD:
                continue
            wrong.append(f"{module or 'brama_actors'} -> {target}"
                         f"{' (late)' if late else ''}: "
                         f"{LAYERS[_layer(module)][0]} imports {LAYERS[_layer(target)][0]}")
    assert not wrong, "\n".join(wrong)


def test_late_upward_list_is_current() -> None:
    """Every allowed upward import still exists (the list does not rot)."""
    graph = _graph()
    present = {(module, target) for module, imports in graph.items()
               for target, late in imports if late}
    assert set(LATE_UPWARD) <= present, set(LATE_UPWARD) - present


def test_no_module_level_import_cycle() -> None:
    """Module-level imports form no cycle (late imports are how cycles hide)."""
    graph = {module: sorted({t for t, late in imports if not late and t != module})
             for module, imports in _graph().items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in graph.get(module, []):
            if state.get(target) == 1:
                cycle = [*path[path.index(target):], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if state.get(target) is None:
                visit(target)
        path.pop()
        state[module] = 2

    for module in graph:
        if state.get(module) is None:
            visit(module)


def test_layer_table_matches_the_design_page() -> None:
    """Every layer named here is a row of the design page's table."""
    page = (PACKAGE.parent / "docs" / "actor-design.md").read_text()
    for name, _ in LAYERS:
        assert f"| {name} |" in page, name


def test_importing_the_package_loads_no_network_code() -> None:
    """``import brama_actors`` loads neither sockets, cloudpickle nor asyncio.

    The remote layer (and what it needs) loads when a system is served or a client
    connects; an application that only guards calls in one process never pays for it.
    """
    code = ("import sys, brama_actors\n"
            "print(sorted(m for m in ('socket', 'ssl', 'cloudpickle', 'asyncio', "
            "'multiprocessing.connection', 'brama_actors._remote._server', "
            "'brama_actors._remote._client') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
    code = ("import sys, brama_actors\n"
            "brama_actors.connect\n"
            "print('brama_actors._remote._client' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "True", done.stdout + done.stderr
