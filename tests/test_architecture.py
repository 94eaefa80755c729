"""The package's structure: no import cycle, no private name read across modules.

Both checks read the source with :mod:`ast` (nothing is imported), so they also see
imports inside functions (which run later, but still tie the modules together) and
ignore only ``if TYPE_CHECKING:`` blocks, which never run. Each check is first run on
a small synthetic package with a known defect, so a checker that can no longer fail
fails its own test.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stanhier"


# --------------------------------------------------------------------------- reading the package
@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    imports: set[str] = field(default_factory=set)  #: project modules this one imports
    private_defs: set[str] = field(default_factory=set)  #: private names it defines


def _module_name(root: Path, path: Path) -> tuple[str, bool]:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def read_package(root: Path) -> dict[str, Module]:
    """Parse every module of the package at ``root`` and resolve its project imports.

    ``from .x import y`` is an edge to ``x.y`` when that is a module, else to ``x``;
    ``from . import x`` to ``x``. The implicit import of parent packages (``import a.b.c``
    first runs ``a/__init__`` and ``a/b/__init__``) is not an edge: the top-level
    ``__init__`` re-exports the API, so every module would otherwise be on a cycle
    through it, and Python initialises parents first anyway.
    """
    modules: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        name, is_pkg = _module_name(root, path)
        modules[name] = Module(name, path, is_pkg, ast.parse(path.read_text(), filename=str(path)))
    top = root.name
    for mod in modules.values():
        here = mod.name if mod.is_package else mod.name.rpartition(".")[0]
        for node in _runtime_nodes(mod.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == top or alias.name.startswith(top + "."):
                        mod.imports.add(_existing(alias.name, modules))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = here.split(".")
                    base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if not (base == top or base.startswith(top + ".")):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    mod.imports.add(sub if sub in modules else _existing(base, modules))
        mod.imports.discard(mod.name)
        mod.private_defs = _private_definitions(mod.tree)
    return modules


def _existing(name: str, modules: dict[str, Module]) -> str:
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def _private_definitions(tree: ast.Module) -> set[str]:
    """Private names a module defines: module-level names, class members, ``self._x = ...``."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.alias):
            out.add(node.asname or node.name.split(".")[0])
    return {n for n in out if _is_private(n)}


# --------------------------------------------------------------------------- the checks
def import_cycle(modules: dict[str, Module]) -> list[str] | None:
    """One cycle of the import graph (``[a, b, ..., a]``), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {m: WHITE for m in modules}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        colour[m] = GREY
        stack.append(m)
        for n in sorted(modules[m].imports):
            if colour[n] == GREY:
                return stack[stack.index(n):] + [n]
            if colour[n] == WHITE:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        colour[m] = BLACK
        return None

    for m in sorted(modules):
        if colour[m] == WHITE:
            found = visit(m)
            if found:
                return found
    return None


def private_reads(modules: dict[str, Module]) -> list[str]:
    """``obj._x`` reads and ``from m import _x`` in a module that does not define ``_x``
    itself, of a private name another project module defines."""
    top = min(modules, key=len)
    defined_by: dict[str, set[str]] = {}
    for m in modules.values():
        for n in m.private_defs:
            defined_by.setdefault(n, set()).add(m.name)
    out = []
    for m in modules.values():
        for node in _runtime_nodes(m.tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr) and isinstance(node.ctx, ast.Load):
                name = node.attr
            elif isinstance(node, ast.ImportFrom):
                source = "." * node.level + (node.module or "")
                if node.level or source.split(".")[0] == top:
                    out += [f"{m.name}:{node.lineno}: from {source} import {alias.name}"
                            for alias in node.names if _is_private(alias.name)]
                continue
            else:
                continue
            owners = defined_by.get(name, set())
            if name in m.private_defs or not owners:
                continue  # its own name, or not a project name (a third-party one)
            out.append(f"{m.name}:{node.lineno}: .{name} (defined in {', '.join(sorted(owners))})")
    return sorted(out)


# --------------------------------------------------------------------------- the checks can fail
def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": "from .sub import b\n",
        "sub/__init__.py": "",
        "sub/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import X\n"
                    "def f():\n    from .. import c\n",
        "c.py": "import pkg.a\n",
        "d.py": "from .a import thing\n",
    })
    modules = read_package(pkg)
    assert modules["pkg.sub.b"].imports == {"pkg.c"}  # the TYPE_CHECKING import is not an edge
    assert modules["pkg.a"].imports == {"pkg.sub.b"}  # `from .sub import b`: b is a submodule
    assert import_cycle(modules) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("")
    assert import_cycle(read_package(pkg)) is None


def test_checker_finds_private_reads(tmp_path):
    pkg = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": """
            class Fit:
                def __init__(self):
                    self._cache = None
                def _draws(self):
                    return self._cache
            def _helper():
                return 1
        """,
        "b.py": """
            from .a import _helper
            def use(fit, df):
                df._mgr  # a third-party private name: not this checker's business
                return fit._draws()
        """,
    })
    found = private_reads(read_package(pkg))
    assert found == ["pkg.b:2: from .a import _helper", "pkg.b:5: ._draws (defined in pkg.a)"]


# --------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def package() -> dict[str, Module]:
    return read_package(PACKAGE)


def test_no_import_cycle(package):
    assert "stanhier.bayes.fit" in package and package["stanhier.api"].imports
    cycle = import_cycle(package)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_name_read_from_another_module(package):
    found = private_reads(package)
    assert not found, "private names read across modules:\n" + "\n".join(found)


# --------------------------------------------------------------------------- Stan names have one owner
@pytest.mark.parametrize("formula, family, kwargs", [
    ("y ~ x + (x | g) + (1 || h)", "gaussian", {}),
    ("y ~ 0 + x + (x || g)", "poisson", {}),
    ("y ~ x + (x | g)", "gaussian", {"marginalize": False}),
    ("y ~ x + (x | g)", "gaussian", {"marginalize": True}),
    ("y ~ x + (x | g)", "poisson", {"parameterization": "centered"}),
    ("y ~ x + (x | g) + (1 | h)", "poisson", {}),  # conditional: h's intercept is anchored by g
])
def test_names_module_spells_the_programs_names(formula, family, kwargs):
    """Every name stan/names.py makes for a model is declared by the rendered program
    (the templates spell them too), and make_standata's keys are exactly the data block's."""
    import re

    import numpy as np
    import pandas as pd

    from stanhier.stan import names
    from stanhier.stan.codegen import build_model

    rng = np.random.default_rng(1)
    df = pd.DataFrame({"y": rng.poisson(3, 40).astype(float), "x": rng.normal(size=40),
                       "g": np.repeat(list("abcd"), 10), "h": np.tile(list("uv"), 20)})
    spec = build_model(formula, df, family, **kwargs)
    code = spec.code
    data_block = code[code.index("data {"):code.index("\n}", code.index("data {"))]
    declared = set(re.findall(r"(\w+)(?:\[[^\]]*\])?\s*;", data_block))
    assert set(spec.standata()) == declared
    table = names.make_names(spec)
    stan_names = {e.stan for e in table.entries} | {names.LPRIOR}
    if spec.structure.marginal:  # the effects r are drawn after sampling, not by the program
        stan_names -= {names.term(info.index).r for info in table.terms}
    else:
        for info in table.terms:
            t = names.term(info.index)
            treatment = spec.structure.terms[info.index][1]
            stan_names |= {t.sd, t.r} | (set() if treatment == "centered" else {t.z}) | ({t.L, t.cor} if info.correlated and info.M > 1 else set())
            if treatment == "conditional":
                stan_names |= {t.eps, names.B_FREE, names.LOG_JACOBIAN}
    if table.has_intercept:
        stan_names |= {names.INTERCEPT, names.B_INTERCEPT}
    for name in stan_names:
        assert re.search(rf"\b{name}\b\s*(=|;|\[)", code) or re.search(rf"\b{name}\s*;", code), name


def test_every_public_name_exists():
    """Each module's ``__all__`` names only what the module defines (``import *`` works)."""
    import importlib
    import pkgutil

    import stanhier

    missing = []
    for info in pkgutil.walk_packages(stanhier.__path__, "stanhier."):
        module = importlib.import_module(info.name)
        missing += [f"{info.name}.{name}" for name in getattr(module, "__all__", ()) if not hasattr(module, name)]
    assert not missing, missing


def test_import_leaves_the_slow_libraries_for_later():
    """``import stanhier`` (every command-line call, every child process) does not import what a
    call imports when it needs it: scipy.stats (most of the import time otherwise), ArviZ,
    xarray, matplotlib, the engines, Dask."""
    import json
    import subprocess
    import sys

    later = ["scipy.stats", "arviz", "xarray", "matplotlib", "cmdstanpy", "stan", "httpstan", "dask"]
    code = f"import json, sys, stanhier; print(json.dumps([m for m in {later!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
