"""Family 7 analyses (Paganini & Forde 2020, §4-5, App. A and D) of the iterative-pruning runs of ``repro/07*.toml``.

    python repro/imp_analysis.py [--root repro/runs] [--out repro/results/imp]

From the masks (committed with the runs):
- ``jaccard_to_l2``: per layer and pruning level, the Jaccard distance of each structure's mask to the
  L2-structured mask of the same seed and level (Paganini & Forde 2020, §4, Fig. 3);
- ``jaccard_to_l1_unstructured``: the same against L1-unstructured masks (Fig. 4);
- ``rewind_vs``: per layer and level, the distance between the masks found with rewinding and with
  finetuning or sigma*sign reinitialization, same structure and seed (§4.1, App. A Fig. 9);
- ``emergent_structure``: per convolution and for the first linear layer, the fraction of input
  channels (input features) removed whole by unstructured pruning, against the exact expectation for
  a random mask of the same size, and the dispersion of the kept counts over the input and the output
  channels (1 for a random mask; §4, Fig. 5, App. E).

From the trained weights (the runs' final checkpoints, which stay local and are not committed; the
numbers are cached in ``results.json`` and kept when the checkpoints are gone):
- ``stability``: per structure and layer, the mean ``|w_i - w_{i-1}|`` of the weights kept at
  consecutive levels, averaged over the levels, level 0 being the dense network (§5, Fig. 8);
- ``ensembles``: per level, the test accuracy of each structure's network and of the averaged
  softmax of all of them and of L1 structured + L1 unstructured (App. D, Table 2).

Each training budget (``training.train``) of the runs is analysed on its own: results.json maps it to
the sections above.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pandas as pd
import torch

from prunelab import Mask, analysis, data, models
from prunelab.io import atomic_write_json
from prunelab.reports.tables import runs_table
from prunelab.training import load_checkpoint
from prunelab.training.trainer import device_arg

REWIND = "0it"
STRUCTURES = ["unstructured", "l1", "l2", "lneginf", "random", "random_unstructured", "hybrid", "fc_only"]


def lottery_runs(df: pd.DataFrame, model: str) -> pd.DataFrame:
    """The finished layer-wise lottery runs of ``model`` in the run table ``df``."""
    if "structure" not in df.columns:
        return df.iloc[0:0]
    return df[(df.kind == "lottery") & (df.model == model) & (df.status == "done") & (df.scope == "layer")]


def masks_of(root: Path, rows: pd.DataFrame) -> dict[tuple, Mask]:
    """(structure, rewind_to, seed, level) -> mask."""
    return {(r.structure, r.rewind_to, int(r.seed), int(r.level)): Mask.load(root / r.id / "mask.pt")
            for r in rows.itertuples()}


def distance_table(masks: dict[tuple, Mask], pairs) -> list[dict]:
    """One row per (pair of variants, seed, level, layer) found in ``masks``: the Jaccard distance."""
    rows = []
    for (ref, other) in pairs:
        for key, mask in masks.items():
            if key[:2] != other:
                continue
            ref_mask = masks.get((*ref, *key[2:]))
            if ref_mask is None:
                continue
            # fc_only masks cover the linear layers only
            for layer, sim in analysis.jaccard_per_layer(ref_mask, mask, shared_only=True).items():
                rows.append({"reference": "/".join(ref), "other": "/".join(other), "seed": key[2], "level": key[3],
                             "layer": layer, "distance": 1 - sim})
    return rows


def structure_table(masks: dict[tuple, Mask]) -> list[dict]:
    rows = []
    for (structure, rewind, seed, level), mask in masks.items():
        if structure not in ("unstructured", "l1"):
            continue
        for layer, s in analysis.emergent_structure(mask, seed=seed).items():
            if s["slices"] < 2:
                continue
            rows.append({"structure": structure, "rewind_to": rewind, "seed": seed, "level": level, "layer": layer,
                         **{k: s[k] for k in ("kind", "kept", "total", "removed", "expected_random", "dispersion",
                                              "output_removed", "output_dispersion")}})
    return rows


def final_weights(root: Path, run_id: str, steps: int) -> dict[str, torch.Tensor]:
    path = root / run_id / "checkpoints" / f"step_{int(steps)}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (checkpoints are not committed: rerun the sweep to recreate it)")
    return load_checkpoint(path)["model"]


def stability_table(root: Path, runs: pd.DataFrame, dense: pd.DataFrame) -> list[dict]:
    rows = []
    for (structure, seed), part in runs[runs.rewind_to == REWIND].groupby(["structure", "seed"]):
        base = dense[dense.seed == seed]
        if base.empty:
            continue
        prev_state = final_weights(root, base.iloc[0].id, base.iloc[0].steps)
        prev_mask = None
        for r in part.sort_values("level").itertuples():
            mask = Mask.load(root / r.id / "mask.pt")
            state = final_weights(root, r.id, r.steps)
            prev = prev_mask or Mask({n: torch.ones_like(t) for n, t in mask.items()})
            for layer, value in analysis.weight_stability(prev_state, state, prev, mask).items():
                rows.append({"structure": structure, "seed": int(seed), "level": int(r.level), "layer": layer,
                             "mean_abs_change": value})
            prev_state, prev_mask = state, mask
    return rows


def ensemble_table(root: Path, runs: pd.DataFrame, device: str | torch.device = "cpu") -> list[dict]:
    ds = data.load(runs.dataset.iloc[0], augment=False)
    batches = list(ds.loader("test", 1000, seed=0).epoch(0))
    labels = torch.cat([y for _, y in batches])
    rows = []
    for (seed, level), part in runs[runs.rewind_to == REWIND].groupby(["seed", "level"]):
        logits = {}
        for r in part.itertuples():
            net = models.create(r.model, num_classes=ds.num_classes, input_shape=ds.input_shape)
            net.load_state_dict(final_weights(root, r.id, r.steps))
            logits[r.structure] = analysis.predictions(net, batches, device=device)
        row = {"seed": int(seed), "level": int(level)}
        row.update({s: analysis.accuracy(v, labels) for s, v in logits.items()})
        if len(logits) == len(STRUCTURES):
            row["ensemble_all"] = analysis.ensemble_accuracy(list(logits.values()), labels)
        if {"l1", "unstructured"} <= set(logits):
            row["ensemble_l1_s_us"] = analysis.ensemble_accuracy([logits["l1"], logits["unstructured"]], labels)
        rows.append(row)
    return rows


def cached(results: dict, name: str, ids: list[str], compute) -> None:
    """Recompute ``results[name]`` only when the runs it covers changed; keep the cached numbers when
    the checkpoints they need are gone."""
    entry = results.get(name)
    if entry and entry.get("runs") == ids:
        return
    try:
        results[name] = {"runs": ids, "rows": compute()}
    except FileNotFoundError as e:
        if entry is None:
            raise
        warnings.warn(f"{name}: kept the cached numbers ({e})", stacklevel=1)


def analyze(root: Path, runs: pd.DataFrame, dense: pd.DataFrame, previous: dict,
            device: str | torch.device = "cpu") -> dict:
    """Every section for the runs of one training budget; ``previous``: this budget's earlier results."""
    masks = masks_of(root, runs)
    results = {
        "layers": {n: list(t.shape) for n, t in max(masks.values(), key=len).items()},
        "jaccard_to_l2": distance_table(masks, [(("l2", REWIND), (s, REWIND)) for s in STRUCTURES if s != "l2"]),
        "jaccard_to_l1_unstructured": distance_table(
            masks, [(("unstructured", REWIND), (s, REWIND)) for s in STRUCTURES if s != "unstructured"]),
        "rewind_vs": distance_table(masks, [((s, REWIND), (s, w)) for s in ("unstructured", "l1")
                                            for w in ("finetune", "sigma_sign")]),
        "emergent_structure": structure_table(masks),
    }
    for name in ("stability", "ensembles"):
        if name in previous:
            results[name] = previous[name]
    rewound = runs[runs.rewind_to == REWIND]
    cached(results, "stability", sorted(rewound.id) + sorted(dense.id), lambda: stability_table(root, runs, dense))
    cached(results, "ensembles", sorted(rewound.id), lambda: ensemble_table(root, runs, device))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="repro/runs")
    ap.add_argument("--out", default="repro/results/imp")
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--device", type=device_arg, default="cpu",
                    help="cpu, cuda, cuda:N or auto (default: cpu, where the stored results were computed)")
    args = ap.parse_args()
    root, out = Path(args.root), Path(args.out)
    all_runs = runs_table(root)
    runs = lottery_runs(all_runs, args.model)
    if runs.empty:
        raise SystemExit(f"no finished layer-wise lottery runs of {args.model} in {root}")
    path = out / "results.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    results = {}
    for train, part in runs.groupby("training.train"):
        dense = all_runs[(all_runs.kind == "dense") & (all_runs.model == args.model) & (all_runs.status == "done")
                         & (all_runs["training.train"] == train) & (all_runs.dataset == part.dataset.iloc[0])]
        results[train] = analyze(root, part, dense, previous.get(train, {}), args.device)
    atomic_write_json(path, results)
    print(f"wrote {path}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
