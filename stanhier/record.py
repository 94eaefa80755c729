"""Run records: save a Bayesian fit to a folder and load it back without refitting.

A run record is a plain folder that holds everything needed to read, audit and
reproduce a fit:

=====================  =========================================================
``record.json``        formula, family, priors, seed, sampler settings, backend,
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

:func:`load` restores a working :class:`~stanhier.fit.BrmsFit` from the folder:
it rebuilds the model (formula, data, family, priors: no compiling) and reads
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
import io
import json
import platform
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .errors import ArgumentError, DataError, StanhierError, StanhierWarning
from .bayes.parameterization import choices_record

__all__ = ["save", "load", "to_jsonable", "write_stan_data", "data_sha256", "package_versions",
           "python_call", "RECORD_FORMAT"]

#: version of the folder layout; ``load`` refuses newer formats
RECORD_FORMAT = 1

_PACKAGES = ("stanhier", "numpy", "pandas", "scipy", "formulaic", "arviz", "xarray", "pystan",
             "httpstan", "cmdstanpy")


# ------------------------------------------------------------------ helpers
def to_jsonable(value: Any) -> Any:
    """Numpy values to plain Python: arrays to (nested) lists, numpy scalars to numbers.

    Matrices become lists of rows, which is what CmdStan's JSON reader expects.

    >>> to_jsonable({"N": np.int64(2), "X": np.array([[1.0, 2.0], [3.0, 4.0]])})
    {'N': 2, 'X': [[1.0, 2.0], [3.0, 4.0]]}
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_stan_data(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write a Stan data dict as JSON readable by CmdStan, cmdstanpy, pystan and BridgeStan.

    >>> import tempfile, os
    >>> p = write_stan_data({"N": 1, "y": np.array([0.5])}, os.path.join(tempfile.mkdtemp(), "d.json"))
    >>> p.read_text()
    '{"N": 1, "y": [0.5]}'
    """
    path = Path(path)
    path.write_text(json.dumps(to_jsonable(data)))
    return path


def _canonical_csv(df: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode("utf-8")


def data_sha256(data: pd.DataFrame | bytes | str | Path) -> str:
    """sha256 of a data set: of a file's bytes (path), raw bytes, or a DataFrame's CSV text.

    >>> data_sha256(b"")[:12]
    'e3b0c44298fc'
    """
    if isinstance(data, pd.DataFrame):
        raw = _canonical_csv(data)
    elif isinstance(data, bytes):
        raw = data
    else:
        raw = Path(data).read_bytes()
    return hashlib.sha256(raw).hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of Python, stanhier and the packages a fit's numbers depend on.

    >>> "numpy" in package_versions()
    True
    """
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    out["stan (httpstan)"] = _httpstan_stan_version()
    return out


def _httpstan_stan_version() -> str:
    """The Stan library version bundled with httpstan (from its ``stan/version.hpp``)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("httpstan")
    if spec is None or not spec.submodule_search_locations:
        return ""
    header = Path(list(spec.submodule_search_locations)[0]) / "include" / "stan" / "version.hpp"
    try:
        text = header.read_text()
    except OSError:
        return ""
    parts = [re.search(rf"#define STAN_{k} (\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) for m in parts) if all(parts) else ""


def _stan_version(backend: str) -> str:
    try:
        from .backends import get_backend

        return str(get_backend(backend).stan_version)
    except Exception:  # noqa: BLE001 - a record is still useful without it
        return ""


def _settings_dict(settings: Any) -> dict[str, Any]:
    d = dataclasses.asdict(settings)
    init = d.get("init")
    try:
        json.dumps(to_jsonable(init))
        d["init"] = to_jsonable(init)
    except TypeError:
        d["init"] = repr(init)
    return d


def python_call(fit: Any) -> str:
    """The ``sh.brm(...)`` call that reproduces ``fit`` (data given by its name).

    >>> python_call  # doctest: +ELLIPSIS
    <function python_call at ...>
    """
    spec, s = fit.spec, fit.raw.settings
    priors = [p for p in spec.priors.user]
    args = [repr(spec.design.formula.text), f"data={fit.data_name}", f"family={spec.family.name!r}"]
    if priors:
        ptxt = ", ".join(f"sh.prior({p.text!r}, class_={p.class_!r}"
                         + (f", coef={p.coef!r}" if p.coef else "")
                         + (f", group={p.group!r}" if p.group else "") + ")" for p in priors)
        args.append(f"prior=[{ptxt}]")
    args += [f"chains={s.chains}", f"iter={s.iter}", f"warmup={s.warmup}", f"thin={s.thin}",
             f"seed={s.seed}"]
    if s.init is not None:
        args.append(f"init={s.init!r}")
    if s.adapt_delta != 0.8 or s.max_treedepth != 10:
        args.append(f"control={{'adapt_delta': {s.adapt_delta}, 'max_treedepth': {s.max_treedepth}}}")
    args.append(f"backend={fit.backend!r}")
    if spec.parameterization != "auto":
        args.append(f"parameterization={spec.parameterization!r}")
    if spec.family.name == "gaussian" and spec.design.terms and not spec.structure.marginal:
        args.append("marginalize=False")  # [marginal]
    return f"sh.brm({', '.join(args)})"


# ------------------------------------------------------------------ save
def save(fit: Any, path: str | Path, *, include_data: bool = True, command: str | None = None,
         input_file: str | Path | None = None, overwrite: bool = True) -> Path:
    """Write the run record of a fit (``brm``, ``lmer`` or ``glmer``) to the folder ``path``.

    Parameters
    ----------
    fit : BrmsFit
        A fit from ``sh.brm``.
    path : str or Path
        The folder; files of an earlier record there are replaced (``overwrite=True``).
    include_data : bool
        Also write the rows used as ``data.csv`` (needed by :func:`load` unless the
        data is passed to it again).
    command : str, optional
        The call to record (the CLI passes its command line); default: the
        equivalent ``sh.brm(...)`` call.
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
    from .bayes.fit import BrmsFit
    from .ml.fit import MerFit

    if not isinstance(fit, (BrmsFit, MerFit)):
        raise ArgumentError(f"save() takes a fit from sh.brm, sh.lmer or sh.glmer, got {type(fit).__name__}.")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{str(out)!r} exists and is not a folder; give a folder for the run record.")
    if (out / "record.json").exists() and not overwrite:
        raise ArgumentError(f"{str(out)!r} already holds a run record; pass overwrite=True or another folder.")
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(fit, MerFit):
        return _save_ml(fit, out, include_data=include_data, command=command, input_file=input_file)
    spec, raw = fit.spec, fit.raw
    data = spec.design.data
    csv_bytes = _canonical_csv(data)
    standata = to_jsonable(spec.standata())
    standata_text = json.dumps(standata)

    # program and data first: they are useful even if something later fails
    (out / "model.stan").write_text(spec.code)
    (out / "model.data.json").write_text(standata_text)
    spec.priors.table().to_csv(out / "priors.csv", index=False)
    if include_data:
        (out / "data.csv").write_bytes(csv_bytes)
    elif (out / "data.csv").exists():
        (out / "data.csv").unlink()

    arrays = {f"draw:{k}": np.asarray(v) for k, v in raw.draws.items()}
    arrays.update({f"stat:{k}": np.asarray(v) for k, v in raw.stats.items()})
    np.savez_compressed(out / "stan_draws.npz", **arrays)
    nc = out / "draws.nc"
    if nc.exists():
        nc.unlink()
    fit.idata.to_netcdf(str(nc))

    summary = fit.summary()
    (out / "summary.txt").write_text(summary + ("" if summary.endswith("\n") else "\n"))
    diag = {**fit.diagnostics(), "messages": fit.diagnostic_messages(), "sample_seconds": raw.seconds}
    (out / "diagnostics.json").write_text(json.dumps(to_jsonable(diag), indent=1))

    call = command or python_call(fit)
    (out / "command.txt").write_text(call + "\n")
    dtypes = {c: str(t) for c, t in data.dtypes.items()}
    categories = {c: [to_jsonable(x) for x in data[c].cat.categories]
                  for c in data.columns if isinstance(data[c].dtype, pd.CategoricalDtype)}
    record = {
        "format": RECORD_FORMAT,
        "kind": "brm",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": call,
        "formula": spec.design.formula.text,
        "family": spec.family.name,
        "link": spec.family.link,
        "priors": [{"dist": p.dist, "args": list(p.args), "class": p.class_, "coef": p.coef,
                    "group": p.group, "text": p.text} for p in spec.priors.user],
        "parameterization": spec.parameterization,
        # [marginal]/[parameterization] how the group-level effects were sampled, per term
        "marginalize": bool(spec.structure.marginal),
        "group_effects": choices_record(spec),
        "seed": raw.settings.seed,
        "settings": _settings_dict(raw.settings),
        "backend": fit.backend,
        "stan_version": _stan_version(fit.backend),
        "versions": package_versions(),
        "data_name": fit.data_name,
        "data": {"rows": int(len(data)), "columns": list(map(str, data.columns)), "dtypes": dtypes,
                 "categories": categories, "sha256": hashlib.sha256(csv_bytes).hexdigest(),
                 "included": bool(include_data), "rows_dropped": int(spec.design.n_dropped)},
        "stan_data_sha256": hashlib.sha256(standata_text.encode()).hexdigest(),
        "program_sha256": hashlib.sha256(spec.code.encode()).hexdigest(),
        "sample_seconds": raw.seconds,
        "compile_seconds": fit.compile_seconds,
        "files": sorted(p.name for p in out.iterdir()) + ["record.json"],
    }
    if input_file is not None:
        record["input_file"] = {"path": str(input_file), "sha256": data_sha256(Path(input_file))}
    (out / "record.json").write_text(json.dumps(to_jsonable(record), indent=1))
    return out


def _ml_call(fit: Any) -> str:
    """The ``sh.lmer(...)``/``sh.glmer(...)`` call that reproduces an ML fit."""
    if fit.kind == "lmm":
        return f"sh.lmer({fit.formula!r}, data={fit.data_name}, REML={fit.REML}, backend={fit.model.backend!r})"
    return (f"sh.glmer({fit.formula!r}, data={fit.data_name}, family={fit.family.name!r}, "
            f"nAGQ={fit.nAGQ}, backend={fit.model.backend!r})")


def _save_ml(fit: Any, out: Path, *, include_data: bool, command: str | None,
             input_file: str | Path | None) -> Path:
    """Run record of an ML fit: program, data, estimates, summary, diagnostics, versions."""
    data = fit.design.data
    csv_bytes = _canonical_csv(data)
    (out / "model.stan").write_text(fit.stancode())
    write_stan_data(fit.standata(), out / "model.data.json")
    if include_data:
        (out / "data.csv").write_bytes(csv_bytes)
    fit.fixef().to_frame("Estimate").to_csv(out / "fixef.csv")
    summary = fit.summary()
    (out / "summary.txt").write_text(summary + ("" if summary.endswith("\n") else "\n"))
    diag = {**fit.diagnostics(), "messages": fit.diagnostic_messages()}
    (out / "diagnostics.json").write_text(json.dumps(to_jsonable(diag), indent=1))
    call = command or _ml_call(fit)
    (out / "command.txt").write_text(call + "\n")
    record = {
        "format": RECORD_FORMAT,
        "kind": "lmer" if fit.kind == "lmm" else "glmer",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": call, "formula": fit.formula, "family": fit.family.name, "REML": bool(fit.REML),
        "nAGQ": int(fit.nAGQ), "backend": fit.model.backend, "stan_version": _stan_version(fit.model.backend),
        "versions": package_versions(), "data_name": fit.data_name,
        "data": {"rows": int(len(data)), "columns": list(map(str, data.columns)),
                 "dtypes": {c: str(t) for c, t in data.dtypes.items()}, "categories": {},
                 "sha256": hashlib.sha256(csv_bytes).hexdigest(), "included": bool(include_data)},
        "estimates": {"beta": fit.fixef().tolist(), "theta": fit.theta.tolist(), "logLik": fit.logLik()},
        "files": sorted(p.name for p in out.iterdir()) + ["record.json"],
    }
    if input_file is not None:
        record["input_file"] = {"path": str(input_file), "sha256": data_sha256(Path(input_file))}
    (out / "record.json").write_text(json.dumps(to_jsonable(record), indent=1))
    return out


def _load_ml(folder: Path, record: dict[str, Any], df: pd.DataFrame) -> Any:
    """Re-run the deterministic optimizer from the recorded optimum and check it is the same."""
    from .ml.api import glmer, lmer

    est = record["estimates"]
    start = {"beta": est["beta"], "theta": est["theta"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StanhierWarning)
        if record["kind"] == "lmer":
            fit = lmer(record["formula"], df, REML=record["REML"], backend=record["backend"], start=start)
        else:
            fit = glmer(record["formula"], df, family=record["family"], nAGQ=record["nAGQ"],
                        backend=record["backend"], start=start)
    if abs(fit.logLik() - est["logLik"]) > 1e-6 * max(1.0, abs(est["logLik"])):
        raise DataError(f"Restoring {str(folder)!r} reached logLik {fit.logLik():.6f}, not the recorded "
                        f"{est['logLik']:.6f} (different data or stanhier version).")
    fit.data_name = record.get("data_name", fit.data_name)
    fit.record = record  # type: ignore[attr-defined]
    fit.record_path = folder  # type: ignore[attr-defined]
    return fit


# ------------------------------------------------------------------ load
def _read_record(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise DataError(f"No run record at {str(folder)!r}: it is not a folder.")
    rec_path = folder / "record.json"
    if not rec_path.exists():
        raise DataError(f"{str(folder)!r} is not a stanhier run record (no record.json); "
                        "make one with fit.save(folder) or 'stanhier fit ... --out folder'.")
    record = json.loads(rec_path.read_text())
    if int(record.get("format", 0)) > RECORD_FORMAT:
        raise DataError(f"Run record {str(folder)!r} has format {record['format']}, newer than this "
                        f"stanhier reads ({RECORD_FORMAT}); upgrade stanhier.")
    return record


def _restore_dtypes(df: pd.DataFrame, record: dict[str, Any]) -> pd.DataFrame:
    info = record.get("data", {})
    for col, cats in info.get("categories", {}).items():
        if col in df.columns:
            df[col] = pd.Categorical(df[col], categories=cats)
    for col, dtype in info.get("dtypes", {}).items():
        if col in df.columns and dtype in ("bool",) and df[col].dtype != bool:
            df[col] = df[col].astype(bool)
    return df


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
    from .backends.base import RawSample, SampleSettings
    from .stan.codegen import build_model
    from .families import get_family
    from .bayes.fit import BrmsFit
    from .model.priors import Prior

    folder = Path(path)
    record = _read_record(folder)
    if record.get("kind", "brm") not in ("brm", "lmer", "glmer"):
        raise DataError(f"Run record {str(folder)!r} holds a {record.get('kind')!r} fit, which load() does not know.")
    if data is None:
        if not (folder / "data.csv").exists():
            raise DataError(f"Run record {str(folder)!r} was saved without its data (include_data=False); "
                            "pass the data: load(folder, data=df).")
        df = _restore_dtypes(pd.read_csv(folder / "data.csv"), record)
    else:
        from .model.design import as_dataframe

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
        spec = build_model(record["formula"], df, fam, priors, record.get("parameterization", "noncentered"),
                           marginalize=record.get("marginalize", False))  # [marginal] older records: False

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
                    seconds=float(record.get("sample_seconds", 0.0)))
    fit = BrmsFit(spec, raw, backend=record.get("backend", "pystan"), cache_hit=True,
                  compile_seconds=0.0, data_name=record.get("data_name", "data"))
    fit.record = record  # type: ignore[attr-defined]
    fit.record_path = folder  # type: ignore[attr-defined]
    return fit


def _is_record(path: str | Path) -> bool:
    try:
        return (Path(path) / "record.json").exists()
    except (OSError, StanhierError):
        return False
