"""Figures of the masks and masked weights themselves: first-layer masks as images (Lee et al. 2019, Fig. 2),
masked convolution kernels, Jaccard distances between masks across pruning iterations and weight
trajectories over the levels of iterative pruning (Paganini & Forde 2020, §4-5)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from prunelab.experiments.protocols.lottery import VARIANT_COLUMNS as LOTTERY_VARIANT
from prunelab.experiments.protocols.lottery import ticket_labels
from prunelab.experiments.protocols.prune_at import method_labels
from prunelab.reports import plots
from prunelab.reports.figures.captions import (
    common_hparams,
    listing,
    percent,
    slug,
    spread_text,
)
from prunelab.reports.figures.context import (
    Context,
    Plot,
    ReportFigure,
    dataset_input_shape,
    load_mask,
    no_ablation,
    second_conv,
    trained_weights,
)

if TYPE_CHECKING:
    from prunelab.masks import Mask

_MAX_IMAGE_ROWS = 6


def first_layer_masks(ctx: Context) -> Iterable[ReportFigure]:
    prune = no_ablation(ctx.of_protocol("run"))
    init = prune[prune["prune_at"] == "0it"]
    if init.empty:
        return
    input_shape = dataset_input_shape(init.iloc[0]["dataset"])
    if input_shape is None:
        return
    first_run = init.iloc[0]
    mask = load_mask(ctx.folder(first_run["id"]))
    name, tensor = next(iter(mask.items()))
    if tensor.dim() != 2 or tensor.shape[1] != math.prod(input_shape):
        return  # the first layer is not fully connected to the image
    seed = init["seed"].min()
    rows = init[init["seed"] == seed].assign(label=lambda d: method_labels(d))
    targets = sorted(rows["sparsity_target"].unique())
    if len(targets) > _MAX_IMAGE_ROWS:
        targets = [targets[i] for i in np.unique(np.linspace(0, len(targets) - 1, _MAX_IMAGE_ROWS).round().astype(int))]
    rows = rows[rows["sparsity_target"].isin(targets)]
    grid: dict[str, dict[str, np.ndarray]] = {}
    for _, row in rows.sort_values(["sparsity_target", "label"]).iterrows():
        image = plots.first_layer_image(load_mask(ctx.folder(row["id"]))[name].numpy(), input_shape)
        grid.setdefault(f"sparsity {percent(row['sparsity_target'])}", {})[row["label"]] = image
    yield ReportFigure(
        f"first-layer-masks-{ctx.setting}", f"First-layer masks — {ctx.label}",
        f"The mask of the first fully-connected layer, {ctx.layer_label(name)}, averaged over its units and reshaped "
        "to the input "
        "image: bright pixels keep their connections; one column per criterion, one row per sparsity "
        f"(seed {int(seed)}; Lee et al. 2019, Fig. 2).",
        Plot(plots.mask_images, grid, title=ctx.label), common_hparams(rows), list(rows["id"]))


def conv_masks(ctx: Context) -> Iterable[ReportFigure]:
    lot = ctx.of_protocol("lottery")
    if lot.empty:
        return
    seed = lot["seed"].min()
    lot = lot[lot["seed"] == seed]
    lot = lot.assign(label=ticket_labels(lot))
    mask = load_mask(ctx.folder(lot.iloc[0]["id"]))
    layer = second_conv(mask)
    if layer is None:
        return
    common = sorted(set.intersection(*(set(p["level"]) for _, p in lot.groupby("label"))))
    if not common:
        return
    levels = sorted({common[len(common) // 2], common[-1]}) if len(common) > 1 else common
    grid: dict[str, dict[str, tuple]] = {}
    used = []
    for level in levels:
        for label, part in lot[lot["level"] == level].groupby("label", sort=True):
            row = part.iloc[0]
            folder = ctx.folder(row["id"])
            weight = trained_weights(folder, row["steps"])[layer].numpy()
            grid.setdefault(f"iteration {int(level)}", {})[label] = (weight, load_mask(folder)[layer].numpy())
            used.append(part.iloc[:1])
    rows = pd.concat(used)
    yield ReportFigure(
        f"conv-masks-{ctx.setting}", f"Masked weights of {ctx.layer_label(layer)} — {ctx.label}",
        f"Trained weights of the convolution {ctx.layer_label(layer)} under each pruning variant, at "
        f"{'two pruning iterations' if len(levels) > 1 else 'one pruning iteration'}: input "
        "channels in rows, output channels in columns, one small square per kernel; pruned weights gray, kept "
        f"positive weights red, negative blue (seed {int(seed)}; Paganini & Forde 2020, §4, Fig. 5).",
        Plot(plots.conv_masks, grid, title=ctx.label), common_hparams(rows), list(rows["id"]))


def jaccard(ctx: Context) -> Iterable[ReportFigure]:
    """Per layer, Jaccard distance of each variant's masks to a reference variant's, same seed and level
    (Paganini & Forde 2020, §4): varying the structure (Figs. 3-4) or the weight treatment,
    rewinding vs finetuning (Fig. 9)."""
    from prunelab import analysis

    lot = ctx.of_protocol("lottery")
    if lot.empty:
        return
    masks: dict[str, Mask] = {}  # a reference mask is compared with every variant's: loaded once

    def mask(run_id: str) -> Mask:
        if run_id not in masks:
            masks[run_id] = load_mask(ctx.folder(run_id))
        return masks[run_id]

    for vary, preferred, ref_fig in (("structure", ("unstructured", "l2"), "Figs. 3-4"),
                                     ("rewind_to", ("0it",), "Fig. 9")):
        fixed = [c for c in LOTTERY_VARIANT if c != vary]
        for k, (_, group) in enumerate(lot.groupby(fixed, sort=True, dropna=False)):
            values = sorted(group[vary].astype(str).unique())
            if len(values) < 2:
                continue
            reference = next((p for p in preferred if p in values), values[0])
            ref_rows = group[group[vary].astype(str) == reference]
            ref_ids: dict[tuple, str] = {}  # (seed, level) -> the first reference run's id, looked up per compared run
            for seed, level, run_id in zip(ref_rows["seed"], ref_rows["level"], ref_rows["id"]):
                ref_ids.setdefault((seed, level), run_id)
            panels: dict[str, dict[str, plots.Curve]] = {}
            used = [ref_rows]
            for other in values:
                if other == reference:
                    continue
                rows = group[group[vary].astype(str) == other]
                by_level: dict[int, list[dict[str, float]]] = {}
                compared = []
                for index, seed, level, run_id in zip(rows.index, rows["seed"], rows["level"], rows["id"]):
                    if (seed, level) not in ref_ids:
                        continue
                    sim = analysis.jaccard_per_layer(mask(ref_ids[seed, level]), mask(run_id), shared_only=True)
                    by_level.setdefault(int(level), []).append({n: 1 - s for n, s in sim.items()})
                    compared.append(index)
                used.append(rows.loc[compared])
                if not by_level:
                    continue
                levels = sorted(by_level)
                for layer in by_level[levels[0]][0]:
                    per = [np.array([d[layer] for d in by_level[lv]]) for lv in levels]
                    panels.setdefault(layer, {})[other] = plots.Curve(
                        levels, [p.mean() for p in per], [p.std(ddof=1) if p.size > 1 else np.nan for p in per])
            if not panels:
                continue
            order = list(load_mask(ctx.folder(ref_rows.iloc[0]["id"])))  # panels in the network's layer order
            panels = {ctx.layer_label(layer): lines for layer, lines in
                      sorted(panels.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))}
            shown = pd.concat(used).drop_duplicates("id")
            yield ReportFigure(
                f"jaccard-{vary.replace('_', '-')}-{k}-{ctx.setting}",
                f"Mask similarity across pruning iterations ({vary}) — {ctx.label}",
                f"Jaccard distance (1 - intersection over union of the kept weights) between the masks of "
                f"{vary} = {reference} and those of the other values of {vary}, same seed and pruning iteration, "
                f"one panel per layer; {spread_text(shown)} (Paganini & Forde 2020, §4, {ref_fig}).",
                Plot(plots.jaccard_vs_iteration, panels, reference=f"{vary}={reference}", title=ctx.label),
                common_hparams(shown), list(shown["id"]))


def weight_trajectories(ctx: Context, n_weights: int = 40) -> Iterable[ReportFigure]:
    lot = ctx.of_protocol("lottery")
    dense = ctx.reference()
    if lot.empty:
        return
    seed = lot["seed"].min()
    lot = lot[lot["seed"] == seed]
    lot = lot.assign(label=ticket_labels(lot))
    base = dense[dense["seed"] == seed]
    for label, part in lot.groupby("label", sort=True):
        part = part.sort_values("level")
        if part["level"].nunique() < 2:
            continue
        states, masks, x = [], [], []
        if not base.empty:
            states.append(trained_weights(ctx.folder(base.iloc[0]["id"]), base.iloc[0]["steps"]))
            masks.append(None)
            x.append(0.0)
        for _, row in part.iterrows():
            folder = ctx.folder(row["id"])
            states.append(trained_weights(folder, row["steps"]))
            masks.append(load_mask(folder))
            x.append(100 * float(row["sparsity"]))
        last = masks[-1]
        names = [n for n in (second_conv(last), list(last)[-1]) if n is not None]
        panels = {}
        rng = np.random.default_rng(0)
        for name in dict.fromkeys(names):
            size = last[name].numel()
            pick = rng.choice(size, size=min(n_weights, size), replace=False)
            values = []
            for state, mask in zip(states, masks):
                w = state[name].detach().double().flatten().numpy()[pick]
                if mask is not None:
                    w = np.where(mask[name].flatten().numpy()[pick], w, np.nan)
                values.append(w)
            panels[ctx.layer_label(name)] = (np.array(x), np.array(values))
        shown = pd.concat([base.iloc[:1], part]) if not base.empty else part
        yield ReportFigure(
            f"weight-trajectories-{slug(label)}-{ctx.setting}", f"Weight trajectories ({label}) — {ctx.label}",
            f"Values after training of up to {n_weights} randomly chosen weights of {listing(list(panels))} at "
            "consecutive pruning levels (x: sparsity" + (", 0 = the dense network" if not base.empty else "")
            + f"); a line ends when its weight is pruned (seed {int(seed)}; Paganini & Forde 2020, §5, Figs. 6-7).",
            Plot(plots.weight_trajectories, panels, title=f"{ctx.label}, {label}"), common_hparams(shown),
            list(shown["id"]))
