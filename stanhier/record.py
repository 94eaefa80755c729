"""Run records: save a Bayesian fit to a folder and load it back without refitting.

A run record is a plain folder that holds everything needed to read, audit and
reproduce a fit:

=====================  =========================================================
``record.json``        formula, family, priors, the seed used (drawn and recorded when
                       none was given; per chain in ``chain_seeds``), sampler settings, backend,
                       package and Stan versions, sha256 of the data, the call
``command.txt``        the exact call (Python or ``stanhier`` command line)
``model.stan``         the generated Stan program
``model.data.json``    its data (runs with plain CmdStan or any Stan interface)
``priors.csv``         the priors used, defaults resolved (``prior_summary``)
``data.csv``           the rows used by the fit (``include_data=True``, default)
``draws.nc``           the draws as ArviZ NetCDF (``az.from_netcdf``)
``stan_draws.npz``     the raw Stan draws and sampler statistics (positional names)
``summary.txt``        the printed summary
``diagnostics.json``   divergences, tree-depth hits, Rhat, ESS and the warnings
=====================  =========================================================

:func:`save` and :func:`load` dispatch on the kind of fit (``brm``, ``lmer``,
``glmer``); the files themselves are written and read by :mod:`stanhier.recordfiles`,
which ``fit.save`` uses too. :func:`load` restores a working
:class:`~stanhier.bayes.fit.BrmsFit` from the folder:
it rebuilds the model with the builder ``brm`` uses and every recorded build
argument (formula, data, family, priors, ``parameterization``, ``na_action``,
``collinear``, ``sufficient_stats``: no compiling) and reads
the saved draws (no sampling), so summaries, ``fixef``, ``ranef`` and
predictions are exactly those of the saved fit.

Example
-------
>>> import stanhier as sh                                     # doctest: +SKIP
>>> fit = sh.brm("Reaction ~ Days + (Days | Subject)", data=sleep, seed=1)  # doctest: +SKIP
>>> sh.record.save(fit, "runs/sleep")                         # doctest: +SKIP
>>> again = sh.record.load("runs/sleep")                      # doctest: +SKIP
>>> again.summary() == fit.summary()                          # doctest: +SKIP
True
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .backends.base import RawSample, SampleSettings
from .bayes.fit import BrmsFit
from .errors import ArgumentError, DataError, StanhierWarning
from .families import get_family
from .ml.api import fit_ml
from .ml.fit import MerFit, MLCall
from .model.design import as_dataframe
from .model.priors import Prior
from .recordfiles import (BUILD_DEFAULTS, RECORD_FORMAT, canonical_csv, data_sha256, package_versions,
                          prepare_folder, python_call, read_record, restore_dtypes, stan_version, to_jsonable,
                          write_brm_record, write_stan_data)
from .stan.codegen import build_model

__all__ = ["save", "load", "to_jsonable", "write_stan_data", "data_sha256", "package_versions",
           "python_call", "read_record", "RECORD_FORMAT"]


# ------------------------------------------------------------------ save
def save(fit: Any, path: str | Path, *, include_data: bool = True, command: str | None = None,
         input_file: str | Path | None = None, overwrite: bool = True) -> Path:
    """Write the run record of a fit (``brm``, ``lmer`` or ``glmer``) to the folder ``path``.

    Parameters
    ----------
    fit : BrmsFit or MerFit
        A fit from ``sh.brm``, ``sh.lmer`` or ``sh.glmer``.
    path : str or Path
        The folder; files of an earlier record there are replaced (``overwrite=True``).
    include_data : bool
        Also write the rows used as ``data.csv`` (needed by :func:`load` unless the
        data is passed to it again).
    command : str, optional
        The call to record (the CLI passes its command line); default: the
        equivalent ``sh.brm(...)`` / ``sh.lmer(...)`` call.
    input_file : str or Path, optional
        The data file the fit read, whose sha256 is recorded too.
    overwrite : bool
        Replace an existing record in ``path``.

    Returns
    -------
    Path
        The folder.

    Examples
    --------
    >>> save(fit, "runs/fish")              # doctest: +SKIP
    PosixPath('runs/fish')
    """
    if isinstance(fit, BrmsFit):
        return write_brm_record(fit, path, include_data=include_data, command=command, input_file=input_file,
                                overwrite=overwrite)
    if not isinstance(fit, MerFit):
        raise ArgumentError(f"save() takes a fit from sh.brm, sh.lmer or sh.glmer, got {type(fit).__name__}.")
    out = prepare_folder(path, overwrite)
    return _save_ml(fit, out, include_data=include_data, command=command, input_file=input_file)


def _ml_call(fit: MerFit) -> str:
    """The ``sh.lmer(...)``/``sh.glmer(...)`` call that reproduces an ML fit (every build argument).

    >>> _ml_call  # doctest: +ELLIPSIS
    <function _ml_call at ...>
    """
    call = fit.call
    args = [repr(call.formula), f"data={fit.data_name}"]
    if call.kind == "lmm":
        args.append(f"REML={call.REML}")
    else:
        args += [f"family={call.family_object().spec!r}", f"nAGQ={call.nAGQ}"]
    args.append(f"backend={fit.model.backend!r}")
    if call.na_action != "drop":
        args.append(f"na_action={call.na_action!r}")
    if call.collinear != "drop":
        args.append(f"collinear={call.collinear!r}")
    if call.control:
        args.append(f"control={dict(call.control)!r}")
    return f"sh.{'lmer' if call.kind == 'lmm' else 'glmer'}({', '.join(args)})"


def _categories(data: pd.DataFrame) -> dict[str, list]:
    """Categories (in order) of the categorical columns: they decide treatment-coding baselines."""
    return {str(c): [to_jsonable(x) for x in data[c].cat.categories]
            for c in data.columns if isinstance(data[c].dtype, pd.CategoricalDtype)}


def _save_ml(fit: MerFit, out: Path, *, include_data: bool, command: str | None,
             input_file: str | Path | None) -> Path:
    """Run record of an ML fit: program, data, estimates, summary, diagnostics, versions,
    every build argument (``build``) and the categories of categorical columns."""
    data = fit.design.data
    csv_bytes = canonical_csv(data)
    standata_text = json.dumps(to_jsonable(fit.standata()))
    (out / "model.stan").write_text(fit.stancode())
    (out / "model.data.json").write_text(standata_text)
    if include_data:
        (out / "data.csv").write_bytes(csv_bytes)
    elif (out / "data.csv").exists():
        (out / "data.csv").unlink()
    fit.fixef().to_frame("Estimate").to_csv(out / "fixef.csv")
    summary = fit.summary()
    (out / "summary.txt").write_text(summary + ("" if summary.endswith("\n") else "\n"))
    diag = {**fit.diagnostics(), "messages": fit.diagnostic_messages()}
    (out / "diagnostics.json").write_text(json.dumps(to_jsonable(diag), indent=1))
    call = command or _ml_call(fit)
    (out / "command.txt").write_text(call + "\n")
    build = {**fit.call.to_dict(), "data_name": fit.data_name}
    record = {
        "format": RECORD_FORMAT,
        "kind": "lmer" if fit.kind == "lmm" else "glmer",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": call, "formula": fit.formula, "family": fit.family.name, "link": fit.family.link,
        "REML": bool(fit.REML), "nAGQ": int(fit.nAGQ), "na_action": fit.call.na_action,
        "collinear": fit.call.collinear, "control": dict(fit.call.control),
        "backend": fit.model.backend, "build": build,
        "stan_version": stan_version(fit.model.backend),
        "versions": package_versions(), "data_name": fit.data_name,
        "data": {"rows": int(len(data)), "columns": list(map(str, data.columns)),
                 "dtypes": {c: str(t) for c, t in data.dtypes.items()}, "categories": _categories(data),
                 "sha256": hashlib.sha256(csv_bytes).hexdigest(), "included": bool(include_data),
                 "rows_dropped": int(fit.design.n_dropped)},
        "stan_data_sha256": hashlib.sha256(standata_text.encode()).hexdigest(),
        "program_sha256": hashlib.sha256(fit.stancode().encode()).hexdigest(),
        "estimates": {"names": list(fit.fixef().index), "beta": fit.fixef().tolist(), "theta": fit.theta.tolist(), "logLik": fit.logLik(),
                      "x": fit.optimum.theta.tolist()},
        "files": sorted(p.name for p in out.iterdir()) + ["record.json"],
    }
    if input_file is not None:
        record["input_file"] = {"path": str(input_file), "sha256": data_sha256(Path(input_file))}
    (out / "record.json").write_text(json.dumps(to_jsonable(record), indent=1))
    return out


def _ml_build(record: dict[str, Any]) -> MLCall:
    """The recorded build arguments (records written before ``build`` existed: from the top-level keys)."""
    build = dict(record.get("build") or {
        "kind": "lmm" if record["kind"] == "lmer" else "glmm", "formula": record["formula"],
        "family": record.get("family", "gaussian"), "link": record.get("link"),
        "REML": record.get("REML", False), "nAGQ": record.get("nAGQ", 0),
        "na_action": record.get("na_action", "drop"), "collinear": record.get("collinear", "drop"),
        "control": record.get("control") or {}, "data_name": record.get("data_name", "data")})
    build["backend"] = record.get("backend", build.get("backend", "auto"))  # the backend that ran
    return MLCall.from_dict(build)


def _load_ml(folder: Path, record: dict[str, Any], df: pd.DataFrame) -> MerFit:
    """Rebuild with the recorded arguments (the same builder as ``lmer``/``glmer``) at the
    recorded optimum and check the log-likelihood there is the recorded one."""
    est = record["estimates"]
    df = restore_dtypes(df.copy(), record)  # the recorded categories, also for data passed to load
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StanhierWarning)
        try:
            if "x" in est:  # the optimum itself: rebuilt at that point, no optimizing
                fit = fit_ml(_ml_build(record), df, optimum=np.asarray(est["x"], float))
            else:  # older records: re-run the deterministic optimizer from the estimates
                fit = fit_ml(_ml_build(record), df, start={"beta": est["beta"], "theta": est["theta"]})
        except ArgumentError as exc:  # the recorded estimates do not fit the rebuilt model
            raise DataError(f"Restoring {str(folder)!r}: {exc} (different data, factor levels or "
                            "stanhier version).") from None
    names = list(fit.fixef().index)
    if names != list(est.get("names", names)):
        raise DataError(f"Restoring {str(folder)!r} gives the fixed effects {names}, not the recorded "
                        f"{est['names']} (different data, factor levels or stanhier version).")
    if abs(fit.logLik() - est["logLik"]) > 1e-6 * max(1.0, abs(est["logLik"])):
        raise DataError(f"Restoring {str(folder)!r} reached logLik {fit.logLik():.6f}, not the recorded "
                        f"{est['logLik']:.6f} (different data or stanhier version).")
    fit.record = record  # type: ignore[attr-defined]
    fit.record_path = folder  # type: ignore[attr-defined]
    return fit


# ------------------------------------------------------------------ load
def load(path: str | Path, data: Any = None) -> Any:
    """Restore a fit from a run record.

    Bayesian fits come back without compiling or sampling (the saved draws). ML fits
    (``lmer``/``glmer``) are restored by re-running the deterministic optimizer from
    the recorded optimum (a fraction of a second with the compiled program cached),
    and the log-likelihood is checked against the recorded one.

    ``data``: the fit's data, needed only if the record was saved with
    ``include_data=False`` (it must hash to the recorded sha256).

    Raises :class:`~stanhier.errors.DataError` if the folder is not a run record,
    if the data does not match the recorded hash, or if the rebuilt Stan data
    differs from the saved ``model.data.json``. A program text that differs
    (another stanhier version) only warns: the draws are still those saved.

    >>> fit = load("runs/fish")        # doctest: +SKIP
    >>> print(fit)                     # doctest: +SKIP
    """
    folder = Path(path)
    record = read_record(folder)
    if record.get("kind", "brm") not in ("brm", "lmer", "glmer"):
        raise DataError(f"Run record {str(folder)!r} holds a {record.get('kind')!r} fit, which load() does not know.")
    if data is None:
        if not (folder / "data.csv").exists():
            raise DataError(f"Run record {str(folder)!r} was saved without its data (include_data=False); "
                            "pass the data: load(folder, data=df).")
        df = restore_dtypes(pd.read_csv(folder / "data.csv"), record)
    else:
        df = as_dataframe(data)
    if data is None and data_sha256(folder / "data.csv") != record["data"]["sha256"]:
        raise DataError(f"data.csv in run record {str(folder)!r} does not match its recorded sha256: "
                        "the file was changed after the fit.")

    if record["kind"] in ("lmer", "glmer"):
        return _load_ml(folder, record, df)
    fam = get_family(record["family"])
    if fam.link != record.get("link", fam.link):
        fam = dataclasses.replace(fam, link=record["link"])
    priors = [Prior(dist=p["dist"], args=tuple(float(a) for a in p["args"]), class_=p["class"],
                    coef=p.get("coef", ""), group=p.get("group", "")) for p in record.get("priors", [])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StanhierWarning)
        options = {k: record.get(k, v) for k, v in BUILD_DEFAULTS.items()}
        if "marginalize" not in record:  # records written before it existed ran brms's program
            options["marginalize"] = True if record.get("sufficient_stats") else False
        spec = build_model(record["formula"], df, fam, priors, record.get("parameterization", "noncentered"),
                           **options)

    stan_data_text = json.dumps(to_jsonable(spec.standata()))
    if hashlib.sha256(stan_data_text.encode()).hexdigest() != record.get("stan_data_sha256"):
        raise DataError(f"Rebuilding the model of run record {str(folder)!r} gives other Stan data than "
                        "the saved model.data.json (different data or stanhier version).")
    if hashlib.sha256(spec.code.encode()).hexdigest() != record.get("program_sha256"):
        warnings.warn(f"The Stan program rebuilt for {str(folder)!r} differs from the saved model.stan "
                      f"(saved with stanhier {record.get('versions', {}).get('stanhier', '?')}); "
                      "the draws are those of the saved program.", StanhierWarning, stacklevel=2)

    with np.load(folder / "stan_draws.npz") as z:
        draws = {k[5:]: z[k] for k in z.files if k.startswith("draw:")}
        stats = {k[5:]: z[k] for k in z.files if k.startswith("stat:")}
    sdict = dict(record["settings"])
    settings = SampleSettings(**{k: v for k, v in sdict.items()
                                 if k in {f.name for f in dataclasses.fields(SampleSettings)}})
    raw = RawSample(draws=draws, stats=stats, settings=settings,
                    seconds=float(record.get("sample_seconds", 0.0)),
                    seed_drawn=bool(record.get("seed_drawn", False)))
    fit = BrmsFit(spec, raw, backend=record.get("backend", "pystan"), cache_hit=True,
                  compile_seconds=0.0, data_name=record.get("data_name", "data"))
    fit.record = record  # type: ignore[attr-defined]
    fit.record_path = folder  # type: ignore[attr-defined]
    return fit
