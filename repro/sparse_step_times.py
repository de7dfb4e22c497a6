"""Family 14's training steps timed dense and with sparse kernels: the training-cost table in seconds, not only FLOPs.

    python repro/sparse_step_times.py [--root repro/runs] [--out repro/results/sparse_step_times] [--rounds 40]

The runs of ``repro/14*_cost_*.toml`` trained without sparse kernels (issue 32), and the older ones recorded no
step time, so their wall times say nothing about what sparse execution saves. For each masked setting of
``summarize.py``'s family-14 table (network, method, sparsity; rows chosen by ``summarize.family14_settings``) this
loads the mask of the seed-0 run (the lowest seed where seed 0 did not finish; seeds differ in which weights are
kept, not in how many per layer) with ``prunelab.Mask.load`` (``weights_only``), applies it to the network and
times whole training steps (zero_grad, forward, cross-entropy, backward, SGD with momentum 0.9 and weight decay
1e-4) of three copies side by side in one process: the dense masked step, ``--sparse-kernels on`` and
``--sparse-kernels auto``, in rounds of ``--block`` steps of each back to back (the first left out: it starts with
the other contenders' tensors in the caches, which no training does) in an order that alternates from round to
round, in CPU time, 1 thread, batch 128, on one random batch (the step's cost does not depend on the data). It keeps
the median step time of each and the median and interquartile range of the paired ratios dense / sparse
(``bench/sparse_training.py``'s method, whose ``contenders`` and ``paired_times`` it uses).

Gradual magnitude pruning, SET and RigL change their masks during training: they are timed at their final mask (for
gradual pruning the sparsest; SET and RigL keep the density and move the kept weights). Magnitude pruning after
training and LTR train the dense network first (at the dense step's cost, which sparse kernels do not change) and then
retrain under the mask: their entries time that masked retraining.

Resumable: settings already in ``results.json`` are kept (``--force`` measures again, ``--match`` only some); the file
is rewritten after each setting, with the CPU model, thread count, load average and torch version of the measurement
(each setting's own load average, one minute, and its number of rounds are in its entry).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import warnings
from pathlib import Path

import summarize  # repro/summarize.py, next to this script
import torch

from prunelab import Mask, models
from prunelab.experiments import runfiles
from prunelab.io import atomic_write_json
from prunelab.reports.tables import runs_table

from prunelab.timing import quartiles

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.sparse_training import contenders, paired_times  # noqa: E402

SHAPE = (1, 28, 28)  # Fashion-MNIST
BATCH = 128


def key(model: str, label: str, target: float) -> str:
    """A setting's key in results.json (``summarize._step_times`` reads it)."""
    return f"{model} | {label} | {target}"


def timing_runs(df) -> dict[str, tuple[str, int]]:
    """The masked family-14 settings: key -> (run id, seed) of the run timed."""
    chosen = {}
    for model, label, target, part in summarize.family14_settings(df):
        if target is None or part.empty:
            continue
        r = part.sort_values("seed").iloc[0]
        chosen[key(model, label, target)] = (str(r.id), int(r.seed))
    return chosen


def time_steps(model: str, mask: Mask, rounds: int, block: int) -> dict:
    """Median step time (ms, CPU) of the dense masked step, sparse kernels on and auto, and the paired ratios."""
    base = models.create(model, num_classes=10, input_shape=SHAPE, seed=0)
    with warnings.catch_warnings():  # "layers that are not linear run dense": LeNet-5's convolutions, known
        warnings.simplefilter("ignore", UserWarning)
        nets = contenders(base, mask, BATCH)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, *SHAPE, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
    times = {m: [cpu for cpu, _ in t] for m, t in paired_times(nets, x, y, rounds, block).items()}
    ratio = {m: quartiles([d / t for d, t in zip(times["dense"], times[m])]) for m in ("sparse", "auto")}
    return {"dense_ms": 1000 * statistics.median(times["dense"]), "on_ms": 1000 * statistics.median(times["sparse"]),
            "auto_ms": 1000 * statistics.median(times["auto"]), "speedup_on": list(ratio["sparse"]),
            "speedup_auto": list(ratio["auto"]), "auto_sparse_layers": nets["auto"][2].sparse_layers(),
            "rounds": rounds, "block": block}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="repro/runs", help="run store (default: repro/runs)")
    ap.add_argument("--out", default="repro/results/sparse_step_times", help="folder of results.json")
    ap.add_argument("--rounds", type=int, default=40, help="paired rounds per setting (default: 40)")
    ap.add_argument("--block", type=int, default=10,
                    help="steps of one contender back to back per round, the first left out (default: 10)")
    ap.add_argument("--force", action="store_true", help="measure the settings already in results.json again")
    ap.add_argument("--match", default="", help="only the settings whose key contains this text, e.g. 'lenet5 |'")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = Path(args.out) / "results.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    chosen = timing_runs(summarize.by_schedule(runs_table(args.root), step=False))
    chosen = {name: run for name, run in chosen.items() if args.match in name}
    settings = {name: e for name, e in old.get("settings", {}).items() if not (args.force and name in chosen)}
    for i, (name, (run_id, seed)) in enumerate(chosen.items()):
        if name in settings:
            continue
        mask = Mask.load(Path(args.root) / run_id / runfiles.MASK)
        entry = {"run": run_id, "seed": seed, "density": mask.density,
                 "layer_density": mask.layer_density(), "load_average": os.getloadavg()[0],
                 **time_steps(name.split(" | ")[0], mask, args.rounds, args.block)}
        settings[name] = entry
        print(f"[{i + 1}/{len(chosen)}] {name}: dense {entry['dense_ms']:.2f} ms, auto {entry['auto_ms']:.2f} ms "
              f"({entry['speedup_auto'][1]:.2f}x), on {entry['on_ms']:.2f} ms ({entry['speedup_on'][1]:.2f}x)",
              flush=True)
        atomic_write_json(path, {"cpu": cpu_model(), "threads": torch.get_num_threads(), "batch": BATCH,
                                 "load_average": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
                                 "torch": torch.__version__, "settings": settings})
    print(f"{len(settings)} settings in {path}")


if __name__ == "__main__":
    main()
