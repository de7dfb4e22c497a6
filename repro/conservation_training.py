"""Family 5, the training half (Tanaka et al. 2020, §5, Fig. 5b): does training make the squared weights conserved?

Under gradient flow the score ``w^2 / 2`` is a synaptic saliency, so for every hidden neuron the change of the
squared incoming weights (and bias) equals the change of the squared outgoing weights; summed over a layer,
``d/dt (||W_l||^2 + ||b_l||^2) = d/dt ||W_(l+1)||^2`` (Tanaka et al. 2020, §5), and training drives the average
squared weight of a layer towards an inverse relation with the layer size (their Fig. 5b, VGG-19 on CIFAR-10).
This reads the initial and final weights of the dense runs of ``--model`` (``--train`` per run) and records, per
weight layer, its size and ``||W||^2``, ``||b||^2`` at initialization and after training.

    python repro/conservation_training.py [--root repro/runs] [--checkpoints /work/main/repro/runs]

The checkpoints are not committed; a run whose checkpoints are gone can be rerun into another store
(``prunelab train`` with its settings gives the same run id) and read with ``--checkpoints``; its entry is then
marked ``recreated``. The numbers are cached in
``repro/results/conservation_training/results.json``, one entry per run, kept when the checkpoints are gone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from prunelab.experiments import runfiles
from prunelab.io import atomic_write_json
from prunelab.reports.tables import runs_table
from prunelab.training import load_checkpoint
from prunelab.training.checkpoints import CheckpointFolder


def squares(state: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per weight matrix or kernel: [size, ||W||^2, ||b||^2] (0 without a bias), in the state's order."""
    out = {}
    for name, w in state.items():
        if name.endswith("weight") and w.dim() >= 2:
            bias = state.get(name.removesuffix("weight") + "bias")
            out[name] = [w.numel(), float(w.double().square().sum()),
                         0.0 if bias is None else float(bias.double().square().sum())]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="repro/runs")
    ap.add_argument("--checkpoints", help="run store holding the checkpoints (default: --root)")
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--train", default="10ep")
    ap.add_argument("--out", default="repro/results/conservation_training")
    args = ap.parse_args()
    ckpts = Path(args.checkpoints or args.root)
    df = runs_table(args.root)
    dense = df[(df.kind == "dense") & (df.model == args.model) & (df["training.train"] == args.train)
               & (df.status == "done")]
    path = Path(args.out) / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for _, r in dense.iterrows():
        first, last = (CheckpointFolder(ckpts / r.id / runfiles.CHECKPOINTS).path_for(s) for s in (0, int(r.steps)))
        if r.id in results or not (first.is_file() and last.is_file()):
            continue
        init, end = (squares(load_checkpoint(p)["model"]) for p in (first, last))
        results[r.id] = {"model": args.model, "train": args.train, "seed": int(r.seed),
                         "lr": float(r["training.lr"]), "momentum": float(r["training.momentum"]),
                         # checkpoints of a rerun of the same run id in another store (same settings, maybe
                         # another CPU type, so not the same bits as the committed run)
                         "recreated": ckpts.resolve() != Path(args.root).resolve(),
                         "layers": {n: {"size": init[n][0], "init": init[n][1:], "end": end[n][1:]} for n in init}}
        print(f"{r.id} (seed {r.seed}): {len(init)} layers", flush=True)
    atomic_write_json(path, results)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
