"""Cold compile time and sampling time of three model structures, before/after stanhier's
compiler set-up, on both engines.

Each configuration compiles into a fresh, empty ``STANHIER_CACHE_DIR`` (so every compile is
cold), then samples 4 chains x 1000 iterations (500 warmup) with one seed. Configurations:

* ``pystan before``: httpstan's own build (Python's CFLAGS with ``-g``; ``STAN_THREADS`` and
  httpstan's services object; no precompiled header; one translation unit, as stanc wrote it);
* ``pystan after``: stanhier's flags (``-g0``), the shared precompiled header, whose
  one-off build is timed separately (``header`` row) before the first program compiles,
  two translation units compiled at once (``stanhier.backends.toolchain.split_program``), and
  no ``STAN_THREADS``: the programs link stanhier's build of httpstan's services object, also
  built once (``services`` row; ``toolchain.macros`` says why);
* ``pystan one unit`` (``--configs`` only): as ``after`` but one translation unit
  (``toolchain.one_unit``, what stanhier compiles when no core is idle), to show what the
  split gains in wall time and costs in CPU time;
* ``cmdstanpy make``: CmdStan's own ``make`` (``STANHIER_SHARED_OBJECTS=0``; its precompiled
  model header, built once per CmdStan tree, already exists);
* ``cmdstanpy``: CmdStan as stanhier runs it: the program's objects compiled as for pystan
  (``toolchain.model_objects``) and linked with CmdStan's main object, whose one-off build is
  timed separately (``CmdStan main`` row);
* ``both``: each structure fitted with pystan, then with CmdStan (which links the objects
  pystan compiled).

The shared files (precompiled header, CmdStan's main object, the services object) are built once per run, by the
first configuration that needs them, in a row of their own; each configuration's programs
compile into its own empty cache.

Wall seconds depend on the machine's load; ``compile cpu s`` is the CPU time of the
compiler processes (less sensitive to other jobs). Prints a table and the machine.

    CMDSTAN=~/.cache/stanhier/cmdstan-2.35.0 python benchmarks/bench_compile.py \
        [--configs before,after,"one unit","cmdstanpy make",cmdstanpy,both]

``--units``: instead, the first translation unit of each structure's program compiled twice,
alternately, as ``split_program`` writes it now and as it wrote it before it evaluated the
log density on doubles through reverse mode and ``write_array`` on Eigen copies (stanc's
double ``log_prob_impl`` and its two ``write_array_impl`` instantiations compiled), with the
precompiled header: the compiler's CPU seconds of each, and of the gradient's unit for scale.

``--split``: instead, each structure's program and the three generic ML programs (``lmer``,
``glmer``, ``lmer`` on crossed factors) compiled as two units at once (``split_program``) and as
one rewritten unit (``one_unit``, what stanhier compiles when no core is idle), one after the
other, with the precompiled header: wall and compiler CPU seconds of each. Run it on an
otherwise idle machine (the wall time of two units assumes both get a core).

Recorded runs are in benchmarks/results/compile.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import stanhier as sh
from stanhier.backends import available_backends

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _binomial_data() -> pd.DataFrame:
    rng = np.random.default_rng(2024)
    g1, g2 = np.repeat(np.arange(12), 10), np.tile(np.arange(10), 12)
    x = rng.normal(size=len(g1))
    eta = -0.3 + 0.8 * x + rng.normal(0, 0.7, 12)[g1] + rng.normal(0, 0.5, 10)[g2]
    n = np.full(len(g1), 20)
    return pd.DataFrame({"y": rng.binomial(n, 1 / (1 + np.exp(-eta))), "n": n, "x": x,
                         "g1": [f"a{i}" for i in g1], "g2": [f"b{i}" for i in g2]})


def cases() -> list[tuple[str, str, pd.DataFrame, str]]:
    fish = pd.read_csv(DATA / "fish.csv")
    fish["weather"] = (fish["weather"] == "sunny").astype(int)
    return [
        ("sleepstudy gaussian", "Reaction ~ Days + (Days | Subject)", pd.read_csv(DATA / "sleepstudy.csv"),
         "gaussian"),
        ("fish poisson (seed)", "fish_num ~ 1 + temperature + (temperature | weather)", fish, "poisson"),
        ("binomial, two terms", "y | trials(n) ~ x + (1 | g1) + (1 | g2)", _binomial_data(), "binomial"),
    ]


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


#: configuration -> (engines, environment for them)
CONFIGS = {
    "before": (("pystan",), {"STANHIER_PCH": "0", "STANHIER_CXXFLAGS": "-O3 -std=c++14 -Wno-sign-compare",
                             "STANHIER_SPLIT": "0", "STANHIER_STAN_THREADS": "1"}),
    "after": (("pystan",), {"STANHIER_PCH": "1", "STANHIER_CXXFLAGS": "", "STANHIER_SPLIT": "1"}),
    "one unit": (("pystan",), {"STANHIER_PCH": "1", "STANHIER_CXXFLAGS": "", "STANHIER_SPLIT": "0"}),
    "cmdstanpy make": (("cmdstanpy",), {"STANHIER_SHARED_OBJECTS": "0"}),
    "cmdstanpy": (("cmdstanpy",), {"STANHIER_SHARED_OBJECTS": "1", "STANHIER_CXXFLAGS": "", "STANHIER_SPLIT": "1"}),
    "both": (("pystan", "cmdstanpy"), {"STANHIER_SHARED_OBJECTS": "1", "STANHIER_CXXFLAGS": "",
                                       "STANHIER_SPLIT": "1"}),
}


def _fresh_backends() -> None:
    from stanhier.backends import _make_backend

    _make_backend.cache_clear()  # a backend keeps the cache folder it was made with


def _shared_files(config: str, engines: tuple[str, ...]) -> list[dict]:
    """Build the precompiled header, CmdStan's main object and the services object now if this
    configuration uses them and no earlier configuration of this run built them: one row each."""
    from stanhier.backends import get_backend, toolchain

    rows = []
    if config not in ("after", "one unit", "cmdstanpy", "both"):
        return rows

    def timed(label: str, build):
        """``build(on_build)``, with a row if it built something."""
        t0, c0, built = time.perf_counter(), _children_cpu(), []
        result = build(lambda: built.append(1))
        if built:
            rows.append({"config": config, "model": f"{label} (once per installation)", "cache hit": False,
                         "compile s": round(time.perf_counter() - t0, 1),
                         "compile cpu s": round(_children_cpu() - c0, 1)})
        return result

    def alongside(manager) -> None:
        with manager:
            pass

    flags = toolchain.compile_flags()
    header = timed("header", lambda on_build: toolchain.precompiled_header(on_build=on_build))
    if "cmdstanpy" in engines and toolchain.cmdstan_shares_objects(get_backend("cmdstanpy").path):
        timed("CmdStan main", lambda on_build: alongside(toolchain.cmdstan_main_alongside(
            get_backend("cmdstanpy").path, flags, header, on_build=on_build)))
    if "pystan" in engines:
        timed("services", lambda on_build: alongside(toolchain.services_alongside(flags, header, on_build=on_build)))
    for row in rows:
        print(row, file=sys.stderr, flush=True)
    return rows


def run_config(config: str, iters: int, shared: Path) -> list[dict]:
    """One configuration in this process (a fresh cache, with ``shared`` as its folder of shared
    files; the process must not have sampled before: httpstan's chain processes keep the cache
    folder they were forked with)."""
    engines, env = CONFIGS[config]
    cache = Path(tempfile.mkdtemp(prefix=f"stanhier-bench-{config.replace(' ', '-')}-"))
    (cache / "pch").symlink_to(shared, target_is_directory=True)
    os.environ.update({**env, "STANHIER_CACHE_DIR": str(cache)})
    if config == "before":
        from stanhier.backends import toolchain

        toolchain.one_unit = lambda cpp, propto=True: None  # stanc's text as it wrote it, as httpstan compiles it
    _fresh_backends()
    try:
        rows = _shared_files(config, engines)
        for name, formula, data, family in cases():
            for engine in engines:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0, c0 = time.perf_counter(), _children_cpu()
                    fit = sh.brm(formula, data=data, family=family, backend=engine, chains=4, iter=iters,
                                 seed=1, progress=False)
                    total = time.perf_counter() - t0
                label = config if len(engines) == 1 else f"{config}: {engine}"
                rows.append({"config": label, "model": name, "cache hit": fit.cache_hit,
                             "compile s": round(fit.compile_seconds, 1),
                             "compile cpu s": round(_children_cpu() - c0, 1) if engine == "pystan" else None,
                             "sampling s": round(fit.raw.seconds, 1), "total s": round(total, 1),
                             "max Rhat": round(float(fit.summary_table()["Rhat"].max()), 3)})
                print(rows[-1], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def _stanc(code: str) -> tuple[str, str]:
    """The model class stanhier names ``code``'s C++ with, and stanc's C++."""
    from stanhier.backends import toolchain

    model_name = toolchain.model_name_for(code)
    return f"model_{model_name.split('/')[1]}", toolchain.stanc(code, model_name)[0]


def _time_variants(folder: str, model_class: str, variants: dict[str, list[str]],
                   repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Compile each variant (its translation units at once, with the precompiled header)
    ``repeats`` times, alternating: mean wall and compiler CPU seconds per variant."""
    from stanhier.backends import toolchain

    flags = toolchain.compile_flags()
    header = toolchain.precompiled_header()
    wall = {v: [] for v in variants}
    cpu = {v: [] for v in variants}
    for i in range(repeats):
        for v, (variant, texts) in enumerate(variants.items()):
            sources = [Path(folder) / f"{model_class}_{v}_{i}_{k}.cpp" for k in range(len(texts))]
            for src, text in zip(sources, texts):
                src.write_text(text)
            t0, c0 = time.perf_counter(), _children_cpu()
            toolchain._compile_units(sources, flags, header)
            wall[variant].append(time.perf_counter() - t0)
            cpu[variant].append(_children_cpu() - c0)
    return ({v: round(float(np.mean(t)), 1) for v, t in wall.items()},
            {v: round(float(np.mean(c)), 1) for v, c in cpu.items()})


def _print_rows(rows: list[dict], repeats: int) -> None:
    print()
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"\nmean of {repeats} compiles each, alternating; with the precompiled header; load average "
          f"{os.getloadavg()[0]:.1f} at the end; machine: {_cpu()}, {os.cpu_count()} cores; {platform.platform()}")


def compare_units(repeats: int = 2) -> None:
    """``--units``: CPU seconds of the compiler on each structure's first unit, as
    ``split_program`` writes it now and before (see the module docstring)."""
    from stanhier.backends import toolchain

    rows = []
    with tempfile.TemporaryDirectory(prefix="stanhier-bench-units-") as tmp:
        for name, formula, data, family in cases():
            code = sh.make_stancode(formula, data=data, family=family)
            model_class, cpp = _stanc(code)
            main_unit, grad_unit = toolchain.split_program(cpp, model_class, propto=toolchain.uses_propto(code))
            before = (main_unit.replace("return log_prob_reverse<", "return log_prob_impl<")
                      .replace(toolchain._EIGEN_WRITE_ARRAY, toolchain._VECTOR_WRITE_ARRAY))
            variants = {"first unit now": [main_unit], "first unit before": [before], "gradient unit": [grad_unit]}
            _, cpu = _time_variants(tmp, model_class, variants, repeats)
            row = {"model": name, **{f"{v} cpu s": c for v, c in cpu.items()}}
            row["first unit now/before"] = round(row["first unit now cpu s"] / row["first unit before cpu s"], 2)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    _print_rows(rows, repeats)


def compare_split(repeats: int = 2) -> None:
    """``--split``: two units at once against one rewritten unit (see the module docstring)."""
    from stanhier.backends import toolchain
    from stanhier.ml.crossed import crossed_stan_program
    from stanhier.ml.problem import stan_program

    programs = [(name, sh.make_stancode(formula, data=data, family=family)) for name, formula, data, family in cases()]
    programs += [("lmer (ML)", stan_program("lmm")), ("glmer (ML)", stan_program("glmm")),
                 ("lmer, crossed factors (ML)", crossed_stan_program())]
    rows = []
    with tempfile.TemporaryDirectory(prefix="stanhier-bench-split-") as tmp:
        for name, code in programs:
            model_class, cpp = _stanc(code)
            propto = toolchain.uses_propto(code)
            variants = {"two units": list(toolchain.split_program(cpp, model_class, propto=propto)),
                        "one unit": [toolchain.one_unit(cpp, propto=propto)]}
            wall, cpu = _time_variants(tmp, model_class, variants, repeats)
            row = {"program": name}
            for v in variants:
                row[f"{v} wall s"], row[f"{v} cpu s"] = wall[v], cpu[v]
            row["cpu two/one"] = round(row["two units cpu s"] / row["one unit cpu s"], 2)
            row["wall two/one"] = round(row["two units wall s"] / row["one unit wall s"], 2)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    _print_rows(rows, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="before,after" + (",cmdstanpy make,cmdstanpy,both"
                                                                 if "cmdstanpy" in available_backends() else ""))
    parser.add_argument("--iter", type=int, default=1000)
    parser.add_argument("--one-config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shared", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--units", action="store_true", help="compare the first unit's compile (see above)")
    parser.add_argument("--split", action="store_true", help="two units against one, per program (see above)")
    parser.add_argument("--repeats", type=int, default=2, help="compiles of each variant (--units, --split)")
    args = parser.parse_args()
    if args.units:
        compare_units(args.repeats)
        return
    if args.split:
        compare_split(args.repeats)
        return
    if args.one_config:  # a child process: one configuration, rows as JSON on stdout
        print(json.dumps(run_config(args.one_config, args.iter, Path(args.shared))))
        return
    rows = []
    shared = Path(tempfile.mkdtemp(prefix="stanhier-bench-shared-"))
    try:
        for config in args.configs.split(","):
            proc = subprocess.run([sys.executable, __file__, "--one-config", config, "--iter", str(args.iter),
                                   "--shared", str(shared)], stdout=subprocess.PIPE, text=True, check=True)
            rows += json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    print()
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if {"before", "after"} <= set(table["config"]):
        b = table[table.config == "before"].set_index("model")
        a = table[table.config == "after"].set_index("model")
        common = [m for m in b.index if m in a.index]
        print("\nafter/before: compile wall " + ", ".join(f"{m}: {a.loc[m, 'compile s'] / b.loc[m, 'compile s']:.2f}"
                                                       for m in common))
        print("after/before: sampling " + ", ".join(f"{m}: {a.loc[m, 'sampling s'] / b.loc[m, 'sampling s']:.2f}"
                                                  for m in common))
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"\nmachine: {_cpu()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the end; "
          f"{platform.platform()}; chains run in parallel; {args.iter} iterations per chain (half warmup)")


if __name__ == "__main__":
    main()
