"""Variable declarations of a Stan program, read from its text, and their sizes for a data set.

CmdStan's output CSV leaves out size-0 variables and cannot tell a size-1 vector from a
scalar unless the header is read carefully; the declarations say both. This module
finds the top-level declarations of the ``parameters``, ``transformed parameters`` and
``generated quantities`` blocks, evaluates their size expressions with the data
(integer arithmetic, comparisons, ``?:``, ``size``/``rows``/``cols``/``num_elements``),
and maps between the unconstrained vector and the parameters for the transforms
stanhier's ML programs use (none, ``lower``, ``upper``, ``offset``/``multiplier``).

Example
-------
>>> code = '''data { int K; int family; }
... parameters { vector[K] beta; vector[family == 4 ? 1 : 0] log_shape; real<lower=0> s; }
... generated quantities { array[2] real g = {1.0, 2.0}; }'''
>>> decls = parse_declarations(code)
>>> [(d.name, d.block, d.shape({"K": 2, "family": 1})) for d in decls]
[('beta', 'parameters', (2,)), ('log_shape', 'parameters', (0,)), ('s', 'parameters', ()), ('g', 'generated quantities', (2,))]
>>> layout = ParameterLayout(decls, {"K": 2, "family": 1})
>>> layout.n_params
3
>>> {k: v.tolist() for k, v in layout.constrain(np.array([1.0, 2.0, 0.0])).items()}
{'beta': [1.0, 2.0], 'log_shape': [], 's': 1.0}
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["Declaration", "ParameterLayout", "parse_declarations", "evaluate", "UnsupportedDeclaration",
           "variables_from_columns"]

_BLOCKS = ("parameters", "transformed parameters", "generated quantities")
_TYPES = ("int", "real", "complex", "vector", "row_vector", "matrix", "simplex", "unit_vector", "ordered",
          "positive_ordered", "cholesky_factor_corr", "cholesky_factor_cov", "corr_matrix", "cov_matrix",
          "complex_vector", "complex_row_vector", "complex_matrix", "sum_to_zero_vector")
_SIMPLE = ("real", "vector", "row_vector", "matrix")  # transforms written here: identity/lower/upper/offset


class UnsupportedDeclaration(ValueError):
    """A declaration this module cannot size or transform (the caller falls back)."""


@dataclass(frozen=True)
class Declaration:
    """One top-level variable declaration (expressions kept as Stan text)."""

    name: str
    block: str
    base_type: str
    array_dims: tuple[str, ...]
    type_dims: tuple[str, ...]
    constraints: tuple[tuple[str, str], ...]  #: (("lower", "0"), ...)

    @property
    def ndim(self) -> int:
        return len(self.array_dims) + len(self._type_shape_exprs())

    def _type_shape_exprs(self) -> tuple[str, ...]:
        if self.base_type in ("cholesky_factor_corr", "corr_matrix", "cov_matrix"):
            return (self.type_dims[0], self.type_dims[0])
        if self.base_type == "cholesky_factor_cov":
            return self.type_dims if len(self.type_dims) == 2 else (self.type_dims[0], self.type_dims[0])
        return self.type_dims

    def shape(self, env: Mapping[str, Any]) -> tuple[int, ...]:
        """The variable's shape as CmdStan/pystan report it, for data ``env``."""
        return tuple(max(0, int(evaluate(e, env))) for e in self.array_dims + self._type_shape_exprs())

    def unconstrained_size(self, env: Mapping[str, Any]) -> int:
        """How many entries of the unconstrained vector the variable takes."""
        n_arr = math.prod(max(0, int(evaluate(e, env))) for e in self.array_dims)
        dims = [max(0, int(evaluate(e, env))) for e in self.type_dims]
        t = self.base_type
        if t in ("real", "vector", "row_vector", "matrix", "ordered", "positive_ordered", "unit_vector"):
            per = math.prod(dims)
        elif t in ("simplex", "sum_to_zero_vector"):
            per = max(dims[0] - 1, 0)
        elif t in ("cholesky_factor_corr", "corr_matrix"):
            per = dims[0] * (dims[0] - 1) // 2
        elif t == "cov_matrix":
            per = dims[0] + dims[0] * (dims[0] - 1) // 2
        elif t == "cholesky_factor_cov":
            m, n = (dims[0], dims[1]) if len(dims) == 2 else (dims[0], dims[0])
            per = n * (n + 1) // 2 + (m - n) * n
        else:
            raise UnsupportedDeclaration(f"cannot size a {t} parameter ({self.name})")
        return n_arr * per


# --------------------------------------------------------------------------- program text
def _strip_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", " ", code, flags=re.S)
    code = re.sub(r"//[^\n]*|#[^\n]*", " ", code)
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', code)


def _block_bodies(code: str) -> dict[str, str]:
    text = _strip_comments(code)
    out, pos = {}, 0
    pattern = re.compile(r"\b(functions|data|transformed\s+data|parameters|transformed\s+parameters|model|"
                         r"generated\s+quantities)\s*\{")
    while True:
        m = pattern.search(text, pos)
        if not m:
            return out
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out[re.sub(r"\s+", " ", m.group(1))] = text[m.end():i - 1]
        pos = i


def _statements(body: str) -> list[str]:
    """Top-level statements: ends at ';' or at a '}' closing back to depth 0."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
            if ch == "}" and depth == 0:
                out.append(body[start:i + 1])
                start = i + 1
        elif ch == ";" and depth == 0:
            out.append(body[start:i])
            start = i + 1
    return [s.strip() for s in out if s.strip()]


def _balanced(text: str, i: int, open_: str, close: str) -> tuple[str, int]:
    """Contents of the bracket opened at ``text[i]`` and the index after its closing bracket."""
    depth, j = 0, i
    while j < len(text):
        ch = text[j]
        if ch in "([{" or ch == open_:
            depth += 1
        elif ch in ")]}" or ch == close:
            depth -= 1
            if depth == 0:
                return text[i + 1:j], j + 1
        j += 1
    raise UnsupportedDeclaration(f"unbalanced {open_!r} in {text!r}")


def _split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += 1 if ch in "([{" else -1 if ch in ")]}" else 0
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _parse_statement(stmt: str, block: str) -> Declaration | None:
    s = stmt.strip()
    array_dims: tuple[str, ...] = ()
    m = re.match(r"array\s*\[", s)
    if m:
        inner, end = _balanced(s, m.end() - 1, "[", "]")
        array_dims = tuple(_split_top(inner))
        s = s[end:].lstrip()
    m = re.match(r"(" + "|".join(sorted(_TYPES, key=len, reverse=True)) + r")\b", s)
    if not m:
        return None
    base = m.group(1)
    s = s[m.end():].lstrip()
    constraints: tuple[tuple[str, str], ...] = ()
    if s.startswith("<"):
        inner, end = _balanced(s, 0, "<", ">")
        pairs = []
        for part in _split_top(inner):
            key, _, value = part.partition("=")
            pairs.append((key.strip(), value.strip()))
        constraints = tuple(pairs)
        s = s[end:].lstrip()
    type_dims: tuple[str, ...] = ()
    if s.startswith("["):
        inner, end = _balanced(s, 0, "[", "]")
        type_dims = tuple(_split_top(inner))
        s = s[end:].lstrip()
    m = re.match(r"([A-Za-z_]\w*)\s*(=|$)", s, flags=re.S)
    if not m:
        return None
    return Declaration(m.group(1), block, base, array_dims, type_dims, constraints)


def parse_declarations(code: str) -> tuple[Declaration, ...]:
    """Top-level declarations of the parameters, transformed parameters and generated
    quantities blocks, in the order Stan writes them."""
    bodies = _block_bodies(code)
    out = []
    for block in _BLOCKS:
        for stmt in _statements(bodies.get(block, "")):
            decl = _parse_statement(stmt, block)
            if decl is not None:
                out.append(decl)
    return tuple(out)


# --------------------------------------------------------------------------- expressions
_TOKEN = re.compile(r"\s*(?:(\d+\.\d*(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)|([A-Za-z_]\w*)|"
                    r"(\|\||&&|==|!=|<=|>=|[-+*/%?:()<>!,\[\]]))")
_FUNCS = {"size": lambda x: len(np.atleast_1d(x)), "rows": lambda x: np.shape(x)[0],
          "cols": lambda x: np.shape(x)[1], "num_elements": lambda x: np.size(x),
          "max": lambda *a: max(a) if len(a) > 1 else np.max(a[0]),
          "min": lambda *a: min(a) if len(a) > 1 else np.min(a[0])}


def evaluate(expr: str, env: Mapping[str, Any]) -> Any:
    """Evaluate a Stan size/bound expression with data ``env``.

    >>> evaluate("family == 4 ? 1 : 0", {"family": 4}), evaluate("K * (K - 1) / 2", {"K": 5})
    (1, 10)
    """
    tokens, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise UnsupportedDeclaration(f"cannot read {expr!r}")
        tokens.append(m.group(1) or m.group(2) or m.group(3))
        pos = m.end()
    parser = _Parser(tokens, env)
    value = parser.ternary()
    if parser.i != len(tokens):
        raise UnsupportedDeclaration(f"cannot read {expr!r}")
    return value


class _Parser:
    _LEVELS = (("||",), ("&&",), ("==", "!="), ("<", "<=", ">", ">="), ("+", "-"), ("*", "/", "%"))

    def __init__(self, tokens: list[str], env: Mapping[str, Any]) -> None:
        self.t, self.i, self.env = tokens, 0, env

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise UnsupportedDeclaration(f"expected {expected!r} in {' '.join(self.t)!r}")
        self.i += 1
        return tok

    def ternary(self) -> Any:
        cond = self.binary(0)
        if self.peek() == "?":
            self.take("?")
            a = self.ternary()
            self.take(":")
            b = self.ternary()
            return a if cond else b
        return cond

    def binary(self, level: int) -> Any:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek() in self._LEVELS[level]:
            op = self.take()
            right = self.binary(level + 1)
            left = _apply(op, left, right)
        return left

    def unary(self) -> Any:
        tok = self.peek()
        if tok in ("-", "+", "!"):
            self.take()
            v = self.unary()
            return -v if tok == "-" else (int(not v) if tok == "!" else v)
        return self.postfix(self.primary())

    def primary(self) -> Any:
        tok = self.take()
        if tok == "(":
            v = self.ternary()
            self.take(")")
            return v
        if re.match(r"\d", tok):
            return float(tok) if re.search(r"[.eE]", tok) else int(tok)
        if self.peek() == "(" and tok in _FUNCS:
            self.take("(")
            args = [self.ternary()]
            while self.peek() == ",":
                self.take(",")
                args.append(self.ternary())
            self.take(")")
            return _FUNCS[tok](*args)
        if tok in self.env:
            v = self.env[tok]
            return v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v
        raise UnsupportedDeclaration(f"{tok!r} is not a data variable")

    def postfix(self, value: Any) -> Any:
        while self.peek() == "[":
            self.take("[")
            index = self.ternary()
            self.take("]")
            value = np.asarray(value)[int(index) - 1]
        return value


def _apply(op: str, a: Any, b: Any) -> Any:
    if op == "/":
        if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
            return int(a / b)  # Stan's integer division truncates
        return a / b
    if op == "%":
        return int(math.fmod(a, b))
    table = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
             "==": lambda: int(a == b), "!=": lambda: int(a != b), "<": lambda: int(a < b),
             "<=": lambda: int(a <= b), ">": lambda: int(a > b), ">=": lambda: int(a >= b),
             "&&": lambda: int(bool(a) and bool(b)), "||": lambda: int(bool(a) or bool(b))}
    return table[op]()


# --------------------------------------------------------------------------- parameters <-> vector
class ParameterLayout:
    """The unconstrained vector of a program's ``parameters`` block for one data set.

    Supports real/vector/row_vector/matrix parameters (and 1-d arrays of reals) with no
    constraint, ``lower``/``upper`` bounds or ``offset``/``multiplier``; anything else
    raises :class:`UnsupportedDeclaration` when constructed.
    """

    def __init__(self, decls: tuple[Declaration, ...], env: Mapping[str, Any]) -> None:
        self.params = tuple(d for d in decls if d.block == "parameters")
        self._env = env
        self.shapes: dict[str, tuple[int, ...]] = {}
        for d in self.params:
            if d.base_type not in _SIMPLE or (d.array_dims and (d.base_type != "real" or len(d.array_dims) > 1)):
                raise UnsupportedDeclaration(f"no Python transform for parameter {d.name} ({d.base_type})")
            if any(k not in ("lower", "upper", "offset", "multiplier") for k, _ in d.constraints):
                raise UnsupportedDeclaration(f"unknown constraint on {d.name}")
            self.shapes[d.name] = d.shape(env)
        self.n_params = int(sum(math.prod(s) for s in self.shapes.values()))

    def _bounds(self, d: Declaration, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        out = {}
        for key, expr in d.constraints:
            value = np.asarray(evaluate(expr, self._env), float)
            out[key] = np.broadcast_to(value, shape) if value.ndim else value
        return out

    def constrain(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Unconstrained vector -> parameter values (Stan's shapes, column-major order)."""
        theta = np.asarray(theta, float)
        if theta.shape != (self.n_params,):
            raise ValueError(f"expected {self.n_params} unconstrained values, got shape {theta.shape}")
        out, pos = {}, 0
        for d in self.params:
            shape = self.shapes[d.name]
            size = math.prod(shape)
            u = theta[pos:pos + size].reshape(shape, order="F")
            pos += size
            b = self._bounds(d, shape)
            if "lower" in b and "upper" in b:
                x = b["lower"] + (b["upper"] - b["lower"]) / (1 + np.exp(-u))
            elif "lower" in b:
                x = b["lower"] + np.exp(u)
            elif "upper" in b:
                x = b["upper"] - np.exp(u)
            else:
                x = b.get("offset", 0.0) + b.get("multiplier", 1.0) * u
            out[d.name] = np.asarray(x, float).reshape(shape)
        return out

    def unconstrain(self, values: Mapping[str, Any]) -> np.ndarray:
        """Parameter values -> unconstrained vector (the inverse of :meth:`constrain`)."""
        parts = []
        for d in self.params:
            shape = self.shapes[d.name]
            x = np.asarray(values[d.name], float).reshape(shape)
            b = self._bounds(d, shape)
            if "lower" in b and "upper" in b:
                p = (x - b["lower"]) / (b["upper"] - b["lower"])
                u = np.log(p) - np.log1p(-p)
            elif "lower" in b:
                u = np.log(x - b["lower"])
            elif "upper" in b:
                u = np.log(b["upper"] - x)
            else:
                u = (x - b.get("offset", 0.0)) / b.get("multiplier", 1.0)
            parts.append(np.ravel(u, order="F"))
        return np.concatenate(parts) if parts else np.zeros(0)


def variables_from_columns(names: list[str], values: np.ndarray) -> dict[str, np.ndarray]:
    """CmdStan CSV columns (``b.1``, ``L.2.1``, ``sigma``; or cmdstanpy's ``b[1]``, ``L[2,1]``)
    -> arrays ``(rows, *shape)``.

    The shape of each variable is the largest index per dimension, so a size-1 vector
    (``theta.1``) stays a vector and a scalar (``theta``) stays a scalar.

    >>> out = variables_from_columns(["a", "v.1", "m[1,1]", "m[2,1]", "m.1.2", "m.2.2"],
    ...                              np.arange(6.0)[None, :])
    >>> {k: v.shape for k, v in out.items()}, out["m"][0].tolist()
    ({'a': (1,), 'v': (1, 1), 'm': (1, 2, 2)}, [[2.0, 4.0], [3.0, 5.0]])
    """
    values = np.asarray(values, float)
    groups: dict[str, list[tuple[int, tuple[int, ...]]]] = {}
    for j, col in enumerate(names):
        m = re.fullmatch(r"(\w+)\[([\d,\s]+)\]", col)  # cmdstanpy's spelling: b[1], L[2,1]
        base, *idx = (m.group(1), *m.group(2).split(",")) if m else col.split(".")
        idx = [i.strip() for i in idx]
        if idx and not all(i.isdigit() for i in idx):
            raise ValueError(f"unexpected CmdStan column {col!r} (complex variables are not supported)")
        groups.setdefault(base, []).append((j, tuple(int(i) for i in idx)))
    out = {}
    for base, cols in groups.items():
        shape = tuple(max(ix[k] for _, ix in cols) for k in range(len(cols[0][1])))
        arr = np.full((values.shape[0],) + shape, np.nan)
        for j, ix in cols:
            arr[(slice(None),) + tuple(i - 1 for i in ix)] = values[:, j]
        out[base] = arr
    return out
