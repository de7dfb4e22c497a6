"""How long the ``prunelab`` command takes to answer, beside a bare Python start and ``import torch``.

    python bench/cli_startup.py [--rounds 7] [--root repro/runs]

Each command runs as a whole process (``python -m prunelab ...``, what the ``prunelab`` script does), its
wall time measured around the process and its CPU time (user + system) read from the kernel's account of
the child. The commands alternate, round after round, so that a machine that gets busier or quieter midway
shifts every row alike. The table gives medians, the spread (lowest to highest) and the difference with the
row each is compared with.

Targets (issue 30, item 1): the light commands (``--version``, ``--help``, ``list``, ``ls``, ``show``)
within 0.3 s of ``python -c pass``, since they never import torch; ``run`` and ``train`` (their ``--help``,
which builds every flag of the command) within 0.5 s of ``python -c "import torch"``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIGHT_MARGIN = 0.3  # seconds over a bare Python start
HEAVY_MARGIN = 0.5  # seconds over `import torch`
BARE, TORCH = "python -c pass", 'python -c "import torch"'


def commands(root: Path, empty: Path) -> dict[str, tuple[list[str], str | None]]:
    """Label -> (argv, the baseline row it is held to: None for the baselines themselves)."""
    python = [sys.executable]
    prunelab = [*python, "-m", "prunelab"]
    run_id = next((p.name for p in sorted(root.iterdir()) if (p / "hparams.json").is_file()), None)
    rows: dict[str, tuple[list[str], str | None]] = {
        BARE: ([*python, "-c", "pass"], None),
        TORCH: ([*python, "-c", "import torch"], None),
        "prunelab --version": ([*prunelab, "--version"], BARE),
        "prunelab --help": ([*prunelab, "--help"], BARE),
        "prunelab list methods": ([*prunelab, "list", "methods"], BARE),
        "prunelab ls (empty store)": ([*prunelab, "ls", "--root", str(empty)], BARE),
    }
    if run_id is not None:
        rows[f"prunelab show {run_id[:8]}"] = ([*prunelab, "show", run_id, "--root", str(root)], BARE)
    rows["prunelab run --help"] = ([*prunelab, "run", "--help"], TORCH)
    rows["prunelab train --help"] = ([*prunelab, "train", "--help"], TORCH)
    return rows


def measure(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="runs of each command, alternating (default: 7)")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent / "repro" / "runs",
                    help="a run store whose first run `show` prints (default: repro/runs)")
    args = ap.parse_args()
    env_note = f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    with tempfile.TemporaryDirectory() as empty:
        rows = commands(args.root, Path(empty) / "runs")
        walls: dict[str, list[float]] = {k: [] for k in rows}
        cpus: dict[str, list[float]] = {k: [] for k in rows}
        measure(rows[TORCH][0])  # warm the file cache once, for every row alike
        for _ in range(args.rounds):
            for label, (argv, _) in rows.items():
                wall, cpu = measure(argv)
                walls[label].append(wall)
                cpus[label].append(cpu)

    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"whole-process times, median of {args.rounds} alternating runs ({env_note})\n")
    table = [["command", "wall (s)", "spread (s)", "CPU (s)", "over", "target", "met"]]
    for label, (_, base) in rows.items():
        over = med[label] - med[base] if base else None
        margin = LIGHT_MARGIN if base == BARE else HEAVY_MARGIN
        table.append([
            label, f"{med[label]:.3f}", f"{min(walls[label]):.3f}-{max(walls[label]):.3f}",
            f"{statistics.median(cpus[label]):.3f}",
            "-" if over is None else f"{over:+.3f} vs {'bare' if base == BARE else 'torch'}",
            "-" if base is None else f"<= {margin:.1f}",
            "-" if over is None else ("yes" if over <= margin else "NO"),
        ])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for k, row in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
