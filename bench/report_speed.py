"""Time of ``prunelab report`` on a store: a first call into an empty folder, then a second on the unchanged store.

The second call reuses every figure whose inputs are unchanged (``prunelab.reports.figure_builds``), so it
should take seconds; the first draws every figure, in a process pool over the CPUs. Each call is a whole
process (wall time, and the CPU time of the process and its children, from ``resource.getrusage``).

    python bench/report_speed.py [--root repro/runs] [--jobs N] [--formats png,pdf,svg]

Target (issue 30): a first report of the committed store (about 1,400 runs, 200 figures) in at most a minute on
a 2-core laptop, PNG only (the default; PDF and SVG triple it and are drawn on request), and a second in seconds.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time


def _timed(argv: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="repro/runs")
    ap.add_argument("--jobs", type=int, default=None, help="prunelab report --jobs (default: its own)")
    ap.add_argument("--formats", default=None, help="prunelab report --formats (default: its own, png)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        argv = [sys.executable, "-m", "prunelab", "report", "--root", args.root, "--out", out]
        if args.jobs is not None:
            argv += ["--jobs", str(args.jobs)]
        if args.formats is not None:
            argv += ["--formats", args.formats]
        rows = [("first call (every figure drawn)", *_timed(argv)), ("second call (unchanged store)", *_timed(argv))]
    runs = sum(1 for p in os.scandir(args.root) if p.is_dir())
    print(f"prunelab report --root {args.root} ({runs} run folders), formats {args.formats or 'png'}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'call':<32}{'wall (s)':>10}{'CPU (s)':>10}")
    for name, wall, cpu in rows:
        print(f"{name:<32}{wall:>10.1f}{cpu:>10.1f}")


if __name__ == "__main__":
    main()
