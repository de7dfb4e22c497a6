"""repro/sparse_step_times.py: which run of each family-14 setting it times, and how summarize shows the times."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

REPRO = Path(__file__).resolve().parent.parent / "repro"
sys.path.insert(0, str(REPRO))

import sparse_step_times  # noqa: E402
import summarize  # noqa: E402

HIGH, LOW = 0.981985201, 0.931280523
COLUMNS = ("id", "model", "kind", "seed", "status", "training.train", "method", "prune_at", "ablation", "distribution",
           "like", "sparsity_target", "level", "rewind_to", "structure")


def run(id, seed, kind="prune", method="snip", prune_at="0it", target=HIGH, model="lenet_300_100", train="10ep",
        status="done", **more):
    row = dict.fromkeys(COLUMNS)
    row.update(id=id, model=model, kind=kind, seed=seed, status=status, method=method, prune_at=prune_at,
               sparsity_target=target, **{"training.train": train}, **more)
    return row


def test_one_run_per_masked_setting_seed_0_first():
    df = pd.DataFrame([
        run("snip-s2", 2), run("snip-s0", 0), run("snip-s1", 1),  # seed 0 is chosen whatever the order
        run("snip-low-s1", 1, target=LOW), run("snip-low-s2", 2, target=LOW),  # no seed 0 finished: the lowest
        run("snip-failed-s0", 0, target=LOW, status="failed"),
        run("snip-1ep-s0", 0, target=LOW, train="1ep"),
        run("mag-end-s0", 0, method="magnitude", prune_at="end"),
        run("rigl-s0", 0, kind="rigl", method=None, prune_at=None),
        run("ltr-s0", 0, kind="lottery", method=None, prune_at=None, level=1, rewind_to="0it",
            structure="unstructured"),
        run("ltr-level2-s0", 0, kind="lottery", method=None, prune_at=None, level=2, rewind_to="0it",
            structure="unstructured"),
        run("dense-s0", 0, kind="dense", method=None, prune_at=None, target=None),
        run("lenet5-snip-s0", 0, model="lenet5"),
    ])
    expected = {
        "lenet_300_100 | SNIP at init | 0.981985201": ("snip-s0", 0),
        "lenet_300_100 | SNIP at init | 0.931280523": ("snip-low-s1", 1),
        "lenet_300_100 | magnitude after training | 0.981985201": ("mag-end-s0", 0),
        "lenet_300_100 | RigL | 0.981985201": ("rigl-s0", 0),
        "lenet_300_100 | LTR (rewind to 0) | 0.981985201": ("ltr-s0", 0),
        "lenet5 | SNIP at init | 0.981985201": ("lenet5-snip-s0", 0),
    }
    assert sparse_step_times.timing_runs(df) == expected


def test_summarize_shows_the_measured_times():
    times = {"settings": {
        "lenet5 | SET | 0.981985201": {"dense_ms": 50.0, "auto_ms": 40.0, "speedup_auto": [1.1, 1.25, 1.3]}}}
    assert summarize._step_times(times, "lenet5", "SET", HIGH) == ["50.00", "40.00", "1.25x (1.10-1.30)"]
    assert summarize._step_times(times, "lenet5", "RigL", HIGH) == ["-", "-", "-"]
    assert summarize._step_times(None, "lenet5", "SET", HIGH) == ["-", "-", "-"]
