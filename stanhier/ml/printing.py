"""lme4-style number formatting and text tables for ML summaries.

>>> sig(0.000123456, 4), pval(0.5)
('0.0001235', '0.5')
"""

from __future__ import annotations

import math

__all__ = ["sig", "pval", "stars", "text_table", "r_format", "r_decimals", "r_round", "zapsmall", "r_cat_number",
           "named_vector_lines", "char_matrix_lines", "format_pvals", "print_coefmat", "abbreviate"]


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


# --------------------------------------------------------------------------- R's print rules
# lme4 prints with R's format(): one number of decimals per column (the most any entry needs
# to show ``digits`` significant digits), padded to a common width. These reproduce it.

def _sci_parts(x: float, digits: int) -> tuple[int, int, bool]:
    """(exponent, significant digits needed (<= digits), negative) of ``x`` as R's formatReal sees it."""
    if x == 0 or not math.isfinite(x):
        return 0, 1, x < 0
    mant, exp = f"{abs(x):.{digits - 1}e}".split("e")
    digs = mant.replace(".", "").rstrip("0")
    return int(exp), max(1, len(digs)), x < 0


def r_decimals(values, digits: int) -> int:
    """Decimals R's ``format(values, digits=digits)`` uses (fixed notation).

    >>> r_decimals([251.405, 10.467, 6.825, 1.546], 4), r_decimals([612.1, 35.07, 654.94], 4)
    (3, 2)
    """
    rgt = 0
    for v in values:
        if v is None or not math.isfinite(float(v)):
            continue
        kp, nsig, _ = _sci_parts(float(v), digits)
        rgt = max(rgt, nsig - kp - 1)
    return rgt


def r_format(values, digits: int = 7, nsmall: int = 0) -> list[str]:
    """R's ``format(values, digits=digits, nsmall=nsmall)``: common decimals, common width
    (right-justified); scientific notation when it is narrower, as R decides.

    >>> r_format([-3.9536, -0.4634, 0.0231, 0.4634, 5.1793], 4)
    ['-3.9536', '-0.4634', ' 0.0231', ' 0.4634', ' 5.1793']
    >>> r_format([612.1, 35.07, 654.94], 4)
    ['612.10', ' 35.07', '654.94']
    >>> r_format([1e-10, 1.0], 4)
    ['1e-10', '1e+00']
    """
    vals = [float(v) for v in values]
    finite = [v for v in vals if math.isfinite(v)]
    rgt = max(r_decimals(finite, digits), nsmall)
    fixed = [f"{v:.{rgt}f}" if math.isfinite(v) else _nonfinite(v) for v in vals]
    if finite:
        parts = [_sci_parts(v, digits) for v in finite]
        mxsig = max(p[1] for p in parts)
        exps = [p[0] for p in parts]
        neg = any(p[2] for p in parts)
        e_width = 4 if max(abs(e) for e in exps) < 100 else 5
        w_sci = neg + (mxsig + 1 if mxsig > 1 else mxsig) + e_width
        w_fixed = max(len(s) for s, v in zip(fixed, vals) if math.isfinite(v))
        if w_fixed > w_sci and nsmall == 0:
            fixed = [_r_sci(v, mxsig) if math.isfinite(v) else _nonfinite(v) for v in vals]
    width = max((len(s) for s in fixed), default=0)
    return [s.rjust(width) for s in fixed]


def _r_sci(v: float, sig_digits: int) -> str:
    mant, exp = f"{v:.{max(sig_digits - 1, 0)}e}".split("e")
    e = int(exp)
    return f"{mant}e{'-' if e < 0 else '+'}{abs(e):02d}"


def _nonfinite(v: float) -> str:
    return "NaN" if math.isnan(v) else ("Inf" if v > 0 else "-Inf")


def r_round(x: float, digits: int) -> float:
    """R's ``round(x, digits)`` (IEC 60559: half to even on the decimal representation)."""
    if not math.isfinite(x):
        return x
    return float(f"{x:.{digits}f}") if digits >= 0 else round(x, digits)


def zapsmall(values, digits: int) -> list[float]:
    """R's ``zapsmall(x, digits)``: round to ``digits`` significant digits of the largest.

    >>> zapsmall([0.0231234, 5.17934], 5)
    [0.0231, 5.1793]
    """
    vals = [float(v) for v in values]
    mx = max((abs(v) for v in vals if math.isfinite(v)), default=0.0)
    d = max(0, digits - math.ceil(math.log10(mx))) if mx > 0 else digits
    return [r_round(v, d) for v in vals]


def r_cat_number(x: float) -> str:
    """A number as R's ``cat`` prints it (up to 7 significant digits, no trailing zeros).

    >>> r_cat_number(1743.6), r_cat_number(174.0)
    ('1743.6', '174')
    """
    return r_format([x], 7)[0].strip()


def named_vector_lines(names: list[str], cells: list[str]) -> list[str]:
    """R's print of a named vector: every field right-justified to the common width, each
    followed by a space (on one line: lme4's short vectors).

    >>> named_vector_lines(["Min", "Max"], ["-1.5", "2.0"])
    [' Min  Max ', '-1.5  2.0 ']
    """
    w = max(len(s) for s in list(names) + list(cells))
    return ["".join(f"{n:>{w}} " for n in names), "".join(f"{c:>{w}} " for c in cells)]


def char_matrix_lines(header: list[str], rows: list[list[str]], rownames: list[str] | None = None,
                      right: bool = False) -> list[str]:
    """R's print of a character matrix (``quote=FALSE``): a row-name column (left-justified;
    empty names give a zero-width column), then each column padded to its widest cell,
    left-justified unless ``right``, separated by one space.

    >>> char_matrix_lines(["(Intr)"], [["-0.138"]], ["Days"])
    ['     (Intr)', 'Days -0.138']
    """
    rownames = rownames if rownames is not None else [""] * len(rows)
    rw = max((len(r) for r in rownames), default=0)
    widths = [max([len(header[j])] + [len(r[j]) for r in rows]) for j in range(len(header))]

    def cell(text: str, j: int) -> str:
        return text.rjust(widths[j]) if right else text.ljust(widths[j])

    out = [" " * rw + "".join(" " + cell(h, j) for j, h in enumerate(header))]
    for name, r in zip(rownames, rows):
        out.append(name.ljust(rw) + "".join(" " + cell(c, j) for j, c in enumerate(r)))
    return out


def format_pvals(ps, digits: int = 3, eps: float = 2.220446049250313e-16) -> list[str]:
    """R's ``format.pval(ps, digits)``: p-values from 1e-3 up formatted together, smaller
    ones together, those below ``eps`` as ``< 2e-16``.

    >>> format_pvals([0.908, 1e-20, 2.68e-05, 0.0123456, 0.5])
    ['0.9080', '< 2e-16', '2.68e-05', '0.0123', '0.5000']
    >>> format_pvals([0.5, 1e-20])
    ['0.5', '<2e-16']
    """
    ps = [float(p) for p in ps]
    out = ["NA" if math.isnan(p) else "" for p in ps]
    idx = [i for i, p in enumerate(ps) if not math.isnan(p) and p >= eps]
    for fixed in (True, False):
        group = [i for i in idx if (ps[i] == 0 or math.floor(math.log10(ps[i])) >= -3) == fixed]
        for i, text in zip(group, r_format([ps[i] for i in group], digits)):
            out[i] = text.strip()
    small = [i for i, p in enumerate(ps) if not math.isnan(p) and p < eps]
    if small:
        d = max(1, digits - 2)
        if idx:
            nc = max(len(out[i]) for i in idx)
            if d > 1 and d + 6 > nc:
                d = max(1, nc - 7)
            sep = "" if d == 1 and nc <= 6 else " "
        else:
            sep = "" if d == 1 else " "
        for i in small:
            out[i] = "<" + sep + r_format([eps], d)[0]
    return out


def signif_stars(p: float) -> str:
    return ("***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "." if p < 0.1 else " ")


def print_coefmat(names: list[str], columns: list[str], values: list[list[float]], digits: int = 4,
                  has_pvalue: bool = False) -> list[str]:
    """R's ``printCoefmat`` as ``print.summary.merMod`` calls it (estimate and standard error
    formatted together, the test statistic rounded to ``digits - 1``, p-values with stars).

    >>> print_coefmat(["(Intercept)", "Days"], ["Estimate", "Std. Error", "t value"],
    ...               [[251.405, 6.8246, 36.838], [10.4673, 1.5458, 6.7715]])[1]
    '(Intercept)  251.405      6.825  36.838'
    """
    dig_tst = max(1, min(5, digits - 1))
    n = len(values)
    cs = [[row[0], row[1]] for row in values]
    acs = [abs(v) for r in cs for v in r if math.isfinite(v) and v != 0]
    if acs:
        digmin = [1 + math.floor(math.log10(min(acs))), 1 + math.floor(math.log10(max(acs)))]
        rd = max(1, max(digits - d for d in digmin))
    else:
        rd = 1
    flat = [r_round(v, rd) for r in cs for v in r]
    fmt = r_format(flat, digits)
    cells = [[fmt[2 * i], fmt[2 * i + 1]] for i in range(n)]
    # printCoefmat: an entry printed as 0 that is not 0 is re-formatted on its own
    for i in range(n):
        for j in range(2):
            if float(cells[i][j]) == 0 and cs[i][j] != 0:
                cells[i][j] = r_format([cs[i][j]], max(1, digits - 1))[0]
    tst = r_format([r_round(r[2], dig_tst) for r in values], digits)
    for i in range(n):
        cells[i].append(tst[i])
    header = list(columns)
    if has_pvalue:
        ps = [r[3] for r in values]
        pv = format_pvals(ps, dig_tst)
        w = max(len(s) for s in pv)
        show_stars = any(p < 0.1 for p in ps if not math.isnan(p))
        marks = [signif_stars(p) for p in ps]
        mw = max(len(m) for m in marks)
        for i in range(n):
            cells[i].append(pv[i].rjust(w))
            if show_stars:
                cells[i].append(marks[i].ljust(mw))  # R: format(Signif), left-justified
        if show_stars:
            header.append("")
    lines = char_matrix_lines(header, cells, names, right=True)
    if has_pvalue and any(p < 0.1 for p in (r[3] for r in values)):
        lines += ["---", "Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1"]
    return lines


def _abbrev_one(text: str, minlength: int) -> str:
    """R's C routine behind ``abbreviate`` (use.classes = TRUE) for one string."""
    b = list(text.lstrip())
    if len(b) < minlength:
        return "".join(b)

    def first(i):  # start of a word
        return b[i - 1].isspace()

    def last(i):  # end of a word
        return (not b[i - 1].isspace()) and (i + 1 >= len(b) or b[i + 1].isspace())

    nspace = 0
    j = 1
    for i in range(len(b) - 1, 0, -1):  # trailing spaces go, inner spaces count as word breaks
        if b[i].isspace():
            if j:
                del b[i:]
            else:
                nspace += 1
        else:
            j = 0
        if len(b) - nspace <= minlength:
            return _drop_spaces(b, minlength)
    vowel = set("aeiou")
    for test in (lambda i: b[i] in vowel and last(i), lambda i: b[i] in vowel and not first(i),
                 lambda i: b[i].islower() and last(i), lambda i: b[i].islower() and not first(i),
                 lambda i: not first(i) and not b[i].isspace()):
        for i in range(len(b) - 1, 0, -1):
            if i < len(b) and test(i):
                del b[i]
            if len(b) - nspace <= minlength:
                return _drop_spaces(b, minlength)
    return _drop_spaces(b, minlength)


def _drop_spaces(b: list[str], minlength: int) -> str:
    if len(b) > minlength:
        b = [b[0]] + [c for c in b[1:] if not c.isspace()]
    return "".join(b)


def abbreviate(names: list[str], minlength: int = 4) -> list[str]:
    """R's ``abbreviate(names, minlength)`` (unique results; lme4 labels fixed-effect correlations with it).

    >>> abbreviate(["(Intercept)", "temperature", "Days", "factor(x)b:z", "sunny weather"], 6)
    ['(Intr)', 'tmprtr', 'Days', 'fct():', 'snnywt']
    >>> abbreviate(["Intercept_long_name1", "Intercept_long_name2"], 11)
    ['Intrcpt_l_1', 'Intrcpt_l_2']
    """
    names = [n.strip() for n in names]
    uniq = list(dict.fromkeys(names))
    x = list(uniq)
    dup = [True] * len(uniq)
    length = minlength
    while True:
        for i, d in enumerate(dup):
            if d:
                x[i] = _abbrev_one(uniq[i], length)
        seen, dups_now = set(), [False] * len(x)
        for i, v in enumerate(x):
            if v in seen:
                dups_now[i] = True
            seen.add(v)
        if not any(dups_now):
            break
        length += 1
        dup_vals = {x[i] for i, d in enumerate(dups_now) if d}
        dup = [d or x[i] in dup_vals for i, d in enumerate(dups_now)]
    table = dict(zip(uniq, x))
    return [table[n] for n in names]
