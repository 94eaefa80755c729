"""lme4-style number formatting and text tables for ML summaries.

>>> sig(0.000123456, 4), pval(0.5)
('0.0001235', '0.5')
"""

from __future__ import annotations

import math

__all__ = ["sig", "pval", "stars", "text_table"]


def sig(v: float, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    dec = max(digits - 1 - mag, 0)
    if abs(v) < 1e-4:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{dec}f}"


def pval(p: float) -> str:
    if p < 2e-16:
        return "< 2e-16"
    if p < 1e-4:
        return f"{p:.2e}"
    return f"{p:.3g}"


def stars(p: float) -> str:
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "." if p < 0.1 else ""


def text_table(rows: list[list[str]], right: bool = True, first_left: bool = False, indent: str = "") -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            c = str(c)
            left = (not right) or (first_left and i == 0)
            cells.append(c.ljust(widths[i]) if left else c.rjust(widths[i]))
        out.append((indent + " ".join(cells)).rstrip())
    return out
