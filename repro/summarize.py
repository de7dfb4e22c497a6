"""Markdown tables of the reproduction results, from the committed run store and result files.

    python repro/summarize.py [--root repro/runs] > repro/results/summary.md

It writes Markdown to standard output and nothing else: one table per family, the tables that docs/results.md
pastes under "Generated tables" (its "##" headings become "###" there). The claims table above them is not this
script's: ``python repro/claims.py`` writes it. Means and sample standard deviations (ddof 1) over seeds;
accuracies in %.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
from imp_analysis import ENSEMBLES, lottery_runs  # repro/imp_analysis.py, next to this script

from prunelab.experiments import runfiles
from prunelab.reports.tables import aggregate, of_protocol, read_metrics, runs_table


def pct(mean, std=None) -> str:
    if pd.isna(mean):
        return "-"
    return f"{100 * mean:.2f}" + ("" if std is None or pd.isna(std) else f" ± {100 * std:.2f}")


def table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in body]
    return "\n".join(lines)


def script_results(results: Path, folder: str) -> dict | None:
    """``<results>/<folder>/results.json`` written by one of the repro scripts, or None before it ran."""
    path = results / folder / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


# The 10-epoch LeNet runs of families 2-4 under the converging step schedule (repro/02e_dense_step.toml: lr 0.1
# dropped 10x at 5 and 7.5 epochs, Frankle et al. 2021, App. A.3's CIFAR drops at 1/2 and 3/4 of training); the
# constant-rate runs of App. A.3's LeNet recipe keep their tables, these get their own.
STEP_MILESTONES = "5ep 7ep235it"
STEP_TITLE = ", step schedule (lr ÷10 at 5 and 7.5 epochs)"


def by_schedule(df: pd.DataFrame, step: bool) -> pd.DataFrame:
    """The runs under the step schedule (``step``) or every other run."""
    on_step = df["training.milestones"] == STEP_MILESTONES
    return df[on_step] if step else df[~on_step]


def retitled(section: str, suffix: str) -> str:
    """``section`` with ``suffix`` added to its first line, its heading."""
    if not section:
        return section
    head, _, rest = section.partition("\n")
    return head + suffix + "\n" + rest


def dense_stats(df: pd.DataFrame, model: str, train: str) -> tuple[float, float, int]:
    d = df[of_protocol(df, "train") & (df.model == model) & (df["training.train"] == train) & (df.status == "done")]
    return d.test_accuracy.mean(), d.test_accuracy.std(), len(d)


RECIPES = {  # the two LeNet recipes of family 1, as (momentum, batch size, weight decay)
    "Lee et al. 2019": (0.9, 100, 5e-4),  # §5: momentum 0.9, batch 100, weight decay 5e-4, LR drops
    "Frankle et al. 2021": (0.0, 128, 0.0),  # App. A.3: plain SGD, batch 128
}


def recipe(r) -> str | None:
    """Which paper's training recipe a LeNet run follows (:data:`RECIPES`), or None for another one."""
    key = (r["training.momentum"], r["training.batch_size"], r["training.weight_decay"])
    return next((name for name, values in RECIPES.items() if values == key), None)


def true_labels(df: pd.DataFrame) -> pd.Series:
    """Runs trained on the true labels (not Lee et al. 2019, §5.6's random ones)."""
    return df["dataset.random_labels"].fillna(0) == 0 if "dataset.random_labels" in df else pd.Series(True, df.index)


def family1(df: pd.DataFrame) -> str:
    out = ["## Family 1: SNIP at initialization (Lee et al. 2019, Table 1 analogue, Fashion-MNIST)\n",
           "Error of SNIP-pruned networks against the dense network of the same setting and seed; "
           "mean ± standard deviation over seeds where there are several.\n\n"]
    rows = [["network", "recipe", "sparsity", "error %", "dense error %", "error change (points)", "seeds"]]
    done = df[(df.status == "done") & true_labels(df) & df.apply(recipe, axis=1).notna()]
    snip = done[of_protocol(done, "run") & (done.method == "snip") & (done.prune_at == "0it") & done.ablation.isna()
                & done.sparsity_target.isin([0.9, 0.95, 0.98, 0.99]) & (done.batch_per_class == 10)
                & (done["training.train"] != LEE_FIRST_STEPS)]
    for (model, setting), part in snip.groupby(["model", "setting"]):
        dense = done[of_protocol(done, "train") & (done.setting == setting)].set_index("seed").test_accuracy
        for target, runs in part.groupby("sparsity_target"):
            runs = runs[runs.seed.isin(dense.index)]
            if runs.empty:
                continue
            err, base = 1 - runs.test_accuracy.values, 1 - dense.loc[runs.seed].values
            change = pd.Series(100 * (err - base))
            first = runs.iloc[0]
            extra = ("" if first["model.init"] == "kaiming_normal" else f", from `{first['model.init']}`") + (
                "" if first["training.warmup"] == "0it" else f", warm-up {first['training.warmup']}")
            rows.append([model, f"{recipe(first)}, {first['training.train']}{extra}", f"{target:.0%}",
                         pct(err.mean(), pd.Series(err).std()),
                         pct(base.mean(), pd.Series(base).std()),
                         f"{change.mean():+.2f}" + ("" if len(change) < 2 else f" ± {change.std():.2f}"),
                         str(len(runs))])
    return "\n".join(out) + table(rows) + "\n"


LEE_FIRST_STEPS = "2000it"  # 01k: the first steps of Lee et al.'s recipe on LeNet-5-Caffe
AT_CHANCE = 2.2  # a final training loss above this (chance: ln 10 = 2.303): the network learned nothing


def _train_losses(root: str, run_id: str) -> list[float]:
    """The training loss of each evaluation interval of a run, in order (its metrics.jsonl)."""
    return [r["train_loss"] for r in read_metrics(Path(root) / run_id / runfiles.METRICS) if "train_loss" in r]


def family1_first_steps(df: pd.DataFrame, root: str) -> str:
    """Why 01j warms up: the first 2,000 steps of Lee et al. 2019's recipe (learning rate 0.1, momentum 0.9) on
    LeNet-5-Caffe from Kaiming normal and from VS-X, without and with a 1,000-step warm-up, dense and SNIP at 99%:
    the training loss of the first and the last 100 steps, the test accuracy at step 2,000, and how many seeds end
    at chance."""
    sel = df[(df.status == "done") & (df["training.train"] == LEE_FIRST_STEPS) & true_labels(df)
             & (df.apply(recipe, axis=1) == "Lee et al. 2019") & of_protocol(df, "train", "run")]
    if sel.empty:
        return ""
    rows = [["network", "initialization", "warm-up", "sparsity", "training loss, steps 1-100",
             "training loss, last 100 steps", "test accuracy %", "seeds at chance", "seeds"]]
    sel = sel.assign(sparsity_target=sel.sparsity_target.fillna(0.0))
    for (model, init, warmup, target), part in sel.groupby(["model", "model.init", "training.warmup",
                                                            "sparsity_target"]):
        losses = pd.DataFrame([_train_losses(root, i) for i in part.id])
        first, last = losses.iloc[:, 0], losses.iloc[:, -1]
        rows.append([model, f"`{init}`", warmup, f"{target:.0%}", f"{first.mean():.3g} ± {first.std():.2g}",
                     f"{last.mean():.3f} ± {last.std():.3f}", pct(part.test_accuracy.mean(), part.test_accuracy.std()),
                     str(int((last > AT_CHANCE).sum())), str(len(part))])
    return ("## Family 1: the first steps of Lee et al.'s recipe on LeNet-5-Caffe\n\n"
            "2,000 steps of SGD at learning rate 0.1 with momentum 0.9, weight decay 5e-4, batch 100, Fashion-MNIST, "
            "from prunelab's default initialization and from VS-X, without and with a linear warm-up over the first "
            "1,000 steps (spec `repro/01k_lee_recipe_lenet5_init.toml`). A seed is at chance when its training loss "
            f"over the last 100 steps is above {AT_CHANCE} (ln 10 = 2.303).\n\n" + table(rows) + "\n")


def family1_batch(df: pd.DataFrame, root: str) -> str:
    """Effect of the scoring batch size (Lee et al. 2019, §5.5, Fig. 3): SNIP at 90% on LeNet-300-100 under Lee et
    al.'s recipe, error and how closely the first layer's kept connections per pixel follow the mean training
    image (Pearson correlation; Lee et al.: "survived parameters get close to the average of all examples")."""
    from first_layer_maps import correlation, kept_per_pixel, mean_training_image  # repro/first_layer_maps.py

    done = df[(df.status == "done") & (df.model == "lenet_300_100") & (df["training.train"] == "50000it")
              & true_labels(df) & (df.apply(recipe, axis=1) == "Lee et al. 2019")]
    snip = done[of_protocol(done, "run") & (done.method == "snip") & (done.sparsity_target == 0.9)
                & done.ablation.isna()]
    if snip.batch_per_class.nunique() < 2:
        return ""
    dense = done[of_protocol(done, "train")].set_index("seed").test_accuracy
    mean_image = mean_training_image("fashion_mnist")
    snip = snip[snip.seed.isin(dense.index)]
    # kept first-layer connections per input pixel, per (examples per class, seed)
    maps = {(r.batch_per_class, r.seed): kept_per_pixel(root, r.id) for r in snip.itertuples()}
    largest = snip.batch_per_class.max()
    corr = correlation

    rows = [["examples scored (per class)", "error %", "error change (points)", "corr. of kept inputs with mean image",
             f"corr. with the {10 * largest:,}-example map", "seeds"]]
    for per_class, runs in snip.groupby("batch_per_class"):
        err = 100 * (1 - runs.test_accuracy)
        change = pd.Series(100 * (dense.loc[runs.seed].values - runs.test_accuracy.values))  # sample sd, as elsewhere
        to_mean = pd.Series([corr(maps[per_class, seed], mean_image) for seed in runs.seed])
        to_largest = pd.Series([corr(maps[per_class, seed], maps[largest, seed]) for seed in runs.seed
                                if (largest, seed) in maps])
        rows.append([f"{10 * per_class:,} ({per_class})", f"{err.mean():.2f} ± {err.std():.2f}",
                     f"{change.mean():+.2f} ± {change.std():.2f}", f"{to_mean.mean():.3f} ± {to_mean.std():.3f}",
                     f"{to_largest.mean():.3f} ± {to_largest.std():.3f}", str(len(runs))])
    return ("## Family 1: examples SNIP scores on (Lee et al. 2019, §5.5, Fig. 3)\n\n"
            "LeNet-300-100 at 90% sparsity, Lee et al.'s recipe (spec `repro/01f_snip_batch_size.toml`), "
            "Fashion-MNIST; error change against the dense network of the same seed.\n\n" + table(rows) + "\n")


LEE_INITS = [("standard_normal", "RN"), ("truncated_normal", "TN"), ("xavier_normal", "VS-X"),
             ("kaiming_normal", "VS-H")]


def family1_init(df: pd.DataFrame, root: str) -> str:
    """Effect of the initialization the mask is found at (Lee et al. 2019, §5.5, Table 3): SNIP at 90%, every
    pruned network trained from fresh Glorot (VS-X) weights with Adam; with the mask's density per layer (mean
    over seeds), which the initialization's per-layer scales could shift."""
    from prunelab import Mask

    if "pruning.reinit_init" not in df.columns:
        return ""
    runs = df[(df.status == "done") & of_protocol(df, "run") & (df["pruning.reinit_init"] == "xavier_normal")]
    if runs.empty:
        return ""
    rows = [["network", "initialization", "test error %", "kept per layer %", "seeds"]]
    order = {init: k for k, (init, _) in enumerate(LEE_INITS)}
    groups = sorted(runs.groupby(["model", "model.init"]), key=lambda g: (g[0][0], order.get(g[0][1], len(order))))
    for (model, init), part in groups:
        label = dict(LEE_INITS).get(init, init)
        density = pd.DataFrame([Mask.load(Path(root) / i / runfiles.MASK).layer_density() for i in part.id]).mean()
        err = 100 * (1 - part.test_accuracy)
        rows.append([model, f"{label} (`{init}`)", f"{err.mean():.2f} ± {err.std():.2f}",
                     " / ".join(f"{100 * d:.1f}" for d in density), str(len(part))])
    return ("## Family 1: the initialization SNIP prunes at (Lee et al. 2019, §5.5, Table 3)\n\n"
            "Test error at 90% sparsity, mask scored at each initialization, the pruned network trained from "
            "fresh Glorot (VS-X) weights, Adam at 0.001 for 10k iterations (spec `repro/01e_snip_init.toml`).\n\n"
            + table(rows) + "\n")


def _final_train_loss(root: str, run_id: str) -> float:
    """Mean training loss over the last evaluation interval of a run (its metrics.jsonl)."""
    return _train_losses(root, run_id)[-1]


RANDOM_LABEL_SCHEDULES = {"50000it": "all", "300ep": 2000}  # 01g: whole training set; 01h, 01i: 2,000 examples


def family1_random_labels(df: pd.DataFrame, root: str) -> str:
    """Fitting random labels (Lee et al. 2019, §5.6, Fig. 4, App. B): final training loss and test accuracy of
    the dense network and SNIP-pruned ones, on the true and on random training labels, on the whole training
    set and on the 2,000-example subset."""
    if "dataset.random_labels" not in df.columns:
        return ""
    examples = (df["dataset.train_examples"] if "dataset.train_examples" in df else pd.Series(None, df.index))
    examples = examples.map(lambda n: "all" if pd.isna(n) else int(n))
    sel = df[(df.status == "done") & (df["training.train"].map(RANDOM_LABEL_SCHEDULES) == examples)
             & (df["training.weight_decay"] == 0) & (df["training.momentum"] == 0.9)
             & of_protocol(df, "train", "run")]
    sel = sel.assign(labels=sel["dataset.random_labels"].fillna(0.0).map(lambda f: f"{f:.0%} random"),
                     sparsity_target=sel.sparsity_target.fillna(0.0), examples=examples[sel.index].astype(str))
    if (sel["labels"] != "0% random").sum() == 0:
        return ""
    rows = [["training examples", "network", "sparsity", "training labels", "final training loss", "test accuracy %",
             "seeds"]]
    for (n, model, target, labels), part in sel.groupby(["examples", "model", "sparsity_target", "labels"]):
        loss = pd.Series([_final_train_loss(root, i) for i in part.id])
        rows.append([n if n == "all" else f"{int(n):,}", model, f"{target:.0%}", labels,
                     f"{loss.mean():.3f} ± {loss.std():.3f}", pct(part.test_accuracy.mean(), part.test_accuracy.std()),
                     str(len(part))])
    return ("## Family 1: fitting random labels (Lee et al. 2019, §5.6, Fig. 4, App. B)\n\n"
            "All training examples: Lee et al.'s recipe without weight decay, 50k iterations "
            "(spec `repro/01g_snip_random_labels.toml`). 2,000 examples (a fixed random subset, the same for every "
            "seed; the test set whole): SGD with momentum 0.9 at 0.01, 300 epochs (specs "
            "`repro/01h_snip_random_labels_subset.toml`, `repro/01i_snip_random_labels_subset_lenet5.toml`). "
            "SNIP scores with the true labels; training loss on the labels trained on, averaged over the last "
            "epoch (chance: ln 10 = 2.303).\n\n" + table(rows) + "\n")


def family2(df: pd.DataFrame) -> str:
    out = ["## Family 2: criteria at initialization vs. after training (Frankle et al. 2021, Fig. 3, App. K)\n"]
    sel = df[(df.model == "lenet_300_100") & (df["training.train"] == "10ep") & (df.status == "done")]
    # the criteria's own layer densities: random at ERK or at SynFlow's densities is family 14's
    init = sel[of_protocol(sel, "run") & (sel.prune_at == "0it") & sel.ablation.isna() & sel.distribution.isna()
               & sel.like.isna()]
    after = sel[of_protocol(sel, "run") & (sel.prune_at == "end") & sel.ablation.isna()]
    ltr = sel[of_protocol(sel, "lottery") & (sel.rewind_to == "0it") & (sel.level == 1)
              & sel.structure.eq("unstructured")]
    dense, dense_std, n = dense_stats(df, "lenet_300_100", "10ep")
    if n == 0:
        return ""
    curves = {}
    for method, part in init.groupby("method"):
        curves[method] = aggregate(part, by=["sparsity_target"])
    for method, part in after.groupby("method"):  # magnitude, and LAMP (Lee et al. 2021) where it ran
        curves[f"{method} after training"] = aggregate(part, by=["sparsity_target"])
    if len(ltr):
        ltr = ltr.assign(sparsity_target=ltr.rate)
        curves["LTR (rewind to 0)"] = aggregate(ltr, by=["sparsity_target"])
    targets = sorted({t for c in curves.values() for t in c.sparsity_target})
    rows = [["criterion"] + [f"{t:.1%}" for t in targets] + ["highest matching"]]
    for name, agg in curves.items():
        by = {r.sparsity_target: r for _, r in agg.iterrows()}
        cells = [f"{pct(by[t].test_accuracy_mean, by[t].test_accuracy_std)} (n={int(by[t]['count'])})"
                 if t in by else "-" for t in targets]
        matching = [t for t in targets if t in by and by[t].test_accuracy_mean >= dense - dense_std]
        partial = "" if len(by) == len(targets) else " (of those run)"
        rows.append([name] + cells + [(f"{max(matching):.1%}" if matching else "none") + partial])
    out.append(f"Dense LeNet-300-100, 10 epochs: {pct(dense, dense_std)} (n={n}); 'matching' = mean accuracy within "
               "one standard deviation of dense.\n")
    return "\n".join(out) + "\n" + table(rows) + "\n"


ABLATIONS = ["unmodified", "shuffle", "reinit", "invert", "fixed_variance"]


def _ablation_rows(sel: pd.DataFrame, ablated_only: bool) -> list[list[str]]:
    """One row per (criterion, when pruned, sparsity) of ``sel``: accuracy unmodified and under each ablation of
    Frankle et al. 2021, §5, mean ± sd over seeds; ``ablated_only`` leaves out criteria that were never ablated."""
    sel = sel.assign(ablation=sel.ablation.fillna("unmodified"), when=sel.prune_at.map({"0it": "init", "end": "after"}))
    groups = sel[sel.ablation != "unmodified"] if ablated_only else sel
    present = [a for a in ABLATIONS if a in set(sel.ablation)]
    rows = [["criterion", "pruned", "sparsity"] + present]
    for method, when, target in groups.groupby(["method", "when", "sparsity_target"]).groups:
        base = sel[(sel.method == method) & (sel.when == when) & (sel.sparsity_target == target)]
        agg = {a: p.test_accuracy for a, p in base.groupby("ablation")}
        rows.append([method, when, f"{target:.1%}"] + [
            f"{pct(agg[a].mean(), agg[a].std())} (n={len(agg[a])})" if a in agg else "-" for a in present])
    return rows


def family3(df: pd.DataFrame) -> str:
    """Ablations at initialization and after training (Frankle et al. 2021, §5 Fig. 4, App. F)."""
    sel = df[of_protocol(df, "run") & (df.model == "lenet_300_100") & (df["training.train"] == "10ep")
             & (df.status == "done") & df.sparsity_target.isin([0.737856, 0.931280523, 0.981985201])]
    if sel.ablation.isna().all():
        return ""
    return ("## Family 3: ablations at initialization and after training (Frankle et al. 2021, §5 Fig. 4, App. F)\n\n"
            + table(_ablation_rows(sel, ablated_only=True)) + "\n")


VIT_TRAIN = "5ep"  # repro/16a_vit_at_init.toml, 16b_vit_ablations.toml and 16c_vit_after_training.toml


def _vit(df: pd.DataFrame) -> pd.DataFrame:
    """The done family-16 runs: vit_tiny on Fashion-MNIST with the specs' 5-epoch recipe."""
    return df[(df.model == "vit_tiny") & (df.dataset == "fashion_mnist") & (df["training.train"] == VIT_TRAIN)
              & (df.status == "done")]


def family16(df: pd.DataFrame) -> str:
    """Ours: the methods at initialization, Frankle et al. 2021's §5 ablations and magnitude pruning after training
    (their §4 reference) on a small vision transformer."""
    vit = _vit(df)
    sel = vit[of_protocol(vit, "run") & vit.prune_at.isin(["0it", "end"]) & vit.distribution.isna() & vit.like.isna()]
    if sel.empty:
        return ""
    dense = vit[of_protocol(vit, "train")].test_accuracy
    return ("## Family 16 (ours): methods at initialization and their ablations on a vision transformer\n\n"
            f"vit_tiny on Fashion-MNIST, {VIT_TRAIN.removesuffix('ep')} epochs of AdamW (warm-up 1 epoch, LR drops "
            f"at 70% and 90% of training). Dense: {pct(dense.mean(), dense.std())} "
            f"(n={len(dense)}).\n\n" + table(_ablation_rows(sel, ablated_only=False)) + "\n")


VIT_GROUPS = ["patch embedding", "queries and keys", "values", "attention output", "MLP", "head"]


def _vit_parts(mask):
    """(kind, keep) for every part of a vit_tiny mask: each masked tensor, with the fused input projection of
    each attention layer split into its queries, its keys and its values by the layer rule
    (:func:`prunelab.coverage.split_fused`)."""
    from prunelab.coverage import split_fused

    for name, keep in mask.items():
        parts = split_fused(keep, name)
        if parts is not None:
            yield from (("queries and keys", parts["query"]), ("queries and keys", parts["key"]),
                        ("values", parts["value"]))
        elif ".out_proj." in name:
            yield "attention output", keep
        elif ".linear1." in name or ".linear2." in name:
            yield "MLP", keep
        elif name.startswith("patches."):
            yield "patch embedding", keep
        elif name.startswith("head."):
            yield "head", keep
        else:
            raise ValueError(f"family 16: no kind for the masked tensor {name}")


def _vit_groups(mask) -> tuple[dict[str, tuple[int, int]], int, int]:
    """(kept, total) of a vit_tiny mask per kind of weight (:data:`VIT_GROUPS`), and how many of its parts
    (:func:`_vit_parts`) keep no weight, out of how many."""
    counts = {g: [0, 0] for g in VIT_GROUPS}
    empty = parts = 0
    for group, keep in _vit_parts(mask):
        kept = int(keep.sum())
        counts[group][0] += kept
        counts[group][1] += keep.numel()
        empty += kept == 0
        parts += 1
    return {g: (k, t) for g, (k, t) in counts.items() if t}, empty, parts


def family16_layers(df: pd.DataFrame, root: str) -> str:
    """Ours: where each criterion at initialization puts the kept weights of vit_tiny (the unmodified masks of
    family 16), mean over seeds."""
    from prunelab import Mask

    vit = _vit(df)
    sel = vit[of_protocol(vit, "run") & (vit.prune_at == "0it") & vit.ablation.isna() & vit.distribution.isna()
              & vit.like.isna()]
    if sel.empty:
        return ""
    groups = {i: _vit_groups(Mask.load(Path(root) / i / runfiles.MASK)) for i in sel.id}
    totals, _, parts = next(iter(groups.values()))
    rows = [["criterion", "sparsity"] + [f"{g} ({t:,} weights)" for g, (_, t) in totals.items()]
            + [f"parts with nothing kept (of {parts} per seed)"]]
    for (method, target), runs in sel.groupby(["method", "sparsity_target"]):
        densities = pd.DataFrame([{g: k / t for g, (k, t) in groups[i][0].items()} for i in runs.id])
        empty = [groups[i][1] for i in runs.id]
        rows.append([method, f"{target:.1%}"] + [f"{d:.2%}" for d in densities.mean()]
                    + [" / ".join(map(str, empty))])
    return ("## Family 16 (ours): kept share of each kind of vit_tiny weight at initialization\n\n"
            "Mean over seeds of the kept fraction per kind of weight (queries and keys are the first two thirds of "
            "each attention layer's fused input projection, values the last third). The last column counts, per "
            "seed, the parts left with no weight: every masked tensor, with each attention layer's queries, keys "
            "and values apart.\n\n" + table(rows) + "\n")


def family16_synflow_scores(df: pd.DataFrame) -> str:
    """Ours: SynFlow's scores (Tanaka et al. 2020, Alg. 1, the first iteration) of vit_tiny at initialization, per
    weight of each attention projection: why SynFlow empties the queries and keys (no training; a few seconds)."""
    import prunelab
    from prunelab import models
    from prunelab.coverage import split_fused

    seeds = sorted(_vit(df).seed.unique())
    if not seeds:
        return ""
    rows = [["initialization seed", "layer", "queries", "keys", "values", "attention output", "values / queries",
             "values / keys"]]
    for seed in seeds:
        model = models.create("vit_tiny", num_classes=10, input_shape=(1, 28, 28), seed=int(seed))
        scores = prunelab.score(model, "synflow", input_shape=(1, 28, 28))
        for layer in range(len(model.encoder.layers)):
            name = f"encoder.layers.{layer}.self_attn"
            parts = split_fused(scores[f"{name}.in_proj_weight"], "in_proj_weight", model.get_submodule(name))
            q, k, v = (float(parts[p].mean()) for p in ("query", "key", "value"))
            out = float(scores[f"{name}.out_proj.weight"].mean())
            rows.append([int(seed), layer] + [f"{x:.2e}" for x in (q, k, v, out)] + [f"{v / q:.0f}x", f"{v / k:.0f}x"])
    return ("## Family 16 (ours): SynFlow's score per weight of vit_tiny's attention at initialization\n\n"
            "Mean SynFlow score (first iteration, all-ones input, absolute weights) per weight of each part of "
            "each attention layer, for networks drawn by `prunelab.models.create` with the family's seeds:\n\n"
            + table(rows) + "\n")


def family4(df: pd.DataFrame) -> str:
    """Pruning after initialization (Frankle et al. 2021, §6, Fig. 6): prune at step t, or LTR rewound to t,
    at one sparsity."""
    target = 0.931280523
    sel = df[(df.model == "lenet_300_100") & (df["training.train"] == "10ep") & (df.status == "done")]
    later = sel[of_protocol(sel, "run") & sel.ablation.isna() & (sel.sparsity_target == target)
                & ~sel.prune_at.isin(["end"]) & sel.distribution.isna() & sel.like.isna()]
    ltr = sel[of_protocol(sel, "lottery") & (sel.level == 1) & (sel.rate == target)
              & ~sel.rewind_to.isin(["finetune", "sign", "sigma_sign"])]
    if later.prune_at.nunique() < 2 and ltr.rewind_to.nunique() < 2:
        return ""
    steps = sorted(set(later.prune_at) | set(ltr.rewind_to), key=lambda s: int(s.removesuffix("it")))
    rows = [["criterion"] + [f"t = {s.removesuffix('it')}" for s in steps]]
    curves = [(m, p.set_index("prune_at").test_accuracy) for m, p in later.groupby("method")]
    curves.append(("LTR (rewind to t)", ltr.set_index("rewind_to").test_accuracy))
    for name, acc in curves:
        cells = []
        for s in steps:
            values = acc[acc.index == s]
            cells.append(f"{pct(values.mean(), values.std())} (n={len(values)})" if len(values) else "-")
        rows.append([name] + cells)
    dense, dense_std, n = dense_stats(df, "lenet_300_100", "10ep")
    return (f"## Family 4: pruning after initialization at {target:.1%} sparsity (Frankle et al. 2021, §6, Fig. 6)\n\n"
            "LeNet-300-100, 10 epochs (4690 steps). A criterion prunes the dense network at step t and the "
            "pruned network trains a whole schedule from the weights at t (Frankle et al. 2021, §6); "
            "LTR keeps the weights at t "
            "under the after-training magnitude mask and trains from t to the end (Frankle et al. 2021, §4). "
            f"Dense: {pct(dense, dense_std)} (n={n}).\n\n" + table(rows) + "\n")


VARIANTS = [("synflow_1it", "SynFlow, 1 iteration"), ("snip_b10", "SNIP, 10 inputs"),
            ("iterative_snip_b10", "iterative SNIP, 10 inputs, 100 iterations")]


def _loglog_fit(sizes: list[float], values: list[float]) -> tuple[float, float]:
    """Slope and correlation of log10(values) against log10(sizes), by least squares."""
    x = pd.Series(sizes, dtype=float).map(math.log10)
    y = pd.Series(values, dtype=float).map(math.log10)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    return float(slope), float(x.corr(y))


def family1_class_masks(results: Path) -> str:
    """SNIP's first-layer masks scored on one class against the classes' mean images (Lee et al. 2019, Fig. 2)."""
    data = script_results(results, "snip_class_masks")
    if data is None:
        return ""
    rows = [["sparsity", "mask", "correlation with own class", "with the other classes", "own class best of 10"]]
    for sparsity, entry in data["results"].items():
        for mask in ("snip", "random"):
            e = entry[mask]
            rows.append([f"{float(sparsity):.0%}", mask, f"{e['own']:.3f}", f"{e['others']:.3f}", str(e["own_best"])])
    return ("## Family 1: first-layer masks scored on one class (Lee et al. 2019, §5.4, Fig. 2)\n\n"
            f"LeNet-300-100 at initialization (seed 0), SNIP on {data['per_class']} training images of one "
            "Fashion-MNIST class; Pearson correlation of the kept first-layer connections per input pixel with "
            "each class's mean test image, averaged over the 10 classes (`repro/snip_class_masks.py`).\n\n"
            + table(rows) + "\n")


def family5(results: Path) -> str:
    data = script_results(results, "layer_collapse")
    if data is None:
        return ""
    methods = ["random", "magnitude", "snip", "grasp", "synflow"]
    rows = [["network", "max compression N/L"] + methods + [label for _, label in VARIANTS]]
    for net, entry in data.items():
        rows.append([net, f"{entry['max_compression']:.4g}"] +
                    [f"{entry[f'critical/{m}']:.4g}" if f"critical/{m}" in entry else "-"
                     for m in methods + [k for k, _ in VARIANTS]])
    cons = [["network", "conservation exact?", "max relative error (neuron in vs out)"]]
    for net, entry in data.items():
        if "conservation" in entry:
            c = entry["conservation"]
            cons.append([net, "yes" if c["exact"] else "approximate", f"{c['max_relative_error']:.2e}"])
    sizes = [["network", "criterion", "layers", "slope of log mean abs(score) on log size", "correlation",
              "largest / smallest abs(layer total)"]]
    for net, entry in data.items():
        for key in sorted(k for k in entry if k.startswith("layer_scores/")):
            layers = entry[key].values()  # [size, total, total |score|]
            mean_abs = [a / n for n, _, a in layers]
            slope, corr = _loglog_fit([n for n, _, _ in layers], mean_abs)
            totals = [abs(t) for _, t, _ in layers]
            sizes.append([net, key.split("/")[1], len(totals), f"{slope:.2f}", f"{corr:.3f}",
                          f"{max(totals) / min(totals):.3g}" if min(totals) > 0 else "inf"])
    return ("## Family 5: layer collapse and conservation at initialization (Tanaka et al. 2020, Figs. 1-4, 7)\n\n"
            "Critical compression (largest compression without an empty layer; bisection, 12% tolerance). The last "
            "three columns ablate iteration (Tanaka et al. 2020, §5-6, Fig. 7): SynFlow scored once instead of over "
            "100 iterations, and SNIP one-shot against iterative SNIP over 100 iterations, both on 10 Gaussian inputs "
            "(one per class) instead of 100:\n\n"
            + table(rows) + "\n\n" + table(cons) + "\n\n"
            "Layer size against score at initialization (Tanaka et al. 2020, Thm. 2, Fig. 4): a slope of -1 means the "
            "average score of a layer is inversely proportional to its size, i.e. every layer has the same total "
            "score (exact for SynFlow where each layer separates input from output). SNIP and GraSP on 100 Gaussian "
            "inputs; GraSP's total is its absolute value (Tanaka et al. 2020, footnote 4):\n\n" + table(sizes) + "\n")


def _seed_label(entry: dict) -> str:
    """A seed of repro/conservation_training.py, marked when its checkpoints come from a rerun."""
    return f"{entry['seed']} (rerun)" if entry.get("recreated") else str(entry["seed"])


def family5_training(results: Path) -> str:
    """Conservation of the squared weights under training (Tanaka et al. 2020, §5, Fig. 5b), from
    ``repro/conservation_training.py``."""
    data = script_results(results, "conservation_training")
    if not data:
        return ""
    rows = [["network", "seed", "layer", "size", "sum w² at init", "after training",
             "change of sum w² + sum b²", "change of the next layer's sum w²"]]
    fits = [["network", "seed", "slope of log mean w² on log size: init", "after training",
             "largest / smallest sum w²: init", "after training"]]
    for entry in sorted(data.values(), key=lambda e: (e["model"], e["seed"])):
        layers = list(entry["layers"].items())
        for i, (name, e) in enumerate(layers):
            change = e["end"][0] + e["end"][1] - e["init"][0] - e["init"][1]
            nxt = layers[i + 1][1] if i + 1 < len(layers) else None
            rows.append([entry["model"], _seed_label(entry), name, e["size"], f"{e['init'][0]:.1f}",
                         f"{e['end'][0]:.1f}", f"{change:+.1f}",
                         "-" if nxt is None else f"{nxt['end'][0] - nxt['init'][0]:+.1f}"])
        sizes = [e["size"] for _, e in layers]
        cells = []
        for when in ("init", "end"):
            cells.append(f"{_loglog_fit(sizes, [e[when][0] / e['size'] for _, e in layers])[0]:.2f}")
        spread = [max(t) / min(t) for t in ([e[w][0] for _, e in layers] for w in ("init", "end"))]
        fits.append([entry["model"], _seed_label(entry), *cells, *(f"{x:.1f}" for x in spread)])
    lr = {(e["lr"], e["momentum"]) for e in data.values()}
    return ("## Family 5, under training: conservation of the squared weights (Tanaka et al. 2020, §5, Fig. 5b)\n\n"
            "Dense networks of family 1/14 (Frankle et al. 2021's recipe, SGD with (lr, momentum) in "
            f"{sorted(lr)}, 10 epochs). Under gradient flow, the change of a layer's sum w² + sum b² equals the change "
            "of the next layer's sum w² (the last two columns); a slope of -1 means equal layer totals. "
            "\"(rerun)\": the run's checkpoints were lost and come from a rerun of the same settings on this "
            "machine's CPU type:\n\n"
            + table(rows) + "\n\n" + table(fits) + "\n")


def family6_convnets(results: Path) -> str:
    """Neuron collapse of the papers' convnets at their highest matching sparsity (Frankle et al. 2021, §5,
    Fig. 5), from
    ``repro/neuron_collapse_convnets.py``."""
    data = script_results(results, "neuron_collapse")
    if data is None:
        return ""
    methods = ["random", "magnitude", "snip", "grasp", "synflow", "synflow shuffled"]
    rows = [["network", "sparsity", "neurons"] + methods]
    for net, entry in data.items():
        some = next(e for e in entry.values() if isinstance(e, dict))
        rows.append([net, f"{entry['sparsity_target']:.1%}", some["neurons"]]
                    + [f"{entry[m]['dead']:.1%}" if m in entry else "-" for m in methods])
    return ("## Family 6: neuron collapse of convnets at initialization (Frankle et al. 2021, §5, Fig. 5)\n\n"
            "Neurons (output channels and units) whose incoming weights are all pruned, at Frankle et al. 2021's "
            "highest matching "
            "sparsity of each network; no training, SNIP and GraSP on Gaussian inputs.\n\n" + table(rows) + "\n")


def family6_shortcuts(results: Path) -> str:
    """How each criterion prunes the 1x1 shortcut convolutions of ResNets (Frankle et al. 2021, App. J, Fig. 15), from
    ``repro/shortcut_pruning.py``."""
    data = script_results(results, "shortcuts")
    if data is None:
        return ""
    rows = [["network", "sparsity", "criterion", "shortcut density (mean density of its block's convs)",
             "shortcuts emptied"]]
    for net, entries in data.items():
        order = data[net].get("setup", {}).get("layer_order")
        for key in sorted((k for k in entries if "/" in k), key=lambda k: (float(k.split("/")[1]), k)):
            method, sparsity = key.split("/")
            shortcuts = entries[key]["shortcuts"]
            names = [n for n in order if n in shortcuts] if order else sorted(shortcuts)
            cells = " ".join(f"{shortcuts[n]['density']:.2g} ({shortcuts[n]['adjacent_mean']:.2f})" for n in names)
            emptied = sum(shortcuts[n]["fully_pruned"] for n in names)
            rows.append([net, f"{float(sparsity):.1%}", method, cells, f"{emptied}/{len(names)}"])
    return ("## Family 6: pruning of the shortcut convolutions at initialization (Frankle et al. 2021, App. J, "
            "Fig. 15)\n\n"
            "No training; SNIP and GraSP score Gaussian inputs. Shortcuts in network order.\n\n" + table(rows) + "\n")


IMP_NETWORKS = [("lenet5", "LeNet-5-Caffe"), ("lenet_pf", "Paganini & Forde 2020's LeNet (6 -> 16 3x3 convolutions)")]
IMP_ANALYSES = [  # (title, folder of repro/imp_analysis.py's results)
    ("LeNet-5-Caffe", "imp"),
    ("LeNet-5-Caffe, unstructured / hybrid / fc-only rerun with checkpoints (repro/runs_recreated)", "imp_recreated"),
    (IMP_NETWORKS[1][1], "imp_lenet_pf"),
]


def family7(df: pd.DataFrame) -> str:
    out = []
    for model, name in IMP_NETWORKS:
        sel = lottery_runs(df, model)  # layer-wise IMP only: the one-shot lottery runs of families 2-4 are global
        if sel.empty:
            continue
        levels = range(1, int(sel.level.max()) + 1)
        rows = [["epochs per level", "initialization", "structure", "weights"] + [f"level {i}" for i in levels]]
        for (train, init, structure, rewind), part in sel.groupby(["training.train", "model.init", "structure",
                                                                    "rewind_to"]):
            cells = []
            for i in levels:
                at = part[part.level == i]
                cells.append(f"{pct(at.test_accuracy.mean(), at.test_accuracy.std())} @ {at.sparsity.mean():.1%}"
                             + (f" (n={len(at)})" if len(at) > 1 else "") if len(at) else "-")
            rows.append([train, init, structure, rewind] + cells)
        out.append(f"## Family 7: iterative pruning of {name} (Paganini & Forde 2020)\n\n"
                   "Test accuracy @ sparsity per level:\n\n" + table(rows) + "\n")
    return "\n".join(out)


def _by_level(rows: pd.DataFrame, index: list[str], value: str, fmt) -> list[list[str]]:
    """Mean over seeds (and whatever else is not in ``index``) of ``value``, one column per level."""
    levels = sorted(rows.level.unique())
    piv = rows.groupby(index + ["level"])[value].mean().unstack("level")
    out = [index + [f"level {int(lv)}" for lv in levels]]
    for key, r in piv.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        out.append(list(key) + [fmt(r[lv]) if lv in r and not pd.isna(r[lv]) else "-" for lv in levels])
    return out


def _dist(x: float) -> str:
    return f"{x:.3f}"


def _similarity(res: dict) -> list[str]:
    out = []
    to_l2 = pd.DataFrame(res["jaccard_to_l2"])
    if not to_l2.empty:
        out.append("Jaccard distance to the L2-structured mask, same seed and level, per layer "
                   "(Paganini & Forde 2020, Fig. 3):\n")
        out.append(table(_by_level(to_l2, ["other", "layer"], "distance", _dist)) + "\n")
    to_us = pd.DataFrame(res["jaccard_to_l1_unstructured"])
    convs = [n for n, shape in res["layers"].items() if len(shape) == 4]
    if not to_us.empty and len(convs) > 1:
        out.append(f"Jaccard distance of the second convolution ({convs[1]}) to the L1-unstructured mask "
                   "(Paganini & Forde 2020, Fig. 4):\n")
        out.append(table(_by_level(to_us[to_us.layer == convs[1]], ["other"], "distance", _dist)) + "\n")
    rv = pd.DataFrame(res["rewind_vs"])
    if not rv.empty:
        out.append("Jaccard distance between the masks found with rewinding and with finetuning or sigma*sign "
                   "reinitialization, same structure and seed, per layer (Paganini & Forde 2020, §4.1, App. A):\n")
        out.append(table(_by_level(rv, ["other", "layer"], "distance", _dist)) + "\n")
    return out


def _structure(res: dict) -> list[str]:
    es = pd.DataFrame(res["emergent_structure"])
    if es.empty:
        return []
    grouped = es.groupby(["structure", "rewind_to", "layer", "level"])[
        ["removed", "expected_random", "dispersion", "output_dispersion"]]
    cells, spread = grouped.mean(), grouped.std()
    seeds = es.seed.nunique()

    def value(lv, col):
        sd = f" ± {spread.loc[lv, col]:.1f}" if seeds > 1 else ""
        return f"{cells.loc[lv, col]:.1f}{sd}"

    levels = sorted(es.level.unique())
    rows = [["structure", "weights", "layer"] + [f"level {int(lv)}" for lv in levels]]
    for key in cells.index.droplevel(3).unique():
        at = [key + (lv,) for lv in levels]
        rows.append(list(key) + [
            f"{cells.loc[k, 'removed']:.0%}; {value(k, 'dispersion')} / {value(k, 'output_dispersion')}"
            if k in cells.index else "-" for k in at])
    over = f" (mean ± standard deviation over {seeds} seeds)" if seeds > 1 else ""
    return ["Emergent structure (Paganini & Forde 2020, §4, Fig. 5): per layer, the fraction of input channels "
            "(input features for the "
            "linear layer) removed whole, then the dispersion of the kept counts over the input / output channels: "
            f"their variance over its value for a random mask with the same number of weights{over} (1 = no "
            f"structure; a random mask removes a given input channel whole with probability at most "
            f"{es.expected_random.max():.2g} in these layers):\n",
            table(rows) + "\n"]


def _spearman(a: pd.Series, b: pd.Series) -> float:
    """Rank correlation over the entries both have (pandas' own needs scipy)."""
    both = pd.concat([a, b], axis=1).dropna()
    return float(both.iloc[:, 0].rank().corr(both.iloc[:, 1].rank()))


def _stability(res: dict) -> list[str]:
    st = pd.DataFrame(res.get("stability", {}).get("rows", []))
    if st.empty:
        return []
    piv = st.groupby(["structure", "layer"]).mean_abs_change.mean().unstack("layer")
    piv["all layers"] = piv.mean(axis=1)
    rows = [["structure"] + list(piv.columns)]
    for structure, r in piv.iterrows():
        rows.append([structure] + ["-" if pd.isna(v) else f"{v:.4f}" for v in r])
    en = pd.DataFrame(res.get("ensembles", {}).get("rows", []))
    if not en.empty and len(piv) >= 3:
        # Paganini & Forde 2020, §5: the more stable the weights, the more accurate the sub-network at high sparsity
        last = en[en.level == en.level.max()].drop(columns=["seed", "level"]).mean()
        acc = last.reindex(piv.index)
        rows.append([f"Spearman ρ with the level-{int(en.level.max())} accuracy"]
                    + [f"{_spearman(piv[c], acc):.2f}" for c in piv.columns])
    return ["Weight stability: mean |w_i - w_(i-1)| of the weights kept at consecutive levels (level 0 = dense), "
            "averaged over levels; lower is more stable (Paganini & Forde 2020, §5, Fig. 8). "
            "The last row correlates it across "
            "structures with their accuracy at the last level (negative: the more stable, the more accurate):\n",
            table(rows) + "\n"]


def _ensembles(res: dict) -> list[str]:
    en = pd.DataFrame(res.get("ensembles", {}).get("rows", []))
    cols = sorted((c for c in en.columns if c not in ("seed", "level")), key=lambda c: (c.startswith("ens"), c))
    if en.empty or not any(c.startswith("ens") for c in cols):
        return []
    # Paganini & Forde 2020, Table 2 compares each ensemble with its best member: that margin, seed by seed
    margins = []
    for name, members in ENSEMBLES.items():
        if name in en.columns and set(members) <= set(en.columns):
            en[f"{name} - best member"] = en[name] - en[members].max(axis=1)
            margins.append(f"{name} - best member")
    grouped = en.groupby("level")[cols + margins]
    mean, std, count = grouped.mean(), grouped.std(), grouped.count()
    seeds = en.seed.nunique()

    def cell(level, c):
        if pd.isna(mean.loc[level, c]):
            return "-"
        n = count.loc[level, c]
        sd = std.loc[level, c] if n > 1 else None
        note = f" (n={n})" if seeds > 1 and n != seeds else ""
        if c in margins:
            return f"{100 * mean.loc[level, c]:+.2f}" + ("" if sd is None else f" ± {100 * sd:.2f}") + note
        return pct(mean.loc[level, c], sd) + note

    rows = [["level"] + cols + margins] + [[int(level)] + [cell(level, c) for c in cols + margins]
                                           for level in mean.index]
    over = f", mean ± standard deviation over {seeds} seeds (n: seeds where it differs)" if seeds > 1 else ""
    return ["Ensembles: test accuracy of each structure's network (weights rewound) and of averaging the softmax "
            "outputs of all eight (ensemble_all), of hybrid + fc-only + L1 unstructured (ensemble_hybrid_fc_us, the "
            "last column of Paganini & Forde 2020, Table 2) or of L1 structured + L1 unstructured (Paganini & Forde "
            "2020, App. D, Table 2); the last columns give each ensemble's margin over its best member in points, "
            f"computed seed by seed{over}:\n",
            table(rows) + "\n"]


def _effective(res: dict) -> list[str]:
    ef = pd.DataFrame(res.get("effective_sparsity", []))
    if ef.empty:
        return []
    ef = ef[ef.rewind_to == "0it"].groupby(["structure", "level"])[["actual", "effective"]].mean()
    levels = sorted(ef.index.get_level_values("level").unique())
    rows = [["structure"] + [f"level {int(lv)}" for lv in levels] + ["effective rate per level (mean)"]]
    for structure, part in ef.groupby(level=0):
        part = part.droplevel(0)
        kept = (1 - part.effective).reindex(levels)
        rates = 1 - kept / pd.Series([1.0] + list(kept.values[:-1]), index=levels)
        rows.append([structure] + [f"{part.loc[lv, 'actual']:.1%} / {part.loc[lv, 'effective']:.1%}"
                                   if lv in part.index else "-" for lv in levels] + [f"{rates.mean():.1%}"])
    return ["Effective sparsity (Paganini & Forde 2020, App. B): actual / effective sparsity of the whole network "
            "(effective also counts kept weights disconnected from the output); the last column is the mean over "
            "levels of the effective fraction of the remaining weights pruned per level (20% nominal, per layer):\n",
            table(rows) + "\n"]


def _magnitudes(res: dict) -> list[str]:
    mg = pd.DataFrame(res.get("magnitudes", {}).get("rows", []))
    if mg.empty:
        return []
    rows = _by_level(mg, ["structure", "layer"], "mean_abs", lambda v: f"{v:.3f}")
    seeds = sorted(mg.seed.unique())
    which = ("seeds " if len(seeds) > 1 else "seed ") + ", ".join(str(s) for s in seeds)
    return ["Mean |w| of the kept weights at the end of training, per level (level 0: the dense network), mean over "
            f"the seeds whose final checkpoints were kept ({which}; Paganini & Forde 2020, §5: in fully "
            "connected layers it grows with sparsity):\n", table(rows) + "\n"]


def _across_budgets(data: dict) -> str:
    ab = pd.DataFrame(data.get("across_budgets", []))
    if ab.empty:
        return ""
    cells = ab.groupby(["pair", "layer", "level"])[["distance", "random"]].mean()
    levels = sorted(ab.level.unique())
    rows = [["budgets", "layer"] + [f"level {int(lv)}" for lv in levels]]
    for pair, layer in sorted(cells.index.droplevel(2).unique(), key=lambda k: (list(ab.pair).index(k[0]), k[1])):
        part = cells.loc[(pair, layer)]
        rows.append([pair, layer] + [f"{part.loc[lv, 'distance']:.2f} ({part.loc[lv, 'random']:.2f})"
                                     if lv in part.index else "-" for lv in levels])
    return ("## Family 7: masks found with 1, 4 and 10 epochs of training per level (Paganini & Forde 2020, App. C)\n\n"
            "Jaccard distance between the L1-unstructured rewinding masks found with two training budgets per level, "
            "same seed and level, per layer; in brackets the expected distance of two independent random masks "
            "with the same kept counts:\n\n" + table(rows) + "\n")


def family7_analyses(results: Path) -> str:
    """Mask similarity, emergent structure, weight stability and ensembles (Paganini & Forde 2020, §4-5, App. D) from
    ``repro/imp_analysis.py``, one section per network, training budget and initialization."""
    out = []
    for name, folder in IMP_ANALYSES:
        data = script_results(results, folder)
        if data is None:
            continue
        budgets = [(k, v) for k, v in data.items() if k.split()[0].endswith("ep")]  # "1ep", "30ep torch_default"
        for train, res in sorted(budgets, key=lambda kv: (float(kv[0].split()[0][:-2]), kv[0])):  # "1ep" < "10ep"
            out.append(f"## Family 7 analyses, {name}, {train} per level: similarity, structure, stability, "
                       "ensembles (Paganini & Forde 2020, §4-5, App. B, D)\n")
            out += (_similarity(res) + _structure(res) + _effective(res) + _stability(res) + _ensembles(res)
                    + _magnitudes(res))
        out.append(_across_budgets(data))
    return "\n".join(o for o in out if o)


def _criterion_label(r: pd.Series) -> str:
    """The criterion of a run at init, with the layer densities it was given when not its own (family 14)."""
    if isinstance(r.get("distribution"), str):
        return f"{r.method} ({r.distribution.upper()} densities)"
    if isinstance(r.get("like"), str):
        return f"{r.method} ({r.like}'s layer densities)"
    return r.method


def family6(df: pd.DataFrame, root: str) -> str:
    """Layerwise proportions, neuron collapse and effective sparsity of the family-2 masks (Frankle et al. 2021,
    §5 Fig. 5,
    App. J Fig. 15, App. M), seed 0."""
    from prunelab import Mask, analysis, models

    sel = df[of_protocol(df, "run") & (df.model == "lenet_300_100") & (df["training.train"] == "10ep")
             & (df.prune_at == "0it") & df.ablation.isna() & (df.status == "done") & (df.seed == 0)]
    if sel.empty:
        return ""
    model = models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28))
    rows = [["criterion", "sparsity", "dead neurons (all inputs pruned)", "effective sparsity",
             "kept per layer (fc1 / fc2 / fc3)"]]
    for _, r in sel.sort_values(["method", "sparsity_target"]).iterrows():
        if r.sparsity_target not in (0.737856, 0.931280523, 0.981985201):
            continue
        mask = Mask.load(Path(root) / r.id / runfiles.MASK)
        dead = analysis.neuron_collapse(mask, thresholds=[1.0])["fraction"][0]
        eff = analysis.effective_sparsity(model, mask, (1, 28, 28))
        kept = " / ".join(f"{d:.2%}" for d in mask.layer_density().values())
        rows.append([_criterion_label(r), f"{r.sparsity:.1%}", f"{dead:.1%}", f"{eff['effective']:.2%}", kept])
    return ("## Family 6: layerwise proportions, neuron collapse and effective sparsity of the family-2 masks "
            "(seed 0)\n\n"
            + table(rows) + "\n")


def family6_effective(df: pd.DataFrame, root: str, results: Path) -> str:
    """Effective parameters of layerwise-shuffled masks over those of the unmodified masks (Frankle et al. 2021,
    App. M): the family-3 masks of LeNet-300-100 (committed), and the papers' convnets at initialization from
    ``repro/effective_sparsity_shuffled.py``."""
    from prunelab import Mask, analysis, models

    sel = df[of_protocol(df, "run") & (df.model == "lenet_300_100") & (df["training.train"] == "10ep")
             & (df.prune_at == "0it") & (df.status == "done") & df.distribution.isna() & df.like.isna()]
    shuffled = sel[sel.ablation == "shuffle"]
    out = []
    if not shuffled.empty:
        model = models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28))
        ratios = []
        for _, r in shuffled.iterrows():
            base = sel[sel.ablation.isna() & (sel.method == r.method) & (sel.seed == r.seed)
                       & (sel.sparsity_target == r.sparsity_target)]
            if base.empty:
                continue
            mask, ref = (Mask.load(Path(root) / i / runfiles.MASK) for i in (r.id, base.iloc[0].id))
            eff = analysis.effective_sparsity(model, ref, (1, 28, 28))["effective"]
            ratios.append({"method": r.method, "sparsity": r.sparsity_target, "effective": eff,
                           "ratio": analysis.effective_parameter_ratio(model, mask, ref, (1, 28, 28))})
        agg = pd.DataFrame(ratios).groupby(["method", "sparsity"]).agg(
            effective=("effective", "mean"), ratio=("ratio", "mean"), low=("ratio", "min"), high=("ratio", "max"),
            seeds=("ratio", "size"))
        rows = [["criterion", "sparsity", "effective sparsity (unmodified)", "ratio shuffled / unmodified (range)",
                 "seeds"]]
        rows += [[m, f"{t:.1%}", f"{r.effective:.2%}", f"{r.ratio:.4f} ({r.low:.4f}-{r.high:.4f})", int(r.seeds)]
                 for (m, t), r in agg.iterrows()]
        out += ["LeNet-300-100, the masks of family 3 (at initialization):\n", table(rows) + "\n"]
    data = script_results(results, "effective_sparsity")
    if data:
        rows = [["network", "criterion", "sparsity", "effective sparsity (unmodified)", "effective sparsity (shuffled)",
                 "ratio shuffled / unmodified"]]
        for net, entry in data.items():
            for key, e in sorted(entry.items(), key=lambda kv: (float(kv[0].split("/")[1]), kv[0])):
                rows.append([net, key.split("/")[0], f"{e['actual']:.1%}", f"{e['effective']:.2%}",
                             f"{e['shuffled_effective']:.2%}", f"{e['ratio']:.4f}"])
        out += ["The papers' networks at initialization (no training; SNIP and GraSP on Gaussian inputs; shuffle "
                "seed 0):\n", table(rows) + "\n"]
    if not out:
        return ""
    return ("## Family 6: effective sparsity of layerwise-shuffled masks (Frankle et al. 2021, App. M)\n\n"
            "Effective parameters: kept weights that receive a gradient when an all-ones input is propagated "
            "through the mask (App. M's procedure); the ratio is the shuffled network's over the unmodified one's "
            "(Frankle et al. 2021: at most 1.0026 at the highest matching sparsity, at most 1.0353 at 98.2%).\n\n"
            + "\n".join(out))


_FAMILY14 = [  # (label, selection) over the runs of one network, 10 epochs
    ("dense", lambda d: of_protocol(d, "train")),
    ("magnitude after training", lambda d: of_protocol(d, "run") & (d.method == "magnitude") & (d.prune_at == "end")
     & d.ablation.isna()),
    ("LTR (rewind to 0)", lambda d: of_protocol(d, "lottery") & (d.level == 1) & (d.rewind_to == "0it")
     & (d.structure == "unstructured")),
    ("SNIP at init", lambda d: _at_init(d, "snip")),
    ("SynFlow at init", lambda d: _at_init(d, "synflow")),
    ("random, uniform", lambda d: _at_init(d, "random")),
    ("random, ERK", lambda d: _at_init(d, "random", distribution="erk")),
    ("random, SynFlow's layer densities", lambda d: _at_init(d, "random", like="synflow")),
    ("gradual magnitude", lambda d: of_protocol(d, "gradual")),
    ("SET", lambda d: of_protocol(d, "set")),
    ("RigL", lambda d: of_protocol(d, "rigl")),
]


def _at_init(d: pd.DataFrame, method: str, distribution=None, like=None) -> pd.Series:
    sel = of_protocol(d, "run") & (d.method == method) & (d.prune_at == "0it") & d.ablation.isna()
    for col, value in (("distribution", distribution), ("like", like)):
        sel &= d[col].isna() if value is None else d[col] == value
    return sel


def _backfilled_cost(root: str, r: pd.Series) -> tuple[float, float, float]:
    """(train, total FLOPs, density AUC) of a run that finished before results recorded them, by the same
    convention (prunelab.experiments.cost) from its hparams, steps and mask."""
    import prunelab
    from prunelab import Mask, models
    from prunelab.experiments.cost import Segment, account, masked

    count = prunelab.flops(models.create(r.model, num_classes=10, input_shape=(1, 28, 28)), (1, 28, 28))
    batch, total = int(r["training.batch_size"]) if "training.batch_size" in r and not pd.isna(
        r["training.batch_size"]) else 128, int(r.steps)
    if of_protocol(r, "train"):
        c = account(count, batch, [Segment(total)])
    else:
        mask = Mask.load(Path(root) / r.id / runfiles.MASK)
        if of_protocol(r, "lottery"):
            start = int(r.rewind_step)
            c = account(count, batch, [masked(total - start, mask)], [Segment(total)])
        else:
            c = account(count, batch, [masked(total, mask)], [Segment(int(r.prune_step))])
    return c["train_flops"], c["total_train_flops"], c["density_auc"]


FAMILY14_MODELS = (("lenet_300_100", "LeNet-300-100"), ("lenet5", "LeNet-5-Caffe"))
FAMILY14_TARGETS = (None, 0.931280523, 0.981985201)  # dense, then the two sparsities of repro/14*_cost_*.toml


def family14_settings(df: pd.DataFrame):
    """Family 14's rows: ``(model, label, target sparsity or None for dense, its finished 10-epoch runs)``, in table
    order (the runs may be none). ``repro/sparse_step_times.py`` times the settings these select."""
    for col in ("distribution", "like", "train_flops", "total_train_flops", "density_auc"):
        if col not in df.columns:
            df[col] = None
    for model, _ in FAMILY14_MODELS:
        d = df[(df.model == model) & (df["training.train"] == "10ep") & (df.status == "done")]
        for target in FAMILY14_TARGETS:
            for label, select in _FAMILY14:
                if (label == "dense") != (target is None):
                    continue
                part = d[select(d)]
                if target is not None:
                    part = part[(part.sparsity_target - target).abs() < 1e-6]
                yield model, label, target, part


def _step_times(times: dict | None, model: str, label: str, target: float | None) -> list[str]:
    """The step-time cells of a family-14 row from ``repro/sparse_step_times.py``'s results: dense ms, with
    sparse kernels (auto) ms, and the speed-up, median (interquartile range) of the paired steps."""
    entry = (times or {}).get("settings", {}).get(f"{model} | {label} | {target}")
    if entry is None:
        return ["-", "-", "-"]
    lo, mid, hi = entry["speedup_auto"]
    return [f"{entry['dense_ms']:.2f}", f"{entry['auto_ms']:.2f}", f"{mid:.2f}x ({lo:.2f}-{hi:.2f})"]


def family14(df: pd.DataFrame, root: str, results: Path | None = None) -> str:
    """Accuracy and training cost side by side (Frankle et al. 2021, Fig. 1 and §7), 3 seeds, per network, with the
    measured time of a training step dense and with sparse kernels (``repro/sparse_step_times.py``)."""
    times = script_results(results, "sparse_step_times") if results is not None else None
    tables, backfilled = {model: [] for model, _ in FAMILY14_MODELS}, 0
    for model, label, target, part in family14_settings(df):
        rows = tables[model]
        if part.empty:
            rows.append([label, f"{target:.1%}", "not run", "", "", "", "", "", "", "0"])
            continue
        part = part.copy()
        for i, r in part.iterrows():
            if pd.isna(r.train_flops):
                part.loc[i, ["train_flops", "total_train_flops", "density_auc"]] = _backfilled_cost(root, r)
                backfilled += 1
        rows.append([label, "0%" if target is None else f"{target:.1%}",
                     pct(part.test_accuracy.mean(), part.test_accuracy.std()),
                     f"{part.train_flops.mean():.3g}", f"{part.total_train_flops.mean():.3g}",
                     f"{part.density_auc.mean():.3f}", *_step_times(times, model, label, target), str(len(part))])
    head = ["method", "sparsity", "accuracy %", "train FLOPs", "total train FLOPs", "density AUC", "step ms dense",
            "step ms sparse kernels", "speed-up", "seeds"]
    out = [f"{name}:\n\n" + table([head, *tables[model]]) + "\n" for model, name in FAMILY14_MODELS]
    note = (f"\nTraining FLOPs of {backfilled} runs that finished before results recorded them were computed "
            "afterwards from their hyperparameters, steps and masks by the same convention.\n") if backfilled else ""
    if times:
        note += (f"\nStep ms: one whole training step (batch {times['batch']}, SGD), {times['threads']} thread, CPU "
                 "time, median of steps timed side by side in one process, in rounds of "
                 f"{' or '.join(str(b) for b in sorted({e.get('block', 1) for e in times['settings'].values()}))}"
                 " steps of each "
                 "contender back to back (the first left out) in alternating order, of the masked network of "
                 "seed 0 (its final mask: gradual, SET and RigL change theirs during training) dense and with "
                 "`--sparse-kernels auto`; speed-up: median (interquartile range) of the paired ratios. For magnitude "
                 "after training and LTR, the step of the masked retraining that follows their dense training. "
                 "Only linear layers run sparse: LeNet-5-Caffe's convolutions, most of its step, stay dense (unfolded "
                 "into the sparse kernel they were slower at every density, bench/sparse_training.py --conv). "
                 "From repro/sparse_step_times.py "
                 f"(repro/results/sparse_step_times/results.json: {times['cpu']}, torch {times['torch']}, load average "
                 f"{times['load_average']}). The pairs cancel most of a busy machine's load, not all: settings whose "
                 "layer densities are the same (random ERK, SET and RigL; SynFlow and random with SynFlow's layer "
                 "densities) would time alike, and their spread is the measurement's.\n")
    return ("## Family 14: accuracy and training cost (Fashion-MNIST, 10 epochs)\n\n" + "\n".join(out) + note)


def costs(root: str, specs: Path) -> str:
    """Training time of each sweep spec: the sum of its runs' wall times (one thread each), counting the
    dense networks it shares with other specs once per spec."""
    from prunelab.experiments.runner import Runner
    from prunelab.experiments.store import RunStore
    from prunelab.experiments.sweep import load_spec

    runner = Runner(RunStore(root))
    rows = [["spec", "runs finished", "runs planned", "sum of run wall times (h)"]]
    for path in sorted(specs.glob("*.toml")):
        ids = set()
        for job in load_spec(path).jobs:
            ids.add(runner.dense_id(job.rep))
            ids.update(job.protocol.run_ids(runner, job.rep, job.hp))  # every level of a lottery series
        done = [r for r in map(runner.store.result, ids) if r is not None]
        rows.append([path.stem, len(done), len(ids), f"{sum(r.get('wall_time', 0) for r in done) / 3600:.2f}"])
    return ("## Compute\n\nThe sweeps ran two workers of one thread each on the 2-core machine, so a family's "
            "wall-clock time is about half the sum of its runs' times.\n\n" + table(rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Print the Markdown tables of every reproduction family (standard output; nothing is written to "
                    "disk) from the run store and the scripts' result files: the 'Generated tables' of "
                    "docs/results.md, e.g. python repro/summarize.py > repro/results/summary.md. The claims table is "
                    "repro/claims.py's.")
    ap.add_argument("--root", default="repro/runs", help="run store (default: repro/runs)")
    ap.add_argument("--results", default="repro/results", help="folder of the repro scripts' results.json files "
                    "(default: repro/results)")
    ap.add_argument("--specs", default="repro", help="folder of the sweep specs (for the compute table)")
    args = ap.parse_args()
    everything = runs_table(args.root)
    for col in ("method", "prune_at", "ablation", "rewind_to", "structure", "level", "rate", "sparsity_target",
                "distribution", "like"):
        if col not in everything.columns:
            everything[col] = None
    df, step = by_schedule(everything, step=False), by_schedule(everything, step=True)
    parts = [family1(df), family1_first_steps(df, args.root), family1_batch(df, args.root), family1_init(df, args.root),
             family1_random_labels(df, args.root), family1_class_masks(Path(args.results)),
             family2(df), family3(df), family4(df),
             retitled(family2(step), STEP_TITLE), retitled(family3(step), STEP_TITLE),
             retitled(family4(step), STEP_TITLE),
             family5(Path(args.results)),
             family5_training(Path(args.results)),
             family6(df, args.root), family6_effective(df, args.root, Path(args.results)),
             family6_convnets(Path(args.results)), family6_shortcuts(Path(args.results)),
             family7(df),
             family7_analyses(Path(args.results)), family14(df, args.root, Path(args.results)), family16(df),
             family16_layers(df, args.root), family16_synflow_scores(df),
             costs(args.root, Path(args.specs))]
    print("\n".join(p for p in parts if p))


if __name__ == "__main__":
    main()
