"""The package's layers import downwards only: config, storage, runtimes, batching, repository,
dataplane and the channel between processes, the front doors (rest, grpc, vertex), lifecycle. A
module may import its own layer and those below it, never one above, so each layer can be read,
tested and replaced on its own."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = (
    ("config",),
    ("storage",),
    ("runtimes",),
    ("batching",),
    ("repository",),
    ("dataplane", "channel"),
    ("rest", "grpc", "vertex"),
    ("lifecycle",),
)


def _layer(module: str) -> int | None:
    """The layer of `appliance.<package>...`; None for top-level modules (shared by all)."""
    parts = module.split(".")
    if parts[0] != "appliance" or len(parts) < 2:
        return None
    return next((index for index, names in enumerate(LAYERS) if parts[1] in names), None)


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(path): path for path in sorted((ROOT / "appliance").rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every appliance module `path` imports: at the top, in functions, for type checking.
    `from package import module` counts as the module, not the package's `__init__`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("appliance.")}


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    for module, path in MODULES.items():
        own = _layer(module)
        for imported in sorted(_imports(path)):
            layer = _layer(imported)
            if own is not None and layer is not None and layer > own:
                upward.append(f"{module} imports {imported}")
    assert upward == []


def test_no_two_modules_import_each_other_even_through_others() -> None:
    """A cycle, even one only the type checker follows, means neither module stands alone."""
    graph = {module: _imports(path) & MODULES.keys() for module, path in MODULES.items()}
    cycles = []
    for start in graph:
        # Depth-first from `start` through greater modules only: each cycle is found once, from
        # its least module.
        stack: list[tuple[str, tuple[str, ...]]] = [(start, (start,))]
        seen = set()
        while stack:
            module, trail = stack.pop()
            for imported in sorted(graph[module]):
                if imported == start:
                    cycles.append(" -> ".join((*trail, start)))
                elif imported not in seen and imported > start:
                    seen.add(imported)
                    stack.append((imported, (*trail, imported)))
    assert cycles == []
