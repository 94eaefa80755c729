"""CPU seconds of each test of a pytest run: where the suite's time goes when it is CPU-bound.

The cold suite runs two pytest-xdist workers on two cores and keeps both busy (``vmstat``: about
2% idle), so its wall time is its CPU time divided by two, and a test's wall time says little
(a compile next to another worker's 4-chain sampling takes twice its time alone). This plugin
records, for each test, the CPU time (user + system) of the process that runs it and of all its
descendants, alive (httpstan's sampler processes, a compiler) or ended and waited for (a test's
child Python, CmdStan), from ``/proc``, between the start of its setup and the end of its teardown.
Linux only. ::

    CI=true STANHIER_CACHE_DIR=<a cache with only what `stanhier prepare` builds> \\
      PYTHONPATH=benchmarks python -m pytest -n 2 --dist worksteal -p pytest_cpu
    python benchmarks/pytest_cpu.py [--top 40]       # the table, and the sums by module and engine

Lines go to ``$PYTEST_CPU_OUT`` (default ``pytest_cpu.jsonl`` in the working folder), one per
test and process; under xdist the controller writes a line too (its descendants are both
workers), so the report keeps each test's smallest CPU time: its worker's.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time

OUT_ENV = "PYTEST_CPU_OUT"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_started: dict[str, tuple[float, float]] = {}


def _stat_fields(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        text = fh.read()
    return text[text.rfind(")") + 2:].split()  # after the command name, which may hold spaces


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its live descendants, each with its waited-for children."""
    children: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = _stat_fields(name)
            except OSError:
                continue  # ended meanwhile
            children[int(fields[1])].append((int(name), sum(int(x) for x in fields[11:15])))
    ticks = sum(int(x) for x in _stat_fields(root)[11:15])  # utime stime cutime cstime
    stack = [root]
    while stack:
        for pid, own in children.get(stack.pop(), []):
            ticks += own
            stack.append(pid)
    return ticks / _TICKS


def pytest_runtest_logstart(nodeid, location):
    _started[nodeid] = (tree_cpu(os.getpid()), time.time())


def pytest_runtest_logfinish(nodeid, location):
    cpu0, wall0 = _started.pop(nodeid)
    row = {"test": nodeid, "cpu": round(tree_cpu(os.getpid()) - cpu0, 2), "wall": round(time.time() - wall0, 2),
           "pid": os.getpid()}
    with open(os.environ.get(OUT_ENV, "pytest_cpu.jsonl"), "a") as fh:
        fh.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=os.environ.get(OUT_ENV, "pytest_cpu.jsonl"))
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    rows: dict[str, dict] = {}
    with open(args.path) as fh:
        for line in fh:
            row = json.loads(line)
            if row["test"] not in rows or row["cpu"] < rows[row["test"]]["cpu"]:
                rows[row["test"]] = row
    ranked = sorted(rows.values(), key=lambda r: -r["cpu"])
    print(f"{len(ranked)} tests, {sum(r['cpu'] for r in ranked):.0f} CPU-s, "
          f"{sum(r['wall'] for r in ranked):.0f} s of test time\n\n   CPU s  wall s  test")
    for row in ranked[:args.top]:
        print(f"{row['cpu']:8.1f} {row['wall']:7.1f}  {row['test']}")
    groups: collections.Counter = collections.Counter()
    for row in ranked:
        engine = "cmdstanpy" if "cmdstanpy" in row["test"].split("::")[-1] else "pystan"
        groups[f"{row['test'].split('::')[0]} ({engine})"] += row["cpu"]
    print("\n   CPU s  module (engine)")
    for name, cpu in groups.most_common():
        print(f"{cpu:8.1f}  {name}")


if __name__ == "__main__":
    main()
