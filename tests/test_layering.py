"""Imports point one way: core <- toy_models <- analysis <- application.

Layers, lowest first (a module may import its own layer and the ones below, never above):

0. core: `slt_superposition` (sampler, LLC, calibration, theory, I/O, figure style), except
   the application modules listed in `APPLICATION`;
1. models: `toy_models` (data, models, training);
2. analysis: `analysis` (measures, comparison, SAEs, plots);
3. application: the CLI (`slt_superposition.cli`, `.entry`, `slt_superposition.commands`), the
   `reproduce` registry (`experiments.registry`) and the rest of `experiments`, whose job is to
   import everything.

Every import statement counts, at module level or inside a function (a lazy import is still a
dependency). Dynamic imports (`importlib.import_module`) are allowed in the application layer
only. The CLI modules live inside `slt_superposition/`; they are named below so
that moving them changes one list. Known violations are listed in `ALLOWED`, one reason each:
the test fails on a new upward import, and on an entry that is no longer needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("slt_superposition", "toy_models", "analysis", "experiments")
LAYERS = ("core", "models", "analysis", "application")

# application modules inside slt_superposition/ (a name covers its submodules)
APPLICATION = ("slt_superposition.cli", "slt_superposition.entry", "slt_superposition.__main__", "slt_superposition.commands")

# (importing module, imported module) -> why it is there for now
ALLOWED: dict[tuple[str, str], str] = {}


def layer(module: str) -> str:
    """The layer of a dotted module name of this repository."""
    top = module.split(".")[0]
    if top == "experiments" or any(module == a or module.startswith(a + ".") for a in APPLICATION):
        return "application"
    return {"slt_superposition": "core", "toy_models": "models", "analysis": "analysis"}[top]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST) -> list[tuple[str, int]]:
    """(dotted name, line) of every absolute import of this repository's packages in `tree`;
    `from a.b import c` gives `a.b.c` when `a.b.c` is a module, else `a.b`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*name.split("."))).with_suffix(".py").exists() or \
                    (ROOT / Path(*name.split("."))).is_dir()
                found.append((name if is_module else node.module, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] in PACKAGES]


def dynamic_imports(tree: ast.AST) -> list[int]:
    """Lines that call `importlib.import_module` / `__import__` with a non-constant name."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__") and not (node.args and isinstance(node.args[0], ast.Constant)):
                lines.append(node.lineno)
    return lines


def _modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield module_name(path), path, ast.parse(path.read_text(), filename=str(path))


def test_imports_point_down_the_layers():
    upward, used = [], set()
    for module, path, tree in _modules():
        rank = LAYERS.index(layer(module))
        for name, line in imports(tree):
            if LAYERS.index(layer(name)) <= rank:
                continue
            if (module, name) in ALLOWED:
                used.add((module, name))
                continue
            upward.append(f"{path.relative_to(ROOT)}:{line}: {layer(module)} module {module} imports "
                          f"{layer(name)} module {name}")
    assert not upward, "imports against the layering (core <- toy_models <- analysis <- application):\n" + \
        "\n".join(upward)
    stale = set(ALLOWED) - used
    assert not stale, f"no longer needed, remove from ALLOWED: {sorted(stale)}"


def test_dynamic_imports_only_in_the_application_layer():
    below = [f"{path.relative_to(ROOT)}:{line}" for module, path, tree in _modules()
             for line in dynamic_imports(tree) if layer(module) != "application"]
    assert not below, "importlib below the application layer hides a dependency from this test: " + ", ".join(below)


def test_layer_of_names():
    # the classification the two tests above rely on
    assert layer("slt_superposition.llc") == layer("slt_superposition") == "core"
    assert layer("slt_superposition.commands.plot") == layer("slt_superposition.cli") == "application"
    assert layer("experiments.registry") == layer("experiments.kgon_llc") == "application"
    assert layer("slt_superposition.experimental") == "core"  # a prefix of a name is not the name
    assert (layer("toy_models.train"), layer("analysis.plots")) == ("models", "analysis")
    tree = ast.parse("from slt_superposition import figure_style as fs, llc\nimport toy_models.train\n"
                     "def f():\n    from analysis.plots import draw_columns\n")
    assert [name for name, _ in imports(tree)] == ["slt_superposition.figure_style", "slt_superposition.llc",
                                                   "toy_models.train", "analysis.plots"]
