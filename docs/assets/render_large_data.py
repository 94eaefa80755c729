"""Render the measured parts of docs/large_data.md from the files the runs wrote.

    python docs/assets/render_large_data.py      # prints the benchmark table

``bench_dask_results.json`` is written by ``benchmarks/bench_dask.py --json``;
``large_data_example.txt`` by ``docs/assets/large_data_example.py``. tests/test_docs.py
checks that the page holds exactly what this renders.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def example_output() -> str:
    return (HERE / "large_data_example.txt").read_text().rstrip("\n")


def bench_table() -> str:
    r = json.loads((HERE / "bench_dask_results.json").read_text())
    d, l4, c = r["dask_lmer"], r["lme4"], r["poisson_aggregation"]
    passes = ", ".join(f"{k} {v:.1f} s" for k, v in d["pass_seconds"].items())
    lme4 = (f"{l4['fit_seconds']:.1f} s fit, R max used {l4['r_max_used_mb']:,} MB"
            + (f", peak RSS {l4['peak_rss_mb']:,} MB" if "peak_rss_mb" in l4 else "")
            if "error" not in l4 else f"failed: {l4['error']}")
    rows = [
        ("machine", f"{r['machine']['cpus']} cores, shared with other jobs (1-minute load average "
                    f"{r['machine']['load_average_start'][0]:.1f} at the start, {r['machine']['load_average_end'][0]:.1f} "
                    "at the end)"),
        ("stanhier `lmer` on Dask", f"{d['rows']:,} rows, {d['partitions']} partitions, {d['groups']:,} groups, "
                                   f"LocalCluster of {d['workers']} worker processes"),
        ("wall time of the fit", f"{d['fit_seconds']:.1f} s"),
        ("passes over the data", passes),
        ("statistics pass (cross-products)", f"{d['stats_pass_rows_per_second']:,} rows/s"),
        ("client peak RSS", f"{d['client_peak_rss_mb']:,} MB"),
        ("estimates", f"fixef {d['fixef']}, theta {d['theta']}, sigma {d['sigma']}"),
        ("lme4 `lmer` on the same model", f"{l4.get('rows', 0):,} rows: {lme4}"),
        ("rows per second of the whole fit", (f"stanhier {d['rows'] / d['fit_seconds']:,.0f}, lme4 "
                                              f"{l4['rows'] / l4['fit_seconds']:,.0f} "
                                              f"({d['rows'] / d['fit_seconds'] / (l4['rows'] / l4['fit_seconds']):.0f}x)")
         if "error" not in l4 else "lme4 failed"),
        ("Poisson GLMM, raw rows", f"{c['rows']:,} rows: {c['raw_seconds']:.1f} s"),
        ("Poisson GLMM, aggregated", f"{c['patterns']:,} patterns: {c['aggregated_seconds']:.1f} s "
                                     f"({c['speedup']:.0f}x faster)"),
        ("logLik raw vs aggregated", f"{c['logLik_raw']:.4f} vs {c['logLik_aggregated']:.4f} "
                                     f"(relative difference {c['logLik_rel_diff']:.1e})"),
    ]
    return "\n".join(["| | |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows])


if __name__ == "__main__":
    print(bench_table())
