"""The package's contracts with its installers: every module it imports is declared, the extras
name what the docs say, and every data file carries its provenance and licence (issue 26)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "autovae"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imports() -> dict[str, str]:
    """Top-level modules imported anywhere in the package -> one file that imports it."""
    found = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    declared = {_name(r) for r in PROJECT["dependencies"]}
    owners = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(_imports().items()):
        if module in sys.stdlib_module_names or module == "autovae":
            continue
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [])}
        if not dists and module in declared:  # declared for older Pythons only (tomli)
            continue
        if not dists:
            pytest.fail(f"{module} (imported in {where}) is not installed here")
        if not dists & declared:
            missing.append(f"{module} (imported in {where}; pip name {sorted(dists)})")
    assert not missing, f"imported but not in [project].dependencies: {missing}"


def test_the_extras_name_each_feature_and_test_pulls_all():
    extras = PROJECT["optional-dependencies"]
    assert {"search", "postgres", "inverse", "quality", "all", "test"} <= set(extras)
    assert extras["all"] == ["autovae[search,postgres,inverse,quality]"]
    assert "autovae[all]" in extras["test"]
    core = {_name(r): r for r in PROJECT["dependencies"]}
    for group in ("search", "postgres", "inverse", "quality"):
        for requirement in extras[group]:  # the same pins as the core install keeps
            assert core.get(_name(requirement)) == requirement, (group, requirement)
    for needed, group in (("optuna", "search"), ("sqlalchemy", "search"),
                          ("psycopg2-binary", "postgres"), ("pyro-ppl", "inverse"),
                          ("umbridge", "inverse"), ("requests", "inverse"),
                          ("aiohttp", "inverse"), ("torch-fidelity", "quality")):
        assert needed in {_name(r) for r in extras[group]}, (needed, group)


def test_the_licence_file_is_mit_as_the_metadata_says():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 autovae developers" in text
    assert PROJECT["license"] == {"text": "MIT"}


def test_every_data_file_has_its_provenance_and_licence():
    note = (ROOT / "docs" / "data-provenance.md").read_text()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    shipped = [path for package, patterns in package_data.items() for pattern in patterns
               for path in (SRC / package.split(".", 1)[1]).glob(pattern)]
    assert len(shipped) > 40  # the orbit images and the benchmark's files
    tests_data = [p for p in (ROOT / "tests" / "data").rglob("*") if p.is_file()]
    for path in [*shipped, *tests_data]:
        rel = path.relative_to(ROOT).as_posix()
        folder = path.parent.relative_to(ROOT).as_posix()
        assert rel in note or f"{folder}/" in note, f"{rel} is not in docs/data-provenance.md"
    for licence in ("MIT, copyright (c) 2022 Loc Nguyen", "LGPL-2.1-or-later"):
        assert licence in note
