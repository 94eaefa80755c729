"""Render the outputs shown in docs/index.md ("Reading the summary") from code that runs.

    .venv/bin/python docs/assets/render_index.py --sample   # runs the page's brm call (4 chains x 2000,
                                                            # ~20 s), writes index_brm_output.txt
    .venv/bin/python docs/assets/render_index.py            # prints both outputs

``print(fit)`` of the page's ``brm`` call is sampled once and kept in
``index_brm_output.txt`` (sampling is too slow to repeat in every test run); the ``glmer``
printout and the sentence under it are computed fresh (a second on the cached program).
tests/test_docs.py checks that the page holds exactly what this renders.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
BRM_OUTPUT = HERE / "index_brm_output.txt"
FORMULA = "fish_num ~ 1 + temperature + (temperature | weather)"


def load_fish() -> pd.DataFrame:
    data = pd.read_csv(ROOT / "examples" / "fish.csv")
    data["weather"] = (data["weather"] == "sunny").astype(int)  # as in the seed: sunny = 1
    return data


def sample_brm() -> str:
    """The page's brm call, run as written (pystan backend, the one the page names)."""
    import stanhier as sh

    fish = load_fish()  # the name the summary's "Data:" line shows, as on the page
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sh.brm(FORMULA, data=fish, family="poisson", seed=1, backend="pystan", progress=False)
    return str(fit)


def brm_output() -> str:
    return BRM_OUTPUT.read_text().rstrip("\n")


def _glmer():
    import stanhier as sh

    fish = load_fish()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sh.glmer(FORMULA, data=fish, family="poisson", backend="pystan", progress=False)


def glmer_output(m=None) -> str:
    return str(m or _glmer()).rstrip("\n")


def glmer_text(m=None) -> str:
    m = m or _glmer()
    b = float(m.fixef()["temperature"])
    return (f"The temperature effect, {b:.3f} per degree on the\nlog scale (about "
            f"{100 * (math.exp(b) - 1):.0f}% more fish per degree), is well determined either way.")


if __name__ == "__main__":
    if "--sample" in sys.argv:
        BRM_OUTPUT.write_text(sample_brm() + "\n")
    print(brm_output(), "", glmer_output(), "", glmer_text(), sep="\n")
