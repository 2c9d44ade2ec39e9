"""Every module imports; pure objectives import without transformers; layers import one way; no circles.

The module list comes from the files (every `*.py` under src/prefalign, packages with or without
an `__init__.py`), so a new module is checked the moment it exists: it must have a layer in LAYERS.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import prefalign

PKG = Path(prefalign.__file__).parent

# A module may import only from its own layer or below (DESIGN.md's layout). Keys are full dotted
# module paths or package prefixes; the longest key that is the module or a package above it wins,
# so one module can sit below the rest of its package. "prefalign" (the package's __init__) matches
# only itself. A module no key covers fails test_every_module_has_a_layer: place it, do not skip it.
LAYERS = {
    "prefalign": 0,
    "prefalign.types": 0,
    "prefalign.packing": 0,
    "prefalign.losses": 0,
    "prefalign.logps": 1,
    "prefalign.logging": 1,
    "prefalign.data": 1,
    # generation takes a loaded model and only needs logging: data builders (layer 1) call it
    "prefalign.models.generation": 1,
    # diagnostics' pure metrics import nothing above torch; its probes generate and call judges
    "prefalign.diagnostics.calibration": 1,
    "prefalign.diagnostics.factors": 1,
    "prefalign.diagnostics.plots": 1,
    "prefalign.diagnostics.ranking": 1,
    "prefalign.diagnostics.report": 1,
    "prefalign.models": 2,
    "prefalign.features": 2,  # if present
    "prefalign.rewards": 2,
    "prefalign.judges": 2,
    "prefalign.train": 3,
    "prefalign.diagnostics": 3,
    "prefalign.online": 4,
    "prefalign.families": 4,  # model families build on the trainee protocol (train/)
    "prefalign.reproduce": 5,  # reproductions run recipes
    "prefalign.config": 5,
    "prefalign.config_trl": 5,
    "prefalign.recipes": 5,
    "prefalign.run": 5,  # the public `from prefalign.run import train`: a re-export of recipes.policy
    "prefalign.cli": 6,
}


def module_files(pkg: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder `pkg`."""
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer_of(name: str, layers: dict[str, int]) -> int | None:
    root = name.split(".")[0]
    keys = [k for k in layers if k == name or (k != root and name.startswith(k + "."))]
    return layers[max(keys, key=len)] if keys else None


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The package's own modules that `name` imports anywhere in its file (function-level imports
    included: a lazy import postpones a circle to call time, it does not remove it) -> first line.
    `from a.b import c` counts a.b.c when c is a module, else a.b; `import a.b.c` counts a.b.c."""
    root = name.split(".")[0]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(dotted: str) -> str:
        while dotted not in known and "." in dotted:
            dotted = dotted.rpartition(".")[0]
        return dotted

    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolved against this module's package
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            if base == root or base.startswith(root + "."):
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name == root or a.name.startswith(root + ".")]
        for target in targets:
            dep = resolve(target)
            if dep != name:
                found.setdefault(dep, node.lineno)
    return found


def import_graph(pkg: Path) -> dict[str, dict[str, int]]:
    known = module_files(pkg)
    return {name: imported_modules(name, path, known) for name, path in known.items()}


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest circle through each strongly connected group of modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # breadth-first from the group's first module back to itself
        start = min(group)
        paths = {start: [start]}
        frontier = [start]
        while frontier and "done" not in paths:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        paths["done"] = paths[v] + [start]
                        break
                    if w in group and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if "done" in paths:
                    break
            frontier = nxt
        cycles.append(paths["done"])
    return cycles


MODULES = sorted(module_files(PKG))
GRAPH = import_graph(PKG)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


def test_losses_import_with_transformers_blocked():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('transformers', 'accelerate', 'datasets', 'peft'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import torch, prefalign.losses as L\n"
            "print(len(L.available()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from prefalign.losses import OBJECTIVES

    assert int(out.stdout.strip()) == len(OBJECTIVES)  # every family registered without transformers


def test_public_import_paths():
    """The README's public API and the console script survive the layout: they are what users type."""
    from prefalign.cli import main
    from prefalign.config import load_config
    from prefalign.judges import make_judge
    from prefalign.losses import get_objective
    from prefalign.recipes import policy
    from prefalign.run import train, train_curriculum

    assert train is policy.train and train_curriculum is policy.train_curriculum
    assert all(callable(f) for f in (main, load_config, make_judge, get_objective))
    out = subprocess.run([sys.executable, "-m", "prefalign.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: prefalign" in out.stdout, out.stderr


def test_every_module_has_a_layer():
    unknown = [m for m in MODULES if layer_of(m, LAYERS) is None]
    assert not unknown, f"modules with no layer: {unknown}; add each (full dotted path) to LAYERS"


def test_every_layer_entry_names_a_module():
    """A key left behind by a move or a rename would silently stop checking anything."""
    stale = [k for k in LAYERS if k not in GRAPH]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


@pytest.mark.parametrize("name", MODULES)
def test_imports_point_down_the_layers(name):
    own = layer_of(name, LAYERS)
    assert own is not None, f"{name} has no layer"
    for dep, line in GRAPH[name].items():
        theirs = layer_of(dep, LAYERS)
        assert theirs is not None and theirs <= own, \
            f"{name} (layer {own}) imports {dep} (layer {theirs}) at line {line}"


def test_no_import_cycles():
    cycles = find_cycles(GRAPH)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_catch_a_circle_an_unknown_module_and_an_upward_import(tmp_path):
    """The checks above on a made-up package: they are only worth their green if they can go red."""
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from toy.sub import high\n")  # lazy, still a circle
    (pkg / "sub" / "high.py").write_text("from toy import low\nimport toy.sub.mid\n")
    (pkg / "sub" / "mid.py").write_text("from .. import low\n")  # relative import resolved
    (pkg / "stray.py").write_text("")
    graph = import_graph(pkg)
    assert graph["toy.low"] == {"toy.sub.high": 2}
    assert graph["toy.sub.high"] == {"toy.low": 1, "toy.sub.mid": 2}
    assert graph["toy.sub.mid"] == {"toy.low": 1}
    assert find_cycles(graph) == [["toy.low", "toy.sub.high", "toy.low"]]
    layers = {"toy": 0, "toy.low": 0, "toy.sub": 1}
    assert [m for m in graph if layer_of(m, layers) is None] == ["toy.stray"]  # the root key is not a prefix
    assert layer_of("toy.sub.high", layers) == 1 and layer_of("toy.sub", layers) == 1
    assert layer_of("toy.sub.mid", {**layers, "toy.sub.mid": 0}) == 0  # the longest key wins
