"""The one-way data flow of docs/architecture.md, checked on the source: no module imports a layer
above its own (an upward import would make e.g. the store depend on the trainer)."""

from __future__ import annotations

import ast
import graphlib
import sys
from pathlib import Path

import lplkit

# Module/package of lplkit -> layer (lower layers never import higher ones). A dotted key names a
# module of a concept package whose parts sit on different layers (diffusion: the math below the
# trainer, `generate` above it); the most specific key wins.
LAYERS = {
    "errors": 0, "config": 0, "validation": 0, "hub": 0, "distributed": 0, "lazy_exports": 0,
    "preemption": 0,
    "autoencoders": 1, "data": 1, "store": 1, "diffusion": 1,
    "text": 1, "encode": 2, "lpl": 2, "stats": 2, "diffusion.samplers": 2,
    "train": 3,
    "diffusion.generate": 4, "metrics": 4, "export": 4, "export_text": 4,
    "demo": 5,
    "cli": 6, "__main__": 6,
}  # fmt: skip
ROOT = Path(lplkit.__file__).parent


def _key(module: str) -> str:
    """The LAYERS key of dotted module `module` (``lplkit.diffusion.generate`` -> its own key,
    ``lplkit.diffusion.objectives`` -> ``diffusion``); ``__init__`` for the package root."""
    parts = module.split(".")[1:]
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    return parts[0] if parts else "__init__"


def _module_of(path: Path) -> str:
    return ".".join(("lplkit", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(
        ".__init__"
    )


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lplkit."):
            found.add(_key(node.module))
            found.update(_key(f"{node.module}.{a.name}") for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(_key(a.name) for a in node.names if a.name.startswith("lplkit."))
    return found


def test_every_module_has_a_layer():
    tops = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in ROOT.rglob("*.py")}
    assert tops - {"__init__"} <= set(LAYERS), sorted(tops - {"__init__"} - set(LAYERS))


def test_no_upward_imports():
    upward = []
    for path in ROOT.rglob("*.py"):
        own = _key(_module_of(path))
        if own == "__init__":
            continue
        for dep in _imports(path) - {"__init__"}:
            if LAYERS.get(dep, -1) > LAYERS[own]:
                upward.append(f"{path.relative_to(ROOT)} imports lplkit.{dep}")
    assert not upward, upward


def test_the_layer_check_sees_an_upward_import_inside_a_package(tmp_path):
    """`diffusion.objectives` (layer 1) importing `diffusion.generate` (layer 4) is upward even
    though both live in one package."""
    assert LAYERS[_key("lplkit.diffusion.objectives")] < LAYERS[_key("lplkit.diffusion.generate")]
    bad = tmp_path / "bad.py"
    bad.write_text("from lplkit.diffusion import generate\n")
    assert "diffusion.generate" in _imports(bad)


def test_only_the_cli_imports_typer_and_rich():
    offenders = []
    for path in ROOT.rglob("*.py"):
        if path.relative_to(ROOT).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            if any(n.split(".")[0] in ("typer", "rich") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


def _module_graph() -> dict[str, set[str]]:
    """lplkit module -> the lplkit modules it imports (module-level and function-level imports:
    a cycle hidden in a function is still a cycle). `from pkg import sub` counts as importing the
    submodule `pkg.sub`, `from pkg import name` as importing `pkg` (its `__init__`)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("lplkit", *path.relative_to(ROOT).with_suffix("").parts))
        modules[name.removesuffix(".__init__")] = path

    def owner(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("lplkit")
            ):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else owner(node.module))
            elif isinstance(node, ast.Import):
                deps.update(owner(a.name) for a in node.names if a.name.startswith("lplkit"))
        graph[name] = deps - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return exc.args[1]
    return None


def test_cycle_detection_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    graph = _module_graph()
    assert "lplkit.train.builders" in graph and "lplkit.lpl.loss" in graph  # the walk found them
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _function_level_stdlib_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [(node.lineno, n) for n in names if n.split(".")[0] in sys.stdlib_module_names]
    return found


def test_no_function_level_import_of_the_standard_library():
    """Lazy imports are for heavy or optional packages (torch, diffusers, zarr); the standard
    library is imported at the top, where a reader looks for it."""
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in ROOT.rglob("*.py")
        for line, name in _function_level_stdlib_imports(ast.parse(path.read_text()))
    ]
    assert not found, found
    planted = "def f():\n    import json\n    from pathlib import Path\n    import torch\n"
    assert [n for _, n in _function_level_stdlib_imports(ast.parse(planted))] == ["json", "pathlib"]


def _only_reexports(tree: ast.Module) -> bool:
    """A module whose body is a docstring, imports and `__all__`: a second name for other code."""
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [
            "__all__"
        ]:
            continue
        return False
    return True


def test_the_root_is_a_map_and_no_module_only_reexports():
    """At most 10 modules at the package root (concepts are subpackages), and no module exists
    only to re-export or alias another (a package's own `__init__` may present its API)."""
    root_modules = sorted(
        p.name for p in ROOT.glob("*.py") if p.name not in ("__init__.py", "__main__.py")
    )
    assert len(root_modules) <= 10, root_modules
    aliases = [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if p.name != "__init__.py" and _only_reexports(ast.parse(p.read_text()))
    ]
    assert not aliases, aliases
    planted = '"""Old path."""\nfrom lplkit.distributed import barrier\n__all__ = ["barrier"]\n'
    assert _only_reexports(ast.parse(planted))
