"""Reproducibility and hygiene of a fit, checked in fresh processes (real Stan, both engines):

* every fit records the seed its draws came from (drawn and recorded when none was given),
  and running the recorded command again -- the CLI's or the Python call -- gives the same
  draws;
* a fit leaves nothing in the system temporary folder (httpstan's ``httpstan_*.sock``
  sockets, CmdStan's scratch files, cmdstanpy's folder), during the process and after it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from stanhier.backends.base import SampleSettings
from stanhier.cli import recorded_command

ROOT = Path(__file__).resolve().parents[1]
SLEEP = ROOT / "tests" / "data" / "sleepstudy.csv"
FORMULA = "Reaction ~ Days + (Days | Subject)"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=_env(**env), timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _draws(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "stan_draws.npz") as z:
        return {k: z[k] for k in z.files}


def _assert_same_draws(a: Path, b: Path) -> None:
    da, db = _draws(a), _draws(b)
    assert sorted(da) == sorted(db)
    for key in da:
        np.testing.assert_array_equal(da[key], db[key], err_msg=key)


def test_settings_seed_drawn_and_kept():
    assert SampleSettings(seed=3).with_seed().seed == 3
    seeds = {SampleSettings().with_seed().seed for _ in range(5)}
    assert None not in seeds and len(seeds) > 1  # fresh entropy each time
    assert SampleSettings(chains=3, seed=9).chain_seeds()[2] == {"chain": 3, "seed": 9, "chain_id": 3}


def test_recorded_command_adds_the_seed_only_when_missing():
    argv = ["fit", FORMULA, "--data", "sleep.csv"]
    assert recorded_command(argv, 123).endswith("--seed 123")
    given = argv + ["--seed", "5"]
    assert recorded_command(given, 5).count("--seed") == 1
    assert recorded_command(argv + ["--seed=5"], 5).count("--seed") == 1


def test_cli_record_without_seed_reproduces_its_draws(tmp_path, engine):
    """No --seed: a seed is drawn, recorded (record.json and command.txt), and the recorded
    command, run again in a new process, gives identical draws."""
    first = tmp_path / "first"
    _run([sys.executable, "-m", "stanhier.cli", "fit", FORMULA, "--data", str(SLEEP), "--chains", "2",
          "--iter", "200", "--out", str(first)])
    record = json.loads((first / "record.json").read_text())
    assert isinstance(record["seed"], int) and record["seed_drawn"] is True
    assert [c["seed"] for c in record["chain_seeds"]] == [record["seed"]] * 2
    assert record["settings"]["seed"] == record["seed"]
    command = (first / "command.txt").read_text().strip()
    assert f"--seed {record['seed']}" in command

    argv = shlex.split(command)
    assert argv[0] == "stanhier"
    again = tmp_path / "again"
    argv[argv.index("--out") + 1] = str(again)
    _run([sys.executable, "-m", "stanhier.cli", *argv[1:]])
    assert json.loads((again / "record.json").read_text())["seed"] == record["seed"]
    _assert_same_draws(first, again)


def test_python_record_without_seed_reproduces_its_draws(tmp_path, engine):
    """sh.brm(..., seed=None) records the seed it used in the fit, record.json and the recorded
    Python call; evaluating that call in a new process gives identical draws (also r, which a
    marginalized Gaussian fit draws with numpy from the same seed)."""
    first, again = tmp_path / "first", tmp_path / "again"
    script = textwrap.dedent(f"""
        import warnings, pandas as pd, stanhier as sh
        warnings.simplefilter("ignore")
        sleepstudy = pd.read_csv({str(SLEEP)!r})
        fit = sh.brm({FORMULA!r}, data=sleepstudy, chains=2, iter=200, progress=False, data_name="sleepstudy")
        assert fit.raw.settings.seed is not None and fit.raw.seed_drawn
        fit.save({str(first)!r})
    """)
    _run([sys.executable, "-c", script])
    record = json.loads((first / "record.json").read_text())
    assert record["seed_drawn"] is True and f"seed={record['seed']}" in record["command"]
    rerun = textwrap.dedent(f"""
        import warnings, pandas as pd, stanhier as sh
        warnings.simplefilter("ignore")
        sleepstudy = pd.read_csv({str(SLEEP)!r})
        command = open({str(first / "command.txt")!r}).read()
        fit = eval(command)
        assert not fit.raw.seed_drawn
        fit.save({str(again)!r})
    """)
    _run([sys.executable, "-c", rerun])
    _assert_same_draws(first, again)


_TEMP_SCRIPT = """
import json, os, sys, tempfile, warnings
warnings.simplefilter("ignore")
import pandas as pd, stanhier as sh
sleep = pd.read_csv(sys.argv[1])
folder = tempfile.gettempdir()
before = sorted(os.listdir(folder))
fit = sh.brm("Reaction ~ Days + (Days | Subject)", data=sleep, chains=2, iter=200, seed=1, progress=False)
m = sh.lmer("Reaction ~ Days + (Days | Subject)", sleep)
m.confint(method="Wald")  # post-estimation while the fits are alive
after = sorted(os.listdir(folder))
print(json.dumps({"folder": folder, "before": before, "after": after}))
"""


def test_fits_leave_nothing_in_the_temp_folder(engine):
    """A brm and an lmer fit: the system temporary folder (here a fresh one, via $TMPDIR) lists
    the same before and after the fits, and is empty once the process has exited."""
    tmp = Path(tempfile.mkdtemp(prefix="sht"))  # short: a Unix socket path has a length limit
    try:
        res = _run([sys.executable, "-c", _TEMP_SCRIPT, str(SLEEP)], TMPDIR=str(tmp))
        seen = json.loads(res.stdout.strip().splitlines()[-1])
        assert Path(seen["folder"]).resolve() == tmp.resolve()
        assert seen["after"] == seen["before"], f"left in the temp folder: {set(seen['after']) - set(seen['before'])}"
        assert sorted(os.listdir(tmp)) == [], "left behind after the process exited"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
