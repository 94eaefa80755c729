"""Stage 1 of the pipeline: parse an lme4/brms formula string.

The fixed part goes to formulaic unchanged; random terms ``( expr | group )`` and
``( expr || group )`` are extracted first, because formulaic does not parse ``|``
inside parentheses. ``(1 | a/b)`` expands to ``(1 | a) + (1 | a:b)``.

Example
-------
>>> from stanhier.model.formula import parse_formula
>>> f = parse_formula("fish_num ~ 1 + temperature + (temperature | weather)")
>>> f.response.column, f.fixed, f.random[0].group, f.random[0].correlated
('fish_num', '1 + temperature', ('weather',), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from ..errors import FormulaError

__all__ = ["Response", "RandomTerm", "ParsedFormula", "parse_formula", "no_random_effects",
           "NO_RANDOM_EFFECTS", "formula_variables"]

#: ``re_formula`` spellings meaning "no group-level terms" (spaces ignored, any case), besides
#: R's ``NA`` as ``float("nan")`` or ``pd.NA``. The one list used by ``brm`` fits, ``lmer``/``glmer``
#: fits and the command line.
NO_RANDOM_EFFECTS: frozenset[str] = frozenset({"NA", "~NA", "~0", "0", "~-1", "NONE", ""})


@dataclass(frozen=True)
class Response:
    """The left-hand side: ``y``, ``cbind(successes, failures)`` or ``y | trials(n)``."""

    kind: Literal["plain", "cbind", "trials"]
    column: str  #: the response (successes for binomial)
    column2: str | None = None  #: failures (cbind) or trials column

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,) if self.column2 is None else (self.column, self.column2)


@dataclass(frozen=True)
class RandomTerm:
    """One group-level term, e.g. ``(temperature | weather)``."""

    text: str  #: as written by the user (after ``/`` expansion), for messages
    expr: str  #: the formulaic formula of the term's coefficients (``"temperature"``)
    group: tuple[str, ...]  #: grouping columns; several for an interaction ``a:b``
    correlated: bool  #: ``|`` (True) or ``||`` (False)

    @property
    def group_name(self) -> str:
        """The grouping factor's name as lme4 and brms print it (``batch:cask``)."""
        return ":".join(self.group)


@dataclass(frozen=True)
class ParsedFormula:
    """A parsed formula: response, fixed part (formulaic syntax) and random terms."""

    text: str
    response: Response
    fixed: str
    random: tuple[RandomTerm, ...]

    @property
    def group_columns(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for term in self.random:
            for col in term.group:
                seen[col] = None
        return tuple(seen)


def no_random_effects(re_formula: Any) -> bool:
    """True when ``re_formula`` asks for no group-level terms (brms's ``re_formula = NA`` / ``~0``).

    ``None`` means *every* term (False); ``"NA"``, ``"~0"``, ``"~ 0"``, ``"none"``, NaN and
    ``pd.NA`` mean none (True); a formula such as ``"~ (1 | g)"`` selects terms (False).

    >>> [no_random_effects(x) for x in (None, "NA", "~ 0", float("nan"), "~ (1 | g)")]
    [False, True, True, True, False]
    """
    if re_formula is None:
        return False
    if re_formula is pd.NA:
        return True
    if isinstance(re_formula, float):
        return math.isnan(re_formula)
    if isinstance(re_formula, str):
        return re_formula.replace(" ", "").upper() in NO_RANDOM_EFFECTS
    return False


def formula_variables(expr: str) -> list[str]:
    """The data columns a formulaic expression reads, sorted.

    >>> formula_variables("1 + x + np.log(z) + C(f)")
    ['f', 'x', 'z']
    """
    from formulaic import Formula

    try:
        variables = Formula(expr).required_variables
    except Exception as exc:
        raise FormulaError(f"Cannot parse {expr!r}: {exc}") from None
    return sorted(str(v) for v in variables if "value" in {r.value for r in v.roles})


def _strip_ticks(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == "`":
        return name[1:-1]
    return name


def _split_top(text: str, sep: str) -> list[str]:
    """Split ``text`` on ``sep`` where it is outside parentheses, backticks and quotes."""
    parts, depth, start, quote = [], 0, 0, None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "`'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"Unbalanced ')' in formula part {text.strip()!r}.")
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
            i += len(sep)
            continue
        i += 1
    if depth != 0:
        raise FormulaError(f"Unbalanced '(' in formula part {text.strip()!r}: close every parenthesis.")
    if quote:
        raise FormulaError(f"Unclosed quote or backtick in formula part {text.strip()!r}.")
    parts.append(text[start:])
    return parts


def _is_wrapped(part: str) -> bool:
    """True if ``part`` is one parenthesised group ``( ... )``."""
    part = part.strip()
    if not (part.startswith("(") and part.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(part):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and i < len(part) - 1:
            return False
    return True


def _parse_response(lhs: str, formula: str) -> Response:
    lhs = lhs.strip()
    if not lhs:
        raise FormulaError(
            f"The formula {formula!r} has no response: write it as 'y ~ predictors'."
        )
    if lhs.startswith("cbind(") and lhs.endswith(")"):
        args = _split_top(lhs[len("cbind("):-1], ",")
        if len(args) != 2 or not all(a.strip() for a in args):
            raise FormulaError(f"{lhs!r}: cbind() takes two columns, cbind(successes, failures).")
        return Response("cbind", _strip_ticks(args[0]), _strip_ticks(args[1]))
    pieces = _split_top(lhs, "|")
    if len(pieces) == 2:
        add = pieces[1].strip()
        if not (add.startswith("trials(") and add.endswith(")")):
            raise FormulaError(
                f"Response addition {add!r} is not supported: use 'y | trials(n)' for binomial data."
            )
        return Response("trials", _strip_ticks(pieces[0]), _strip_ticks(add[len("trials("):-1]))
    if len(pieces) > 2:
        raise FormulaError(f"Response {lhs!r} has more than one '|'.")
    if any(c in lhs for c in "+*()") and not (lhs.startswith("`") and lhs.endswith("`")):
        raise FormulaError(
            f"Response {lhs!r} is not a column name: transform the column in the data "
            "before fitting (e.g. df['log_y'] = np.log(df['y']))."
        )
    return Response("plain", _strip_ticks(lhs))


def _parse_group(group_text: str, term_text: str) -> list[tuple[str, ...]]:
    """``a/b`` -> [(a,), (a, b)];  ``a:b`` -> [(a, b)]."""
    nest = [p.strip() for p in _split_top(group_text, "/")]
    if any(not p for p in nest):
        raise FormulaError(f"Term {term_text!r}: empty grouping factor; write e.g. '(1 | g)' or '(1 | a/b)'.")
    groups, prefix = [], ()
    for piece in nest:
        cols = tuple(_strip_ticks(c) for c in _split_top(piece, ":"))
        if any(not c for c in cols) or any(ch in c for c in cols for ch in "()+|"):
            raise FormulaError(
                f"Term {term_text!r}: grouping factor {piece!r} must be column names joined by ':' or '/'."
            )
        prefix = prefix + cols
        groups.append(prefix)
    return groups


def _parse_random(part: str) -> list[RandomTerm]:
    inner = part.strip()[1:-1]
    double = _split_top(inner, "||")
    if len(double) == 2:
        lhs, rhs, correlated = double[0], double[1], False
    elif len(double) > 2:
        raise FormulaError(f"Term {part.strip()!r} has more than one '||'.")
    else:
        single = _split_top(inner, "|")
        if len(single) != 2:
            raise FormulaError(
                f"Term {part.strip()!r} must look like '(expr | group)' or '(expr || group)'."
            )
        lhs, rhs, correlated = single[0], single[1], True
    if not lhs.strip():
        raise FormulaError(
            f"Term {part.strip()!r} has nothing before '|': write '(1 | g)' for a random intercept."
        )
    if not rhs.strip():
        raise FormulaError(f"Term {part.strip()!r} has no grouping factor after '|'.")
    groups = _parse_group(rhs, part.strip())
    bar = "|" if correlated else "||"
    return [
        RandomTerm(
            text=f"({lhs.strip()} {bar} {':'.join(g)})",
            expr=lhs.strip(),
            group=g,
            correlated=correlated,
        )
        for g in groups
    ]


def parse_formula(formula: str) -> ParsedFormula:
    """Parse ``formula`` into response, fixed part and random terms.

    Raises :class:`~stanhier.errors.FormulaError` quoting the offending term.

    >>> parse_formula("y ~ x + (1 | a/b)").random[1].group_name
    'a:b'
    """
    if not isinstance(formula, str):
        raise FormulaError(f"The formula must be a string like 'y ~ x + (1 | g)', not {type(formula).__name__}.")
    sides = _split_top(formula, "~")
    if len(sides) != 2:
        raise FormulaError(
            f"The formula {formula!r} must have exactly one '~' between response and predictors."
        )
    response = _parse_response(sides[0], formula)
    rhs = sides[1].strip()
    if not rhs:
        raise FormulaError(f"The formula {formula!r} has nothing after '~': add '1' for an intercept-only model.")
    fixed_parts: list[str] = []
    random: list[RandomTerm] = []
    for part in _split_top(rhs, "+"):
        stripped = part.strip()
        if not stripped:
            raise FormulaError(f"The formula {formula!r} has an empty term (two '+' in a row or a trailing '+').")
        if _is_wrapped(stripped) and len(_split_top(stripped[1:-1], "|")) > 1:
            random.extend(_parse_random(stripped))
            continue
        if "|" in stripped:
            raise FormulaError(
                f"Term {stripped!r}: a '|' must be inside its own parentheses, e.g. '(1 | g)'."
            )
        fixed_parts.append(stripped)
    seen: set[tuple] = set()
    for term in random:
        key = (term.expr.replace(" ", ""), term.group)
        if key in seen:
            raise FormulaError(f"Term {term.text!r} appears twice in {formula!r}: remove the duplicate.")
        seen.add(key)
    fixed = " + ".join(fixed_parts) if fixed_parts else "1"
    _check_fixed(fixed, formula)
    return ParsedFormula(text=formula.strip(), response=response, fixed=fixed, random=tuple(random))


def _check_fixed(fixed: str, formula: str) -> None:
    """Let formulaic parse the fixed part now, so syntax errors quote the formula."""
    from formulaic import Formula

    try:
        Formula(fixed)
    except Exception as exc:  # formulaic raises several parser error types
        raise FormulaError(
            f"Cannot parse the population-level part {fixed!r} of {formula!r}: {exc}"
        ) from None
