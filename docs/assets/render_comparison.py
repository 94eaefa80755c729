"""Render the tables of docs/comparison.md from the references and the measured numbers.

    .venv/bin/python docs/assets/render_comparison.py   # prints markdown

Reads tests/reference/{bayes,ml}_reference.json (brms and lme4 runs in R) and
docs/assets/comparison_numbers.json (written by measure_comparison.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REF_B = json.loads((ROOT / "tests/reference/bayes_reference.json").read_text())["cases"]
REF_M = json.loads((ROOT / "tests/reference/ml_reference.json").read_text())["cases"]
OURS = json.loads((ROOT / "docs/assets/comparison_numbers.json").read_text())["cases"]


def f(x, d: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{d}f}"


def vc(records: list[dict], grp: str, v1: str, v2) -> float | None:
    for r in records:
        r2 = r.get("var2")
        if isinstance(r2, float) and math.isnan(r2):
            r2 = None
        r1 = r.get("var1")
        if isinstance(r1, float) and math.isnan(r1):
            r1 = None
        if r["grp"] == grp and r1 == v1 and r2 == v2:
            return r["sdcor"]
    return None


def ml_table(case: str, grp: str, coefs: list[str], gaussian: bool) -> str:
    ref, ours = REF_M[case], OURS[case]
    rows = ["| quantity | lme4 | stanhier |", "| --- | ---: | ---: |"]
    for j, c in enumerate(coefs):
        rows.append(f"| fixef `{c}` | {f(ref['fixef'][c], 4)} | {f(ours['fixef'][c], 4)} |")
        rows.append(f"| SE `{c}` | {f(ref['fixef_se'][c], 4)} | {f(ours['se'][j], 4)} |")
    refvc = ref["varcorr"]["table"]
    terms = [t for t in ref["varcorr"]["by_term"] if t["group"] == grp][0]["terms"]
    terms = [terms] if isinstance(terms, str) else terms
    for t in terms:
        rows.append(f"| SD `{grp}` `{t}` | {f(vc(refvc, grp, t, None), 4)} | {f(vc(ours['varcorr'], grp, t, None), 4)} |")
    if len(terms) == 2:
        rows.append(f"| Corr `{grp}` | {f(vc(refvc, grp, terms[0], terms[1]), 3)} | "
                    f"{f(vc(ours['varcorr'], grp, terms[0], terms[1]), 3)} |")
    if gaussian:
        rows.append(f"| sigma | {f(ref['sigma'], 4)} | {f(ours['sigma'], 4)} |")
    rows.append(f"| logLik | {f(ref['logLik'], 3)} | {f(ours['logLik'], 3)} |")
    return "\n".join(rows)


def bayes_table(case: str) -> str:
    ref, ours = REF_B[case], OURS[case]
    rows = ["| parameter | brms Estimate (Est.Error) | stanhier Estimate (Est.Error) | brms 95% CI | stanhier 95% CI | brms Rhat / Bulk_ESS | stanhier Rhat / Bulk_ESS |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    table = ours["table"]
    for r in ref["summary_table"]:
        block, name = r["block"], r["name"]
        if block == "fixed":
            key = f"b_{name}"
        elif block.startswith("random:"):
            g = block.split(":", 1)[1]
            inner = name[name.index("(") + 1:-1]
            key = (f"sd_{g}__{inner}" if name.startswith("sd(") else f"cor_{g}__{inner.replace(',', '__')}")
        else:
            key = name
        o = table.get(key)
        if o is None:
            continue
        rows.append(f"| `{key}` | {f(r['Estimate'], 3)} ({f(r['Est.Error'], 3)}) | {f(o['Estimate'], 3)} ({f(o['Est.Error'], 3)}) | "
                    f"[{f(r['l-95% CI'], 2)}, {f(r['u-95% CI'], 2)}] | [{f(o['l-95% CI'], 2)}, {f(o['u-95% CI'], 2)}] | "
                    f"{f(r['Rhat'], 2)} / {r['Bulk_ESS']:.0f} | {f(o['Rhat'], 2)} / {o['Bulk_ESS']:.0f} |")
    rows.append(f"| divergent transitions | {ref['n_divergent']} | | | | | {ours['diagnostics']['divergent_transitions']} |")
    return "\n".join(rows)


def main() -> str:
    out = []
    for title, case, grp, coefs, gauss in [
        ("sleepstudy, `lmer(Reaction ~ Days + (Days | Subject))`, REML", "sleepstudy_corr_REML", "Subject", ["(Intercept)", "Days"], True),
        ("sleepstudy, same model, `REML = FALSE`", "sleepstudy_corr_ML", "Subject", ["(Intercept)", "Days"], True),
        ("fish, `glmer(fish_num ~ 1 + temperature + (1 | weather), family = poisson)`, Laplace", "fish_int_weather_laplace", "weather", ["(Intercept)", "temperature"], False),
        ("fish, `glmer(fish_num ~ 1 + temperature + (temperature | weather), family = poisson)` (singular)", "fish_slope_weather_laplace", "weather", ["(Intercept)", "temperature"], False),
    ]:
        if case in OURS:
            out += [f"### {title}", "", ml_table(case, grp, coefs, gauss), ""]
    for title, case in [("sleepstudy, `brm(Reaction ~ Days + (Days | Subject))`", "sleepstudy"),
                        ("fish, `brm(fish_num ~ 1 + temperature + (temperature | weather), family = poisson)`", "fish_slope_corr")]:
        if case in OURS:
            out += [f"### {title}", "", bayes_table(case), ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(main())
