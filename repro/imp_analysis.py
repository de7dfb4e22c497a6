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
  channels (1 for a random mask; §4, Fig. 5, App. E);
- ``effective_sparsity``: per structure and level, the actual sparsity and the effective one, which also
  counts the kept weights disconnected from the output (App. B, Fig. 12);
- ``across_budgets`` (over all budgets, not per budget): per layer and level, the Jaccard distance between
  the L1-unstructured rewinding masks found with 1, 4 and 10 epochs of training per level, against that of
  two random masks of the same densities (App. C, Fig. 13).

From the trained weights (the runs' final checkpoints, which stay local and are not committed; the
numbers are cached in ``results.json`` and kept when the checkpoints are gone):
- ``stability``: per structure and layer, the mean ``|w_i - w_{i-1}|`` of the weights kept at
  consecutive levels, averaged over the levels, level 0 being the dense network (§5, Fig. 8);
- ``ensembles``: per level, the test accuracy of each structure's network and of the averaged
  softmax of the combinations of ``ENSEMBLES`` (App. D, Table 2);
- ``magnitudes``: per structure, level and layer, the mean and standard deviation of |w| of the kept
  weights at the end of training (§5: in fully connected layers they grow with sparsity).

``--checkpoints`` names the run store that holds the checkpoints when it is not ``--root`` (a rerun of some
runs elsewhere, e.g. ``/tmp/runs``; a run's id is the hash of its hyperparameters, so it is the same there). The
weights' sections read each run's mask from that store too: a rerun on another CPU type trains other bits and may
keep other weights.
Sections computed from checkpoints merge with the cached numbers: runs whose checkpoints are missing keep
theirs, and an accuracy recomputed from a rerun that differs from the cached one is reported.

Each training budget (``training.train``) and initialization (``model.init``) of the runs is analysed on its own:
results.json maps the budget ("1ep"; "30ep torch_default" for an initialization other than Kaiming normal) to the
sections above. ``--model lenet_pf --out repro/results/imp_lenet_pf`` analyses ``repro/07e_imp_pf_lenet.toml``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pandas as pd
import torch

from prunelab import Mask, analysis, data, models
from prunelab.experiments import runfiles
from prunelab.io import atomic_write_json
from prunelab.reports.tables import runs_table
from prunelab.training import load_checkpoint
from prunelab.training.checkpoints import CheckpointFolder
from prunelab.training.devices import device_arg

REWIND = "0it"
STRUCTURES = ["unstructured", "l1", "l2", "lneginf", "random", "random_unstructured", "hybrid", "fc_only"]
# Paganini & Forde 2020, Table 2: the ensemble of all eight and of "the three most promising techniques"
# (its last column), and L1 structured + L1 unstructured (§4).
ENSEMBLES = {
    "ensemble_all": STRUCTURES,
    "ensemble_hybrid_fc_us": ["hybrid", "fc_only", "unstructured"],
    "ensemble_l1_s_us": ["l1", "unstructured"],
}
BUDGET_PAIRS = [("1ep", "4ep"), ("1ep", "10ep"), ("4ep", "10ep")]
DEFAULT_INIT = "kaiming_normal"


def lottery_runs(df: pd.DataFrame, model: str) -> pd.DataFrame:
    """The finished layer-wise lottery runs of ``model`` in the run table ``df``."""
    if "structure" not in df.columns:
        return df.iloc[0:0]
    return df[(df.kind == "lottery") & (df.model == model) & (df.status == "done") & (df.scope == "layer")]


def masks_of(root: Path, rows: pd.DataFrame) -> dict[tuple, Mask]:
    """(structure, rewind_to, seed, level) -> mask."""
    return {(r.structure, r.rewind_to, int(r.seed), int(r.level)): mask_of(root, r.id)
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


def checkpoint_path(root: Path, run_id: str, steps: int) -> Path:
    """Where the run store at ``root`` keeps run ``run_id``'s weights at step ``steps``."""
    return CheckpointFolder(root / run_id / runfiles.CHECKPOINTS).path_for(int(steps))


def mask_of(root: Path, run_id: str) -> Mask:
    return Mask.load(root / run_id / runfiles.MASK)


def final_weights(root: Path, run_id: str, steps: int) -> dict[str, torch.Tensor]:
    path = checkpoint_path(root, run_id, steps)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (checkpoints are not committed: rerun the sweep to recreate it)")
    return load_checkpoint(path)["model"]


def has_weights(root: Path, run_id: str, steps: int) -> bool:
    return checkpoint_path(root, run_id, steps).is_file()


def stability_table(ckpts: Path, runs: pd.DataFrame, dense: pd.DataFrame, previous: list[dict]) -> list[dict]:
    """Per structure, seed, level and layer, the mean |w_i - w_(i-1)| of the weights kept at consecutive levels
    (Paganini & Forde 2020, §5), for each structure and seed whose dense and level checkpoints are all in
    ``ckpts``, merged into the ``previous`` rows."""
    rows = []
    for (structure, seed), part in runs[runs.rewind_to == REWIND].groupby(["structure", "seed"]):
        base = dense[dense.seed == seed]
        chain = list(base.itertuples())[:1] + list(part.itertuples())
        if base.empty or not all(has_weights(ckpts, r.id, r.steps) for r in chain):
            continue
        prev_state = final_weights(ckpts, base.iloc[0].id, base.iloc[0].steps)
        prev_mask = None
        for r in part.sort_values("level").itertuples():
            mask = mask_of(ckpts, r.id)  # the mask the checkpoint trained under
            state = final_weights(ckpts, r.id, r.steps)
            prev = prev_mask or Mask({n: torch.ones_like(t) for n, t in mask.items()})
            for layer, value in analysis.weight_stability(prev_state, state, prev, mask).items():
                rows.append({"structure": structure, "seed": int(seed), "level": int(r.level), "layer": layer,
                             "mean_abs_change": value})
            prev_state, prev_mask = state, mask
    if not rows:
        raise FileNotFoundError(f"no structure and seed with all its checkpoints under {ckpts}")
    return _merge(previous, rows, ("structure", "seed", "level", "layer"))


def _merge(previous: list[dict], new: list[dict], key: tuple[str, ...]) -> list[dict]:
    """``previous`` rows updated by the ``new`` rows of the same ``key`` values; new keys are added."""
    merged = {tuple(r[k] for k in key): dict(r) for r in previous}
    for r in new:
        merged.setdefault(tuple(r[k] for k in key), {}).update(r)
    return sorted(merged.values(), key=lambda r: tuple(r[k] for k in key))


def ensemble_table(ckpts: Path, runs: pd.DataFrame, previous: list[dict],
                   device: str | torch.device = "cpu") -> list[dict]:
    """Accuracy of each network whose final checkpoint is in ``ckpts`` and of each combination of ``ENSEMBLES``
    whose members all are, merged into the ``previous`` rows (a recomputed accuracy that differs from the
    cached one is warned about: the rerun did not reproduce the run)."""
    ds = data.load(runs.dataset.iloc[0], augment=False)
    batches = list(ds.loader("test", 1000, seed=0).epoch(0))
    labels = torch.cat([y for _, y in batches])
    cached_rows = {(r["seed"], r["level"]): r for r in previous}
    rows = []
    for (seed, level), part in runs[runs.rewind_to == REWIND].groupby(["seed", "level"]):
        logits = {}
        for r in part.itertuples():
            if not has_weights(ckpts, r.id, r.steps):
                continue
            net = models.create(r.model, num_classes=ds.num_classes, input_shape=ds.input_shape)
            net.load_state_dict(final_weights(ckpts, r.id, r.steps))
            logits[r.structure] = analysis.predictions(net, batches, device=device)
        row = {"seed": int(seed), "level": int(level)}
        row.update({s: analysis.accuracy(v, labels) for s, v in logits.items()})
        old = cached_rows.get((int(seed), int(level)), {})
        for s in logits:
            if s in old and abs(old[s] - row[s]) > 1e-12:
                warnings.warn(f"level {level} {s}: accuracy {row[s]:.4f} from {ckpts}, {old[s]:.4f} cached",
                              stacklevel=1)
        for name, members in ENSEMBLES.items():
            if set(members) <= set(logits):
                row[name] = analysis.ensemble_accuracy([logits[m] for m in members], labels)
        if len(row) > 2:
            rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no final checkpoint of these runs under {ckpts}")
    return _merge(previous, rows, ("seed", "level"))


def magnitude_table(ckpts: Path, runs: pd.DataFrame, dense: pd.DataFrame,
                    previous: list[dict]) -> list[dict]:
    """Mean and standard deviation of |w| over the kept weights at the end of training, per structure, level
    (0 = the dense network) and layer (Paganini & Forde 2020, §5)."""
    rows = []
    for (structure, seed), part in runs[runs.rewind_to == REWIND].groupby(["structure", "seed"]):
        base = dense[dense.seed == seed]
        levels = [(0, base.iloc[0].id, base.iloc[0].steps, None)] if len(base) else []
        levels += [(int(r.level), r.id, r.steps, mask_of(ckpts, r.id))
                   for r in part.sort_values("level").itertuples()]
        for level, run_id, steps, mask in levels:
            if not has_weights(ckpts, run_id, steps):
                continue
            state = final_weights(ckpts, run_id, steps)
            for layer in (mask if mask is not None else state):
                w = state[layer].double()
                if not layer.endswith("weight") or w.dim() < 2:
                    continue
                kept = w[mask[layer]] if mask is not None else w.flatten()
                rows.append({"structure": structure, "seed": int(seed), "level": level, "layer": layer,
                             "kept": int(kept.numel()), "mean_abs": float(kept.abs().mean()),
                             "std": float(kept.std())})
    if not rows:
        raise FileNotFoundError(f"no final checkpoint of these runs under {ckpts}")
    return _merge(previous, rows, ("structure", "seed", "level", "layer"))


def effective_table(runs: pd.DataFrame, masks: dict[tuple, Mask]) -> list[dict]:
    """Actual and effective sparsity of every mask (Paganini & Forde 2020, App. B)."""
    r = runs.iloc[0]
    meta = data.info(r.dataset)
    ds_shape = tuple(meta["input_shape"])
    model = models.create(r.model, num_classes=meta["num_classes"], input_shape=ds_shape)
    rows = []
    for (structure, rewind, seed, level), mask in masks.items():
        eff = analysis.effective_sparsity(model, mask, ds_shape)
        rows.append({"structure": structure, "rewind_to": rewind, "seed": seed, "level": level,
                     "actual": eff["actual"], "effective": eff["effective"]})
    return rows


def across_budgets(root: Path, runs: pd.DataFrame) -> list[dict]:
    """Per layer and level, the Jaccard distance between the L1-unstructured rewinding masks of two training
    budgets per level, and the expected distance of two independent random masks with the same kept counts
    (Paganini & Forde 2020, App. C)."""
    sel = runs[(runs.structure == "unstructured") & (runs.rewind_to == REWIND)]
    masks = {(r["training.train"], int(r.seed), int(r.level)): mask_of(root, r.id)
             for _, r in sel.iterrows()}
    rows = []
    for a, b in BUDGET_PAIRS:
        for (budget, seed, level), ma in masks.items():
            mb = masks.get((b, seed, level)) if budget == a else None
            if mb is None:
                continue
            for layer, sim in analysis.jaccard_per_layer(ma, mb).items():
                ka, kb, n = int(ma[layer].sum()), int(mb[layer].sum()), ma[layer].numel()
                # independent uniform masks: E|A and B| = ka kb / n, so J ~ that over |A or B|
                inter = ka * kb / n
                rows.append({"pair": f"{a} vs {b}", "seed": seed, "level": level, "layer": layer,
                             "distance": 1 - sim, "random": 1 - inter / (ka + kb - inter)})
    return rows


def cached(results: dict, name: str, key: list[str], compute) -> None:
    """Recompute ``results[name]`` only when what it covers (``key``: run ids, combinations) changed; keep the
    cached numbers when the checkpoints it needs are gone."""
    entry = results.get(name)
    if entry and entry.get("runs") == key:
        return
    try:
        results[name] = {"runs": key, "rows": compute()}
    except FileNotFoundError as e:
        if entry is None:
            warnings.warn(f"{name}: not computed ({e})", stacklevel=1)
        else:
            warnings.warn(f"{name}: kept the cached numbers ({e})", stacklevel=1)


def analyze(root: Path, ckpts: Path, runs: pd.DataFrame, dense: pd.DataFrame, previous: dict,
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
        "effective_sparsity": effective_table(runs, masks),
    }
    for name in ("stability", "ensembles", "magnitudes"):
        if name in previous:
            results[name] = previous[name]
    rewound = runs[runs.rewind_to == REWIND]
    ids = sorted(rewound.id)
    old = lambda name: previous.get(name, {}).get("rows", [])  # noqa: E731
    cached(results, "stability", ids + sorted(dense.id) + [str(ckpts)],
           lambda: stability_table(ckpts, runs, dense, old("stability")))
    cached(results, "ensembles", ids + sorted(ENSEMBLES) + [str(ckpts)],
           lambda: ensemble_table(ckpts, runs, old("ensembles"), device))
    cached(results, "magnitudes", ids + sorted(dense.id) + [str(ckpts)],
           lambda: magnitude_table(ckpts, runs, dense, old("magnitudes")))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="repro/runs")
    ap.add_argument("--out", default="repro/results/imp")
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--device", type=device_arg, default="cpu",
                    help="cpu, cuda, cuda:N or auto (default: cpu, where the stored results were computed)")
    ap.add_argument("--checkpoints", help="run store holding the runs' checkpoints (default: --root)")
    args = ap.parse_args()
    root, out = Path(args.root), Path(args.out)
    ckpts = Path(args.checkpoints) if args.checkpoints else root
    all_runs = runs_table(root)
    runs = lottery_runs(all_runs, args.model)
    if runs.empty:
        raise SystemExit(f"no finished layer-wise lottery runs of {args.model} in {root}")
    path = out / "results.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    results = {}
    for (train, init), part in runs.groupby(["training.train", "model.init"]):
        dense = all_runs[(all_runs.kind == "dense") & (all_runs.model == args.model) & (all_runs.status == "done")
                         & (all_runs["training.train"] == train) & (all_runs["model.init"] == init)
                         & (all_runs.dataset == part.dataset.iloc[0])]
        key = train if init == DEFAULT_INIT else f"{train} {init}"  # the default keeps the keys of earlier results
        results[key] = analyze(root, ckpts, part, dense, previous.get(key, {}), args.device)
    results["across_budgets"] = across_budgets(root, runs[runs["model.init"] == DEFAULT_INIT])
    atomic_write_json(path, results)
    print(f"wrote {path}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
