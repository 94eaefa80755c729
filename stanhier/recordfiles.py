"""The files of a run record: writing and reading them, hashes, versions (no fit classes).

The low level of :mod:`stanhier.record`: it imports no fit class, so a fit's own
``save`` method writes its record through :func:`write_brm_record` (which reads only the
fit's public attributes) while :func:`stanhier.record.save` / :func:`stanhier.record.load`
dispatch on the kind of fit. The folder layout is described in :mod:`stanhier.record`.

Example
-------
>>> to_jsonable({"N": np.int64(2)})
{'N': 2}
>>> BUILD_DEFAULTS["collinear"]
'error'
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.util
import io
import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .backends import get_backend
from .backends.base import SampleSettings
from .errors import ArgumentError, DataError

__all__ = ["RECORD_FORMAT", "BUILD_DEFAULTS", "to_jsonable", "write_stan_data", "canonical_csv", "data_sha256",
           "package_versions", "httpstan_stan_version", "stan_version", "settings_dict", "python_call",
           "build_options", "prepare_folder", "write_brm_record", "read_record", "restore_dtypes"]

#: version of the folder layout; ``load`` refuses newer formats
RECORD_FORMAT = 1

#: the model builder's options besides formula, data, family, priors and parameterization, with
#: their defaults (records written before they were stored are read with these)
BUILD_DEFAULTS: dict[str, Any] = {"na_action": "drop", "collinear": "error", "marginalize": None}

_PACKAGES = ("stanhier", "numpy", "pandas", "scipy", "formulaic", "arviz", "xarray", "pystan",
             "httpstan", "cmdstanpy")


def build_options(spec: Any) -> dict[str, Any]:
    """``na_action``, ``collinear`` and ``marginalize`` a Bayesian model was built with."""
    return {"na_action": spec.na_action, "collinear": spec.collinear, "marginalize": spec.marginalize}


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
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_stan_data({"N": 1, "y": np.array([0.5])}, os.path.join(folder, "d.json")).read_text()
    '{"N": 1, "y": [0.5]}'
    """
    path = Path(path)
    path.write_text(json.dumps(to_jsonable(data)))
    return path


def canonical_csv(df: pd.DataFrame) -> bytes:
    """A DataFrame as the CSV bytes a record stores and hashes (no index, ``\\n`` line ends).

    >>> canonical_csv(pd.DataFrame({"a": [1, 2]}))
    b'a\\n1\\n2\\n'
    """
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode("utf-8")


def data_sha256(data: pd.DataFrame | bytes | str | Path) -> str:
    """sha256 of a data set: of a file's bytes (path), raw bytes, or a DataFrame's CSV text.

    >>> data_sha256(b"")[:12]
    'e3b0c44298fc'
    """
    if isinstance(data, pd.DataFrame):
        raw = canonical_csv(data)
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
    out["stan (httpstan)"] = httpstan_stan_version()
    return out


def httpstan_stan_version() -> str:
    """The Stan library version bundled with httpstan (from its ``stan/version.hpp``)."""
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


def stan_version(backend: str) -> str:
    """The Stan version of ``backend`` (empty if it cannot be told)."""
    try:
        return str(get_backend(backend).stan_version)
    except Exception:  # noqa: BLE001 - a record is still useful without it
        return ""


def settings_dict(settings: Any) -> dict[str, Any]:
    """Sampler settings as JSON-ready values (an init that is not JSON becomes its repr)."""
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

    Arguments at their defaults are left out (the sampler's come from
    :class:`~stanhier.backends.base.SampleSettings`).

    >>> python_call  # doctest: +ELLIPSIS
    <function python_call at ...>
    """
    spec, s = fit.spec, fit.raw.settings
    priors = [p for p in spec.priors.user]
    args = [repr(spec.design.formula.text), f"data={fit.data_name}", f"family={spec.family.spec!r}"]
    if priors:
        ptxt = ", ".join(f"sh.prior({p.text!r}, class_={p.class_!r}"
                         + (f", coef={p.coef!r}" if p.coef else "")
                         + (f", group={p.group!r}" if p.group else "") + ")" for p in priors)
        args.append(f"prior=[{ptxt}]")
    args += [f"chains={s.chains}", f"iter={s.iter}", f"warmup={s.warmup}", f"thin={s.thin}",
             f"seed={s.seed}"]
    if s.init is not None:
        args.append(f"init={s.init!r}")
    if s.adapt_delta != SampleSettings.adapt_delta or s.max_treedepth != SampleSettings.max_treedepth:
        args.append(f"control={{'adapt_delta': {s.adapt_delta}, 'max_treedepth': {s.max_treedepth}}}")
    args.append(f"backend={fit.backend!r}")
    if spec.parameterization != "auto":
        args.append(f"parameterization={spec.parameterization!r}")
    for name, value in build_options(spec).items():
        if value != BUILD_DEFAULTS[name]:
            args.append(f"{name}={value!r}")
    return f"sh.brm({', '.join(args)})"


# ------------------------------------------------------------------ save
def prepare_folder(path: str | Path, overwrite: bool) -> Path:
    """Create the record folder ``path``; refuse a file, or (``overwrite=False``) an existing record."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{str(out)!r} exists and is not a folder; give a folder for the run record.")
    if (out / "record.json").exists() and not overwrite:
        raise ArgumentError(f"{str(out)!r} already holds a run record; pass overwrite=True or another folder.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_brm_record(fit: Any, path: str | Path, *, include_data: bool = True, command: str | None = None,
                     input_file: str | Path | None = None, overwrite: bool = True) -> Path:
    """Write the run record of a Bayesian fit to the folder ``path`` (``fit.save(path)``).

    Reads only the fit's public attributes (``spec``, ``raw``, ``idata``, ``summary()``,
    ``diagnostics()``, ...). Every argument of the model builder is recorded, so
    :func:`stanhier.record.load` rebuilds the same model.

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
    >>> write_brm_record(fit, "runs/fish")  # doctest: +SKIP
    PosixPath('runs/fish')
    """
    out = prepare_folder(path, overwrite)
    spec, raw = fit.spec, fit.raw
    data = spec.design.data
    csv_bytes = canonical_csv(data)
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
        **build_options(spec),
        # how the group-level effects were sampled, per term, and why
        "group_effects": [dataclasses.asdict(c) for c in fit.group_effect_choices()],
        "seed": raw.settings.seed,  # the seed the draws came from, also when stanhier drew it
        "seed_drawn": bool(getattr(raw, "seed_drawn", False)),
        "chain_seeds": raw.settings.chain_seeds(),
        "settings": settings_dict(raw.settings),
        "backend": fit.backend,
        "stan_version": stan_version(fit.backend),
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



# ------------------------------------------------------------------ read
def read_record(folder: str | Path) -> dict[str, Any]:
    """The parsed ``record.json`` of run record ``folder`` (checked: a record, a format this version reads)."""
    folder = Path(folder)
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


def restore_dtypes(df: pd.DataFrame, record: dict[str, Any]) -> pd.DataFrame:
    """Categorical and boolean columns of ``data.csv`` as they were in the fit's data."""
    info = record.get("data", {})
    for col, cats in info.get("categories", {}).items():
        if col in df.columns:
            df[col] = pd.Categorical(df[col], categories=cats)
    for col, dtype in info.get("dtypes", {}).items():
        if col in df.columns and dtype in ("bool",) and df[col].dtype != bool:
            df[col] = df[col].astype(bool)
    return df
