"""The ``stanhier`` command line: fit, stancode, summary, predict, example.

Every fit made here writes a run record (:mod:`stanhier.record`) with the exact
command, so a result can be audited and re-run::

    stanhier fit "fish_num ~ 1 + temperature + (temperature | weather)" \\
        --data fish.csv --family poisson --seed 1 --out runs/fish
    stanhier summary runs/fish
    stanhier predict runs/fish --newdata new.csv --out predictions.csv
    stanhier stancode "Reaction ~ Days + (Days | Subject)" --data sleep.csv --out model.stan
    stanhier example fish

Exit codes: 0 success, 2 usage error (bad options), 1 a user or data error
(:class:`~stanhier.errors.StanhierError`, unreadable files), printed as one
``error: ...`` line and a ``hint: ...`` line; ``--debug`` shows the traceback.

Example
-------
>>> from stanhier.cli import parse_prior
>>> parse_prior("normal(0, 1):b:temperature")
Prior(dist='normal', args=(0.0, 1.0), class_='b', coef='temperature', group='')
>>> main(["--version"])                     # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import shlex
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np
import pandas as pd

from . import __version__
from .api import brm, glmer, lmer, make_stancode, make_standata
from .backends.base import SampleSettings
from .errors import ArgumentError, DataError, StanhierError, StanhierWarning
from .families import get_family
from .model.formula import no_random_effects
from .model.parameterization import PARAMETERIZATIONS
from .model.priors import prior
from .progress import verbose_output
from .record import load, read_record, save, write_stan_data

__all__ = ["main", "build_parser", "parse_prior", "read_data", "example_data_path", "cli_wording", "brm_kwargs",
           "ml_kwargs", "read_init", "read_start", "recorded_command", "CLI_FLAGS", "PYTHON_ONLY"]

_HINTS: dict[str, str] = {
    "FormulaError": "check the formula: lme4/brms syntax, e.g. \"y ~ x + (x | g)\", with column names of the data",
    "DataError": "check the data file: column names, missing values and the response's values",
    "FamilyError": "check --family (gaussian, poisson, binomial, bernoulli, negbinomial, ...; a link as "
                   "'binomial(link=probit)') against the response",
    "PriorError": "write priors as DIST(ARGS):CLASS[:COEF[:GROUP]], e.g. \"normal(0,1):b:temperature\"",
    "ArgumentError": "check the options (--chains, --iter, --warmup, --seed, ...); stanhier fit --help lists them",
    "BackendError": "use --backend pystan, or install CmdStan: python -m cmdstanpy.install_cmdstan",
    "StanCompileError": "the generated Stan program did not compile; see Stan's message above",
    "SamplingError": "Stan failed while sampling; try --init 0 or stronger priors",
}


# ------------------------------------------------------------------ helpers
def parse_prior(text: str):
    """Read a command-line prior ``DIST(ARGS):CLASS[:COEF[:GROUP]]``.

    The class defaults to ``b``; an empty field skips it (``"student_t(3,0,5):sd::weather"``).

    >>> parse_prior("student_t(3, 0, 5):sd::weather").group
    'weather'
    >>> parse_prior("lkj(2):cor").class_
    'cor'
    """
    text = text.strip()
    close = text.rfind(")")
    if close >= 0:
        dist, rest = text[:close + 1], text[close + 1:]
    else:
        dist, _, rest = text.partition(":")
        rest = ":" + rest if rest else ""
    if rest and not rest.startswith(":"):
        raise ArgumentError(f"Cannot read prior {text!r}: write DIST(ARGS):CLASS[:COEF[:GROUP]].")
    fields = rest[1:].split(":") if rest else []
    if len(fields) > 3:
        raise ArgumentError(f"Cannot read prior {text!r}: at most CLASS:COEF:GROUP after the distribution.")
    fields += [""] * (3 - len(fields))
    class_, coef, group = (f.strip() for f in fields)
    return prior(dist, class_=class_ or "b", coef=coef, group=group)


def example_data_path(name: str = "fish") -> Path:
    """Path of an example data set shipped inside the package (``fish``).

    >>> example_data_path("fish").name
    'fish.csv'
    """
    from importlib import resources

    path = resources.files("stanhier.data") / f"{name}.csv"
    if not path.is_file():
        raise DataError(f"No example data set {name!r}; available: fish.")
    return Path(str(path))


def read_data(path: str | Path) -> pd.DataFrame:
    """Read a CSV data file, with user errors as :class:`~stanhier.errors.DataError`.

    >>> read_data(example_data_path("fish")).shape
    (100, 4)
    """
    path = Path(path)
    if not path.is_file():
        err = DataError(f"Data file {str(path)!r} does not exist.")
        err.hint = "give the path of a CSV file with a header row"  # type: ignore[attr-defined]
        raise err
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise DataError(f"Cannot read {str(path)!r} as CSV: {err}") from None
    df.attrs["name"] = path.stem
    return df


def _fish_data() -> pd.DataFrame:
    """The seed's fish data, with ``weather`` coded as in the seed (sunny = 1, cloudy = 0)."""
    df = read_data(example_data_path("fish"))
    df["weather"] = (df["weather"] == "sunny").astype(int)
    df.attrs["name"] = "fish"
    return df


def _command_line(argv: Sequence[str]) -> str:
    return "stanhier " + " ".join(shlex.quote(a) for a in argv)


class _Warnings:
    """Print StanhierWarnings as ``warning: ...`` lines on stderr (once each)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._ctx = warnings.catch_warnings(record=True)
        self._caught: list = []
        self.shown: set[str] = set()  #: messages already printed (e.g. in a fit's summary)

    def __enter__(self) -> "_Warnings":
        self._caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)
        seen = set(self.shown)
        for w in self._caught:
            if issubclass(w.category, StanhierWarning) and str(w.message) not in seen:
                seen.add(str(w.message))
                print(f"warning: {cli_wording(str(w.message))}", file=self.stream)


# ------------------------------------------------------------------ commands
def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("formula", help='lme4/brms formula, e.g. "y ~ x + (x | g)"')
    p.add_argument("--data", required=True, help="CSV file with the data")
    p.add_argument("--family", default="gaussian",
                   help="response family (default gaussian), optionally with a link as in R: 'binomial(link=probit)'")
    p.add_argument("--prior", action="append", default=[], metavar="DIST:CLASS[:COEF[:GROUP]]",
                   help='a prior, e.g. "normal(0,1):b:temperature" (repeatable)')


#: How each keyword argument of ``brm``, ``lmer`` and ``glmer`` is given on the command line
#: (``tests/test_cli.py`` checks every keyword of their signatures is here or in PYTHON_ONLY).
CLI_FLAGS: dict[str, dict[str, tuple[str, ...]]] = {
    "brm": {
        "formula": ("FORMULA",), "data": ("--data",), "family": ("--family",), "prior": ("--prior",),
        "chains": ("--chains",), "iter": ("--iter",), "warmup": ("--warmup",), "thin": ("--thin",),
        "seed": ("--seed",), "cores": ("--cores",), "init": ("--init",),
        "control": ("--adapt-delta", "--max-treedepth"), "backend": ("--backend",),
        "parameterization": ("--parameterization",), "marginalize": ("--marginalize",),
        "sufficient_stats": ("--sufficient-stats",), "progress": ("--progress",),
        "na_action": ("--na-action",), "collinear": ("--collinear",), "verbose": ("--debug",),
    },
    "lmer": {
        "formula": ("FORMULA",), "data": ("--data",), "REML": ("--REML",), "backend": ("--backend",),
        "progress": ("--progress",), "start": ("--start",), "control": ("--tol",),
        "na_action": ("--na-action",), "collinear": ("--collinear",),
    },
    "glmer": {
        "formula": ("FORMULA",), "data": ("--data",), "family": ("--family",), "nAGQ": ("--nAGQ",),
        "backend": ("--backend",), "progress": ("--progress",), "start": ("--start",),
        "control": ("--tol",), "na_action": ("--na-action",), "collinear": ("--collinear",),
        "aggregate": ("--aggregate",),
    },
}

#: Keyword arguments with no flag, and why.
PYTHON_ONLY: dict[str, dict[str, str]] = {
    "brm": {"data_name": "the CLI names the data after the --data file (its file name without .csv)"},
    "lmer": {}, "glmer": {},
}

#: flags that only mean something for one method (an error with the other)
_BAYES_ONLY = ("--chains", "--iter", "--warmup", "--thin", "--cores", "--init", "--adapt-delta",
               "--max-treedepth", "--parameterization", "--marginalize", "--no-marginalize",
               "--sufficient-stats", "--prior")
_ML_ONLY = ("--REML", "--no-REML", "--ml", "--nAGQ", "--nagq", "--tol", "--start", "--aggregate", "--no-aggregate")


def _given(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """The flags of ``flags`` that appear in ``argv`` (as ``--flag`` or ``--flag=value``)."""
    return [f for f in flags if any(a == f or a.startswith(f + "=") for a in argv)]


def read_init(text: str | None) -> Any:
    """``--init``: a number r (uniform(-r, r) on the unconstrained scale), ``random``, or a
    JSON file of initial values (an object, or a list of objects, one per chain).

    >>> read_init("0"), read_init("random"), read_init(None)
    (0.0, 'random', None)
    """
    if text is None or text == "random":
        return text
    try:
        return float(text)
    except ValueError:
        pass
    path = Path(text)
    if not path.is_file():
        raise ArgumentError(f"--init {text!r} is neither a number, 'random', nor a JSON file of initial values.")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"--init {text!r}: not valid JSON ({exc}).") from None
    if not isinstance(values, (dict, list)):
        raise ArgumentError(f"--init {text!r}: the JSON must be an object (name: value) or a list of them.")
    return values


def read_start(text: str | None) -> dict | None:
    """``--start``: lme4's starting values as JSON, e.g. ``'{"theta": [1, 0, 1]}'``, or a JSON file.

    >>> read_start('{"theta": [1.0]}')
    {'theta': [1.0]}
    """
    if text is None:
        return None
    source = Path(text).read_text() if not text.lstrip().startswith("{") and Path(text).is_file() else text
    try:
        values = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ArgumentError(f"--start must be JSON such as '{{\"theta\": [1, 0, 1]}}' (or a JSON file): {exc}.") from None
    if not isinstance(values, dict):
        raise ArgumentError("--start must be a JSON object such as '{\"theta\": [1, 0, 1]}'.")
    return values


def brm_kwargs(args: argparse.Namespace, priors: list) -> dict[str, Any]:
    """The keyword arguments of ``brm`` the command line gives (unset flags: brm's defaults)."""
    kwargs: dict[str, Any] = dict(
        family=args.family, prior=priors or None, chains=args.chains, iter=args.iter, warmup=args.warmup,
        thin=args.thin, seed=args.seed, cores=args.cores, init=read_init(args.init),
        control={"max_treedepth": args.max_treedepth,
                 **({} if args.adapt_delta is None else {"adapt_delta": args.adapt_delta})},
        backend=args.backend, progress=args.progress)
    optional = {"parameterization": args.parameterization, "na_action": args.na_action,
                "collinear": args.collinear, "marginalize": args.marginalize,
                "sufficient_stats": args.sufficient_stats or None}
    accepted = inspect.signature(brm).parameters
    for name, value in optional.items():
        if value is None:
            continue
        if name not in accepted:
            raise ArgumentError(f"--{name.replace('_', '-')} is not supported by this version of stanhier.")
        kwargs[name] = value
    return kwargs


def ml_kwargs(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """``("lmer" | "glmer", keyword arguments)`` the command line gives: Gaussian -> lmer."""
    # without --progress a long ML fit still says what it is doing (progress=None)
    kwargs: dict[str, Any] = dict(backend=args.backend, progress=True if args.progress else None,
                                  start=read_start(args.start))
    if args.tol is not None:
        kwargs["control"] = {"tol": args.tol}
    for name in ("na_action", "collinear"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    fam = get_family(args.family)
    if fam.name == "gaussian" and fam.link == "identity":
        if args.nAGQ is not None:
            raise ArgumentError("--nAGQ applies to non-Gaussian families (glmer); a Gaussian model's "
                                "likelihood is exact (lmer).")
        if getattr(args, "aggregate", None) is not None:
            raise ArgumentError("--aggregate applies to count families (glmer); a Gaussian model is fitted "
                                "from its cross-products already.")
        if args.REML is not None:
            kwargs["REML"] = args.REML
        return "lmer", kwargs
    if args.REML is not None:
        raise ArgumentError(f"--REML/--no-REML apply to Gaussian models (lmer); --family {args.family} "
                            "is fitted by maximum likelihood (glmer).")
    kwargs["family"] = args.family
    if getattr(args, "aggregate", None) is not None:
        kwargs["aggregate"] = args.aggregate
    if args.nAGQ is not None:
        kwargs["nAGQ"] = args.nAGQ
    return "glmer", kwargs


def _check_method_flags(args: argparse.Namespace, argv: Sequence[str]) -> None:
    wrong = _given(argv, _BAYES_ONLY if args.method == "ml" else _ML_ONLY)
    if wrong:
        other = "bayes" if args.method == "ml" else "ml"
        raise ArgumentError(f"{', '.join(wrong)} appl{'ies' if len(wrong) == 1 else 'y'} to --method {other} only; "
                            f"this is a --method {args.method} fit.")


def recorded_command(argv: Sequence[str], seed: int | None) -> str:
    """The command line to record: ``argv``, plus ``--seed`` with the seed used when none was
    given, so that running the recorded command reproduces the draws.

    >>> recorded_command(["fit", "y ~ x", "--data", "d.csv"], 42)
    "stanhier fit 'y ~ x' --data d.csv --seed 42"
    """
    argv = list(argv)
    if seed is not None and not _given(argv, ("--seed",)):
        argv += ["--seed", str(seed)]
    return _command_line(argv)


def _fit(args: argparse.Namespace, argv: Sequence[str], out: TextIO, warned: "_Warnings | None" = None) -> int:
    _check_method_flags(args, argv)
    data = _fish_data() if args.command == "example" else read_data(args.data)
    priors = [parse_prior(p) for p in getattr(args, "prior", [])]
    if args.method == "ml":
        return _fit_ml(args, data, _command_line(argv), out)
    fit = brm(args.formula, data=data, **brm_kwargs(args, priors), data_name=data.attrs.get("name", "data"))
    print(cli_wording(fit.summary()), file=out)
    if warned is not None:
        warned.shown.update(fit.diagnostic_messages())
    if args.out:
        # the seed used (drawn when none was given) is part of the recorded command
        command = recorded_command(argv, fit.raw.settings.seed)
        save(fit, args.out, include_data=not args.no_data, command=command,
             input_file=None if args.command == "example" else args.data)
        print(f"\nRun record written to {args.out}", file=out)
    return 0


def _fit_ml(args: argparse.Namespace, data: pd.DataFrame, command: str, out: TextIO) -> int:
    which, kwargs = ml_kwargs(args)
    fit = (lmer if which == "lmer" else glmer)(args.formula, data, **kwargs)
    print(cli_wording(str(fit)), file=out)
    if args.out:
        save(fit, args.out, include_data=not args.no_data, command=command,
             input_file=None if args.command == "example" else args.data)
        print(f"\nRun record written to {args.out}", file=out)
    return 0


def _stancode(args: argparse.Namespace, out: TextIO) -> int:
    data = read_data(args.data)
    priors = [parse_prior(p) for p in args.prior] or None
    kwargs: dict[str, Any] = {} if args.parameterization is None else {"parameterization": args.parameterization}
    if args.marginalize is not None:
        if "marginalize" not in inspect.signature(make_stancode).parameters:
            raise ArgumentError("--marginalize is not supported by this version of stanhier.")
        kwargs["marginalize"] = args.marginalize
    code = make_stancode(args.formula, data, args.family, priors, **kwargs)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
        data_path = path.with_name(path.name[:-5] + ".data.json" if path.name.endswith(".stan")
                                   else path.name + ".data.json")
        write_stan_data(make_standata(args.formula, data, args.family, priors), data_path)
        print(f"Wrote {path} and {data_path}", file=out)
    else:
        out.write(code if code.endswith("\n") else code + "\n")
    return 0


def _load_record(folder: str):
    return read_record(folder), load(folder)


def _summary(args: argparse.Namespace, out: TextIO) -> int:
    _record, fit = _load_record(args.run)
    print(cli_wording(fit.summary()).rstrip("\n"), file=out)
    return 0


def _predict(args: argparse.Namespace, out: TextIO) -> int:
    record, fit = _load_record(args.run)
    newdata = read_data(args.newdata)
    if record.get("kind") in ("lmer", "glmer"):  # point predictions from estimates and conditional modes
        re_formula = "NA" if no_random_effects(args.re_formula) else args.re_formula
        values = fit.predict(newdata, re_formula=re_formula, type="response",
                             allow_new_levels=args.allow_new_levels)
        table = pd.DataFrame({"Estimate": np.asarray(values, float)})
        return _write_table(table, args, out)
    method = fit.fitted if args.type == "fitted" else fit.predict
    kwargs: dict[str, Any] = {"newdata": newdata}
    if args.allow_new_levels:
        kwargs["allow_new_levels"] = True
    if args.re_formula is not None:
        kwargs["re_formula"] = "NA" if no_random_effects(args.re_formula) else args.re_formula
    if args.seed is not None:
        kwargs["seed"] = args.seed
    return _write_table(_as_table(method(**kwargs), len(newdata)), args, out)


def _write_table(table: pd.DataFrame, args: argparse.Namespace, out: TextIO) -> int:
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"Wrote {len(table)} rows to {args.out}", file=out)
    else:
        table.to_csv(out, index=False)
    return 0


def _as_table(result: Any, n: int) -> pd.DataFrame:
    """brms's summary columns (Estimate, Est.Error, Q2.5, Q97.5) from what fitted/predict returned."""
    if isinstance(result, pd.DataFrame):
        return result.reset_index(drop=True)
    arr = np.asarray(result, float)
    if arr.ndim == 2 and arr.shape[1] == n and arr.shape[0] != n:  # (draws, rows)
        return pd.DataFrame({"Estimate": arr.mean(0), "Est.Error": arr.std(0, ddof=1),
                             "Q2.5": np.quantile(arr, 0.025, axis=0), "Q97.5": np.quantile(arr, 0.975, axis=0)})
    if arr.ndim == 2 and arr.shape[0] == n and arr.shape[1] == 4:
        return pd.DataFrame(arr, columns=["Estimate", "Est.Error", "Q2.5", "Q97.5"])
    return pd.DataFrame({"Estimate": arr.reshape(n, -1)[:, 0]})


# ------------------------------------------------------------------ parser
def _sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=("bayes", "ml"), default="bayes",
                   help="bayes: brm (NUTS); ml: lmer/glmer (maximum likelihood, marginalized model)")
    g = p.add_argument_group("bayes (brm) options")
    g.add_argument("--chains", type=int, default=SampleSettings.chains)
    g.add_argument("--iter", type=int, default=SampleSettings.iter, help="warmup + sampling iterations per chain")
    g.add_argument("--warmup", type=int, default=SampleSettings.warmup, help="default iter // 2")
    g.add_argument("--thin", type=int, default=SampleSettings.thin)
    g.add_argument("--seed", type=int, default=None,
                   help="random seed (same seed -> same draws); without it one is drawn and recorded")
    g.add_argument("--cores", type=int, default=None)
    g.add_argument("--init", default=None, metavar="R|random|FILE.json",
                   help="inits uniform(-R, R) on the unconstrained scale (default 2), or a JSON file of values")
    g.add_argument("--adapt-delta", type=float, default=None,
                   help="target acceptance rate (brms's control adapt_delta; default brm's: brms's 0.8, "
                        "0.9 for programs with a conditional term)")
    g.add_argument("--max-treedepth", type=int, default=SampleSettings.max_treedepth,
                   help="NUTS maximum tree depth (brms's control max_treedepth)")
    g.add_argument("--parameterization", choices=PARAMETERIZATIONS, default=None,
                   help="how group-level effects are sampled (default: brm's)")
    g.add_argument("--marginalize", action=argparse.BooleanOptionalAction, default=None,
                   help="Gaussian models: integrate the group-level effects out (default: where possible)")
    g.add_argument("--sufficient-stats", action="store_true", default=False,
                   help="Gaussian: likelihood from per-group cross-products")
    g2 = p.add_argument_group("ml (lmer/glmer) options")
    g2.add_argument("--REML", action=argparse.BooleanOptionalAction, default=None,
                    help="lmer: REML criterion (default, as lme4) or --no-REML for maximum likelihood")
    g2.add_argument("--ml", dest="REML", action="store_false", help=argparse.SUPPRESS)  # older spelling of --no-REML
    g2.add_argument("--nAGQ", "--nagq", dest="nAGQ", type=int, default=None,
                    help="glmer: 1 = Laplace (default), >1 adaptive Gauss-Hermite nodes")
    g2.add_argument("--aggregate", action=argparse.BooleanOptionalAction, default=None,
                    help="glmer (Poisson, binomial, Bernoulli): fit identical rows summed into patterns "
                         "(exact; default: when that shrinks the data at least 5x)")
    g2.add_argument("--tol", type=float, default=None, help="optimizer tolerance (control tol, default 1e-8)")
    g2.add_argument("--start", default=None, metavar="JSON",
                    help='starting values, e.g. \'{"theta": [1, 0, 1]}\' (or a JSON file)')
    c = p.add_argument_group("data handling")
    c.add_argument("--na-action", choices=("drop", "raise"), default=None,
                   help="rows with missing values: drop with a warning (default) or raise an error")
    c.add_argument("--collinear", choices=("error", "drop"), default=None,
                   help="constant/collinear predictors (default: error for bayes, drop for ml as lme4)")
    p.add_argument("--backend", default="auto", choices=("auto", "pystan", "cmdstanpy"))
    p.add_argument("--progress", action="store_true", help="show Stan's progress")
    p.add_argument("--out", default=None, help="folder for the run record")
    p.add_argument("--no-data", action="store_true", help="do not copy the data into the run record")


#: Python keyword arguments in library messages -> the CLI flag that sets them
_KEYWORD_FLAGS = {
    "adapt_delta": "--adapt-delta", "max_treedepth": "--max-treedepth", "parameterization": "--parameterization",
    "allow_new_levels": "--allow-new-levels", "collinear": "--collinear", "na_action": "--na-action",
    "REML": "--REML", "nAGQ": "--nAGQ", "init": "--init", "backend": "--backend", "family": "--family",
    "chains": "--chains", "iter": "--iter", "warmup": "--warmup", "thin": "--thin", "seed": "--seed",
    "cores": "--cores", "marginalize": "--marginalize", "sufficient_stats": "--sufficient-stats",
    "re_formula": "--re-formula", "start": "--start", "tol": "--tol", "prior": "--prior",
}
_BOOLEAN_NEGATIONS = {"REML": "--no-REML", "marginalize": "--no-marginalize"}


def cli_wording(text: str) -> str:
    """A library message in command-line terms: Python keyword syntax becomes the CLI flag.

    >>> cli_wording("Increasing adapt_delta may help (control={'adapt_delta': 0.95}).")
    'Increasing --adapt-delta may help (--adapt-delta 0.95).'
    >>> cli_wording("pass allow_new_levels=True to predict; or refit with REML=False.")
    'pass --allow-new-levels to predict; or refit with --no-REML.'
    >>> cli_wording("parameterization='centered' usually helps")
    '--parameterization centered usually helps'
    """
    names = "|".join(sorted(_KEYWORD_FLAGS, key=len, reverse=True))

    def control(m: re.Match) -> str:
        items = re.findall(r"['\"](\w+)['\"]\s*:\s*([^,}]+)", m.group(1))
        return " ".join(f"{_KEYWORD_FLAGS.get(k, '--' + k.replace('_', '-'))} {v.strip()}" for k, v in items)

    def keyword(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        flag = _KEYWORD_FLAGS[name]
        if value == "True":
            return flag
        if value == "False":
            return _BOOLEAN_NEGATIONS.get(name, flag)
        return f"{flag} {value.strip(chr(39) + chr(34))}" if value else flag

    text = re.sub(r"\bcontrol\s*=\s*\{([^}]*)\}", control, text)
    text = re.sub(r"\bcontrol\[['\"](\w+)['\"]\]", lambda m: _KEYWORD_FLAGS.get(m.group(1), m.group(0)), text)
    text = re.sub(rf"(?<![\w-])({names})=('[^']*'|\"[^\"]*\"|-?\d+(?:\.\d+)?(?:e-?\d+)?|\w*)", keyword, text)
    text = re.sub(rf"(?<![\w'\"-])(adapt_delta|max_treedepth|allow_new_levels|na_action|sufficient_stats)\b(?!['\"])",
                  lambda m: _KEYWORD_FLAGS[m.group(1)], text)
    return text


_SHARED_FILES = {"header": "the precompiled Stan header", "cmdstan_main": "CmdStan's main object",
                 "services": "httpstan's services object"}


def _prepare(out: TextIO) -> int:
    """``stanhier prepare``: build the shared files (:func:`stanhier.backends.build_shared`) and,
    with pystan, compile the maximum-likelihood path's fixed programs
    (:func:`stanhier.ml.api.compile_ml_programs`) as soon as the header is there."""
    from .backends import available_backends, build_shared
    from .ml.api import compile_ml_programs
    from .progress import compiling

    print("Compiling what every Stan program shares and lmer's and glmer's programs, once per installation "
          "(2-4 minutes)...", file=out, flush=True)
    start = time.perf_counter()
    building: list[str] = []
    programs: dict = {}

    with compiling(True, "Compiling the shared Stan files") as stage:
        def show(what: str) -> None:
            building.append(what)
            stage.building(", ".join(building))

        def show_programs(what: str) -> None:  # the header and services object are built; CmdStan's main object
            building[:] = [b for b in building if b == _SHARED_FILES["cmdstan_main"]] + [what]  # may still compile
            stage.building(", ".join(building))

        def compile_ml() -> None:
            programs.update(compile_ml_programs("pystan", on_build=show_programs))

        built = build_shared(on_build=show, then=compile_ml if "pystan" in available_backends() else None)
    for key, path in built.items():
        print(f"  {_SHARED_FILES[key]}: {path if path else 'not built (programs compile without it)'}", file=out)
    for name, model in programs.items():
        print(f"  {name}: {model.model_name}", file=out)
    print(f"done in {time.perf_counter() - start:.0f} s", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``stanhier`` command.

    >>> build_parser().parse_args(["summary", "runs/fish"]).run
    'runs/fish'
    """
    parser = argparse.ArgumentParser(prog="stanhier", description=(
        "Hierarchical regression with brms/lme4 formulas on Stan: Bayesian fits (NUTS) and "
        "maximum-likelihood fits on the marginalized model, with reproducible run records."))
    parser.add_argument("--version", action="version", version=f"stanhier {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and the engines' own output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("fit", help="fit a model, print its summary, write a run record (--out)")
    _model_args(p)
    _sampler_args(p)

    p = sub.add_parser("stancode", help="print the generated Stan program (--out: write it with its data)")
    _model_args(p)
    p.add_argument("--parameterization", choices=PARAMETERIZATIONS, default=None,
                   help="how group-level effects are sampled (default: brm's)")
    p.add_argument("--marginalize", action=argparse.BooleanOptionalAction, default=None,
                   help="Gaussian models: the program that integrates the group-level effects out")
    p.add_argument("--out", default=None, help="write the program here (and its data as NAME.data.json)")

    p = sub.add_parser("summary", help="print the summary of a saved run (no refitting)")
    p.add_argument("run", help="run record folder")

    p = sub.add_parser("predict", help="predictions for new data from a saved run (no refitting)")
    p.add_argument("run", help="run record folder")
    p.add_argument("--newdata", required=True, help="CSV file with the new data")
    p.add_argument("--type", choices=("fitted", "predict"), default="fitted",
                   help="fitted: expected values (default); predict: posterior predictive")
    p.add_argument("--re-formula", default=None, help='"NA": population level only')
    p.add_argument("--allow-new-levels", action="store_true")
    p.add_argument("--seed", type=int, default=None, help="seed for --type predict")
    p.add_argument("--out", default=None, help="CSV file to write (default: standard output)")

    sub.add_parser("prepare", help="compile now, once per installation, what every Stan program shares "
                   "(the precompiled Stan header; CmdStan's main object; httpstan's services object) and "
                   "lmer's and glmer's fixed programs, instead of alongside the first fits")

    p = sub.add_parser("example", help="run a shipped example: fish (the seed's model)")
    p.add_argument("name", choices=("fish",))
    _sampler_args(p)
    p.set_defaults(seed=1)
    for sp in sub.choices.values():  # --debug also after the command
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


_EXAMPLE_FORMULA = {"fish": "fish_num ~ 1 + temperature + (temperature | weather)"}


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run the ``stanhier`` command; returns the exit code (0 ok, 1 user error, 2 usage).

    >>> main(["stancode", "y ~ x", "--data", "missing.csv"])   # doctest: +SKIP
    1
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for usage errors
        return int(exc.code or 0)
    if args.command == "example":
        args.formula = _EXAMPLE_FORMULA[args.name]
        args.family = "poisson"
        args.prior = []
    try:
        with _Warnings(err) as warned, verbose_output(bool(getattr(args, "debug", False))):
            if args.command in ("fit", "example"):
                return _fit(args, argv, out, warned)
            if args.command == "stancode":
                return _stancode(args, out)
            if args.command == "summary":
                return _summary(args, out)
            if args.command == "predict":
                return _predict(args, out)
            if args.command == "prepare":
                return _prepare(out)
    except StanhierError as exc:
        if args.debug:
            traceback.print_exc(file=err)
        print(f"error: {cli_wording(str(exc))}", file=err)
        hint = getattr(exc, "hint", None) or _HINTS.get(type(exc).__name__, "see stanhier --help")
        print(f"hint: {hint} (--debug shows the traceback)",
              file=err)
        return 1
    except (OSError, KeyboardInterrupt) as exc:
        if args.debug:
            traceback.print_exc(file=err)
        print(f"error: {exc}", file=err)
        print("hint: check the file and folder paths (--debug shows the traceback)", file=err)
        return 1
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
