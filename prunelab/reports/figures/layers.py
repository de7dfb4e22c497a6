"""Layer-by-layer figures of masks pruned at initialization: per-layer sparsity (Frankle et al. 2021, App. J),
neuron collapse (§5, Fig. 5), per-layer density across compression ratios (Tanaka et al. 2020, Fig. 2) and
the conservation of synaptic saliency (Tanaka et al. 2020, §4, Figs. 3-4)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from prunelab.experiments.protocols.prune_at import method_labels
from prunelab.reports import plots
from prunelab.reports.figures.captions import (
    common_hparams,
    percent,
    seeds_text,
)
from prunelab.reports.figures.context import (
    Context,
    Plot,
    ReportFigure,
    dataset_input_shape,
    load_mask,
    no_ablation,
)
from prunelab.reports.tables import (
    aggregate,
)


def _pick_sparsity(ctx: Context, init: pd.DataFrame) -> tuple[float, str]:
    """The sparsity at which to compare criteria layer by layer: the highest *matching* sparsity of
    Frankle et al. 2021 (§4 footnote 2: magnitude pruning after training still matches the dense accuracy, here within
    one standard deviation) among those pruned at initialization; else the highest sparsity most
    criteria share."""
    targets = sorted(init["sparsity_target"].dropna().unique())
    dense = ctx.dense()
    after = no_ablation(ctx.of_protocol("run"))
    after = after[(after["prune_at"] == "end") & (after["method"] == "magnitude")]
    if dense is not None and not after.empty:
        tolerance = dense[1] or 0.0
        agg = aggregate(after, by=["sparsity_target"], metrics=["test_accuracy"])
        matching = agg[agg["test_accuracy_mean"] >= dense[0] - tolerance - 1e-12]["sparsity_target"]
        shared = [t for t in targets if any(abs(t - m) < 1e-9 for m in matching)]
        if shared:
            return shared[-1], "the highest matching sparsity (magnitude after training within one std of dense)"
    counts = init.groupby("sparsity_target")["method"].nunique()
    best = counts[counts == counts.max()].index.max()
    return float(best), "the highest sparsity shared by the most criteria (no matching sparsity in the store)"


def _compared_at(ctx: Context) -> tuple[pd.DataFrame, float, str] | None:
    """The unablated runs pruned at init. (and magnitude after training) at the comparison sparsity."""
    prune = no_ablation(ctx.of_protocol("run"))
    init = prune[prune["prune_at"] == "0it"]
    if init.empty:
        return None
    target, why = _pick_sparsity(ctx, init)
    chosen = prune[((prune["prune_at"] == "0it") | ((prune["prune_at"] == "end") & (prune["method"] == "magnitude")))
                   & ((prune["sparsity_target"] - target).abs() < 1e-9)]
    labels = method_labels(chosen)
    labels[chosen["prune_at"] == "end"] = "magnitude after training"
    return chosen.assign(label=labels), target, why


def layer_sparsity(ctx: Context) -> Iterable[ReportFigure]:
    found = _compared_at(ctx)
    if found is None or ctx.layers.empty:
        return
    chosen, target, why = found
    layers = ctx.layers.merge(chosen[["id", "label"]], on="id")
    if layers.empty:
        return
    per = {}
    for label, part in layers.groupby("label", sort=True):
        means = part.groupby(["index", "layer"], sort=True)["sparsity"].mean()
        per[label] = {ctx.layer_label(layer): float(v) for (_, layer), v in means.items()}
    shown = chosen[chosen["id"].isin(layers["id"])]
    yield ReportFigure(
        f"layer-sparsity-{ctx.setting}", f"Per-layer sparsity at {percent(target)} — {ctx.label}",
        f"Sparsity (%) of each prunable layer (input to output) chosen by each criterion at {percent(target)}, "
        f"{why}; {'mean over ' + seeds_text(shown) if shown['seed'].nunique() > 1 else seeds_text(shown)} "
        "(Frankle et al. 2021, Appendix J, Fig. 15).",
        Plot(plots.layer_sparsity_bars, per, title=f"{ctx.label}, sparsity {percent(target)}"),
        common_hparams(chosen), list(chosen["id"]))


def neuron_collapse(ctx: Context) -> Iterable[ReportFigure]:
    from prunelab import analysis

    found = _compared_at(ctx)
    if found is None:
        return
    chosen, target, why = found
    prune = ctx.of_protocol("run")
    shuffled = prune[(prune["ablation"] == "shuffle") & (prune["prune_at"] == "0it")
                     & ((prune["sparsity_target"] - target).abs() < 1e-9)]
    if not shuffled.empty:
        shuffled = shuffled.assign(label=method_labels(shuffled) + " shuffled")
        chosen = pd.concat([chosen, shuffled])
    curves = {}
    for label, part in chosen.groupby("label", sort=True):
        fractions, thresholds = [], None
        for run_id in part["id"]:
            result = analysis.neuron_collapse(load_mask(ctx.folder(run_id)))
            thresholds = result["thresholds"]
            fractions.append(result["fraction"])
        values = np.asarray(fractions, float)
        std = values.std(axis=0, ddof=1) if len(values) > 1 else None
        curves[label] = plots.Curve(thresholds, values.mean(axis=0), std)
    spread = "shaded: the standard deviation over " + seeds_text(chosen) if chosen.groupby("label")["seed"].nunique(
    ).max() > 1 else seeds_text(chosen)
    shuffled_text = "; \"shuffled\" masks are the shuffle ablation of the same criterion" if not shuffled.empty else ""
    yield ReportFigure(
        f"neuron-collapse-{ctx.setting}", f"Neuron collapse at {percent(target)} — {ctx.label}",
        f"Percent of neurons (units, conv channels) whose incoming weights are at least s sparse, against s, "
        f"for each criterion at {percent(target)}, {why}{shuffled_text}; {spread} "
        "(Frankle et al. 2021, §5, Fig. 5).",
        Plot(plots.neuron_collapse, curves, title=f"{ctx.label}, sparsity {percent(target)}"),
        common_hparams(chosen), list(chosen["id"]))


def density_vs_compression(ctx: Context) -> Iterable[ReportFigure]:
    prune = no_ablation(ctx.of_protocol("run"))
    init = prune[prune["prune_at"] == "0it"]
    if init.empty or ctx.layers.empty:
        return
    init = init.assign(label=method_labels(init))
    panels, used = {}, []
    for label, part in init.groupby("label", sort=True):
        if part["sparsity_target"].nunique() < 2:
            continue
        lines = []
        for _, level in part.groupby("sparsity_target", sort=True):
            layers = ctx.layers[ctx.layers["id"].isin(level["id"])]
            if layers.empty:
                continue
            density = 1 - layers.groupby(["index", "layer"], sort=True)["sparsity"].mean()
            ratio = 1 / max(1 - float(level["sparsity"].mean()), 1e-12)
            lines.append((ratio, {ctx.layer_label(layer): float(d) for (_, layer), d in density.items()}))
        if lines:
            panels[label] = lines
            used.append(part)
    if not panels:
        return
    rows = pd.concat(used)
    yield ReportFigure(
        f"layer-density-{ctx.setting}", f"Per-layer density across compression ratios — {ctx.label}",
        "Fraction of weights remaining in each layer (input to output) for each compression ratio (total / kept), "
        "one panel per criterion pruning at initialization; lighter = higher compression"
        + (", dashed = a layer is fully pruned (layer collapse)" if _any_collapse(panels) else "")
        + f"; {'means over ' + seeds_text(rows) if rows['seed'].nunique() > 1 else seeds_text(rows)} "
        "(Tanaka et al. 2020, §3, Fig. 2).",
        Plot(plots.layer_density_vs_compression, panels, title=ctx.label), common_hparams(rows), list(rows["id"]))


def _any_collapse(panels: dict) -> bool:
    return any(d <= 0 for lines in panels.values() for _, per in lines for d in per.values())


def conservation(ctx: Context) -> Iterable[ReportFigure]:
    """SynFlow's scores on the initial network of the smallest seed: data-free, so the report needs no data."""
    import prunelab
    from prunelab import analysis, models
    from prunelab.analysis import layer_labels

    prune = ctx.of_protocol("run")
    synflow = prune[prune["method"] == "synflow"]
    if synflow.empty:
        return
    first = synflow.sort_values("seed").iloc[0]
    input_shape = dataset_input_shape(first["dataset"])
    if input_shape is None:
        return
    from prunelab import data

    model = models.create(first["model"], num_classes=data.info(first["dataset"])["num_classes"],
                          input_shape=input_shape, init=first.get("model.init", "kaiming_normal"),
                          init_mode=first.get("model.init_mode", "fan_in"),
                          bn_init=first.get("model.bn_init", "uniform"), seed=int(first["seed"]))
    scores = prunelab.score(model, "synflow", input_shape=input_shape, include_bias=True)
    result = analysis.conservation(model, scores)
    labels = layer_labels(model, list(result["neurons"]))
    neurons = {labels[name]: (v["incoming"].cpu().numpy(), v["outgoing"].cpu().numpy())
               for name, v in result["neurons"].items()}
    weights = {n: (result["layer_size"][n], result["layer_total"][n]) for n in result["layer_size"]
               if scores[n].dim() >= 2}
    exact = "exact (homogeneous activations, no BatchNorm on the path)" if result["exact"] else (
        "approximate: " + "; ".join(result["caveats"][:3]))
    rows = synflow[synflow["seed"] == first["seed"]]
    hparams = common_hparams(rows.iloc[:1]) | {"scores": "synflow at initialization, biases included",
                                                 "max relative error": f"{result['max_relative_error']:.2e}"}
    for key in ("sparsity_target", "iterations", "runs", "prune_at"):
        hparams.pop(key, None)
    yield ReportFigure(
        f"conservation-{ctx.setting}", f"Conservation of synaptic saliency — {ctx.label}",
        "Left: each hidden neuron's total incoming vs outgoing SynFlow score on the initial network, one colour "
        "per layer the neurons belong to (dotted guide: equality, Theorem 1); right: each layer's average score vs "
        "the inverse of its size (dotted guide: equal layer totals, Theorem 2) (Tanaka et al. 2020, §4, Figs. 3-4). "
        f"Conservation here is {exact}.",
        Plot(plots.conservation, neurons, weights, title=f"{ctx.label}, seed {int(first['seed'])}"), hparams,
        [str(first["id"])])
