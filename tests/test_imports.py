"""The import graph of src/autovae has no cycle (issue 20).

Every ``import`` and ``from ... import`` statement counts, at module level or inside a function
(Python tolerates a function-level cycle, a reader does not), and ``from . import name`` counts
as an import of the package's ``__init__`` unless ``name`` is a submodule. The implicit import
of a parent package's ``__init__`` when a submodule is imported is not an edge (it would make
every package a cycle with its own modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import autovae

SRC = Path(autovae.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the autovae modules it imports (see the module docstring)."""
    modules = _modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        edges.add(sub)
                    elif target in modules:
                        edges.add(target)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_src():
    assert cycles(import_graph()) == []


def test_the_checker_sees_function_level_and_package_init_cycles():
    graph = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert cycles(graph) == [["a", "b"]]
    # the cycle issue 20 removed: config -> models (function level) -> adversarial -> config
    assert cycles({"autovae.config": {"autovae.models"},
                   "autovae.models": {"autovae.models.adversarial"},
                   "autovae.models.adversarial": {"autovae.config"}})


def test_config_asks_the_models_through_the_registry_only():
    graph = import_graph()
    assert not {m for m in graph["autovae.config"] if m.startswith("autovae.models")}
    assert "autovae._registry" in graph["autovae.config"]
    assert graph["autovae._registry"] == set()
    for module, edges in graph.items():
        if module.startswith("autovae.models"):
            assert "autovae.config" not in edges, module


def test_every_setting_is_read_by_the_loop_or_declared_by_a_model():
    import dataclasses

    from autovae.config import LOOP_KEYS, Config
    from autovae.models import MODELS

    declared = set().union(*(cls.reads for cls in MODELS.values()))
    fields = {f.name for f in dataclasses.fields(Config)}
    assert fields <= LOOP_KEYS | declared, sorted(fields - LOOP_KEYS - declared)
    assert not LOOP_KEYS & declared, sorted(LOOP_KEYS & declared)
    assert declared <= fields, sorted(declared - fields)


def test_train_and_evaluate_are_functions_not_shadowed_modules():
    """Issue 20: autovae.train and autovae.evaluate were both functions and modules (the
    function shadowed the module); the modules are now training and evaluation."""
    import importlib

    import pytest

    from autovae import evaluation, training

    assert autovae.train is training.train and autovae.evaluate is evaluation.evaluate
    for name in ("autovae.train", "autovae.evaluate"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)


def test_inverse_invert_is_always_the_function():
    """The module is ``inversion``: importing it first does not shadow the function."""
    import autovae.inverse.inversion  # noqa: F401
    from autovae.inverse import invert

    assert callable(invert) and invert.__module__ == "autovae.inverse.inversion"


def test_inverse_lazy_names_are_the_type_checking_names():
    """``__all__``, the lazy table and the TYPE_CHECKING imports name the same objects."""
    import autovae.inverse as inverse

    text = Path(inverse.__file__).read_text()
    block = ast.parse(text).body
    typed = {alias.asname or alias.name
             for node in block if isinstance(node, ast.If)
             for stmt in node.body if isinstance(stmt, ast.ImportFrom)
             for alias in stmt.names}
    assert typed == set(inverse._WHERE) == set(inverse.__all__)
    for name in inverse.__all__:
        assert getattr(inverse, name) is not None
