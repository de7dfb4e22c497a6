"""Accuracy figures: against sparsity when pruning at initialization (Frankle et al. 2021, Figs. 3 and 8), of
iterative pruning's levels (Paganini & Forde 2020, Fig. 2), under the ablations (Frankle et al. 2021, §5,
Figs. 4, 9, 10), and against the pruning step (Frankle et al. 2021, §6, Fig. 6)."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from prunelab.experiments.protocols.lottery import REWIND_CHOICES, ticket_labels
from prunelab.experiments.protocols.prune_at import method_labels
from prunelab.reports import plots
from prunelab.reports.figures.captions import (
    common_hparams,
    dense_text,
    listing,
    percent,
    slug,
    spread_text,
)
from prunelab.reports.figures.context import (
    Context,
    Plot,
    ReportFigure,
    accuracy_curve,
    lr_drops,
    no_ablation,
)


def accuracy_vs_sparsity(ctx: Context) -> Iterable[ReportFigure]:
    prune = no_ablation(ctx.of_protocol("run"))
    init = prune[prune["prune_at"] == "0it"]
    if init.empty:
        return
    curves, used = {}, []
    after = prune[(prune["prune_at"] == "end") & (prune["method"] == "magnitude")]
    if not after.empty:
        curves["magnitude after training"] = accuracy_curve(after)
        used.append(after)
    init = init.assign(label=method_labels(init))
    for label, part in init.groupby("label", sort=True):
        curves[label] = accuracy_curve(part)
        used.append(part)
    lot = no_ablation(ctx.of_protocol("lottery"))
    ltr = lot[(lot["structure"] == "unstructured") & ~lot["rewind_to"].isin(REWIND_CHOICES)]
    if not ltr.empty:
        ltr = ltr.assign(label=ltr_labels(ltr))
        for name, part in ltr.groupby("label", sort=True):
            curves[name] = accuracy_curve(part)
            used.append(part)
    rows = pd.concat(used)
    baselines = [b for b, present in (("magnitude pruning after training", not after.empty),
                                      ("lottery-ticket rewinding", not ltr.empty)) if present]
    compared = f", with {listing(baselines)} as {'a baseline' if len(baselines) == 1 else 'baselines'}" \
        if baselines else ""
    yield ReportFigure(
        f"accuracy-vs-sparsity-{ctx.setting}", f"Accuracy vs sparsity, pruning at initialization — {ctx.label}",
        f"Test accuracy (%) of each criterion pruning at initialization ({listing(sorted(init['label'].unique()))}), "
        f"against sparsity on a log-density axis{compared}; {spread_text(rows)}.{dense_text(ctx)} "
        "(Frankle et al. 2021, Figs. 3 and 8.)",
        Plot(plots.accuracy_vs_sparsity, curves, dense=ctx.dense_percent(), title=ctx.label), common_hparams(rows),
        list(rows["id"]))


def ltr_labels(ltr: pd.DataFrame) -> pd.Series:
    """One curve per way of reaching the sparsities: one-shot lottery-ticket rewinding (one level, its rate the
    sparsity: one curve across the rates) and iterative pruning at a rate per level (levels beyond the first: one
    curve per rate, across the levels), per rewinding step and, where several, per scope. Labelling each one-shot
    rate apart made a legend entry for every point."""
    iterative = ltr.groupby("rate", dropna=False)["level"].transform("max") > 1
    rate = ltr["rate"].map(lambda r: f", {r:g} per level" if pd.notna(r) else "")
    label = "LTR rewind " + ltr["rewind_to"].astype(str) + rate.where(iterative, "")
    if ltr["scope"].nunique() > 1:
        label = label + " " + ltr["scope"].astype(str)
    return label


def lottery_accuracy(ctx: Context) -> Iterable[ReportFigure]:
    lot = ctx.of_protocol("lottery")
    if lot.empty:
        return
    lot = lot.assign(label=ticket_labels(lot))
    curves = {label: accuracy_curve(part) for label, part in lot.groupby("label", sort=True)}
    yield ReportFigure(
        f"lottery-accuracy-{ctx.setting}", f"Iterative pruning: accuracy vs sparsity — {ctx.label}",
        f"Test accuracy (%) of each pruning level of iterative magnitude pruning against the level's sparsity, one "
        f"line per variant ({listing(list(curves))}; after each pruning: {_lottery_treatments(lot)}); "
        f"{spread_text(lot)}."
        f"{dense_text(ctx)} (Paganini & Forde 2020, Fig. 2; lottery-ticket rewinding in Frankle et al. 2021, "
        "Fig. 8.)",
        Plot(plots.accuracy_vs_sparsity, curves, dense=ctx.dense_percent(), title=ctx.label), common_hparams(lot),
        list(lot["id"]))


_TREATMENTS = {"finetune": "finetuning the trained weights", "sign": "reinitializing to the signs of the weights",
               "sigma_sign": "reinitializing to sigma times the signs"}


def _lottery_treatments(lot: pd.DataFrame) -> str:
    """What the lottery runs of the store do to the weights after each pruning: rewinding (to which steps),
    finetuning, sign reinitialization."""
    treatments = []
    rewinds = sorted({str(r) for r in lot["rewind_to"].dropna() if r not in _TREATMENTS})
    if rewinds:
        treatments.append(f"rewinding to step {listing(rewinds)}")
    treatments += [_TREATMENTS[r] for r in sorted(set(lot["rewind_to"].dropna()) & set(_TREATMENTS))]
    return listing(treatments)


_ABLATIONS = {"shuffle": "shuffle (the mask permuted within each layer)",
              "reinit": "reinit (the kept weights reinitialized)", "invert": "invert (the lowest scores kept)",
              "fixed_variance": "fixed_variance (a fixed-variance initialization)"}


_ABLATION_TITLES = {"0it": ("at initialization", "Frankle et al. 2021, Fig. 4"),
                    "end": ("after training", "Frankle et al. 2021, Fig. 9")}


def ablations(ctx: Context) -> Iterable[ReportFigure]:
    prune = ctx.of_protocol("run")
    for prune_at, at in prune.groupby("prune_at", sort=True):
        ablated = at[at["ablation"].notna()]
        if ablated.empty:
            continue
        at = at.assign(label=method_labels(at))
        panels, used = {}, []
        for label, part in at.groupby("label", sort=True):
            if part["ablation"].notna().sum() == 0:
                continue
            lines = {}
            plain = no_ablation(part)
            if not plain.empty:
                lines["unmodified"] = accuracy_curve(plain)
            for ablation, abl in part[part["ablation"].notna()].groupby("ablation", sort=True):
                lines[str(ablation)] = accuracy_curve(abl)
            panels[label] = lines
            used.append(part)
        when, figure_ref = _ABLATION_TITLES.get(prune_at,
            (f"at step {prune_at}", "Frankle et al. 2021, Figs. 4, 9 and 10"))
        rows = pd.concat(used)
        present = sorted(str(a) for a in rows["ablation"].dropna().unique())
        described = [_ABLATIONS.get(a, a) for a in present]
        unmodified = "unmodified and " if rows["ablation"].isna().any() else ""
        yield ReportFigure(
            f"ablations-{slug(str(prune_at))}-{ctx.setting}", f"Ablations when pruning {when} — {ctx.label}",
            f"Test accuracy (%) against sparsity for each criterion pruning {when}, {unmodified}under "
            f"{'the ablation' if len(present) == 1 else 'each ablation'} in the store: {listing(described)}; "
            f"{spread_text(rows)}.{dense_text(ctx)} ({figure_ref}; §5.)",
            Plot(plots.ablation_panels, panels, dense=ctx.dense_percent(), title=f"{ctx.label}, pruned {when}"),
            common_hparams(rows), list(rows["id"]))


def accuracy_vs_step(ctx: Context) -> Iterable[ReportFigure]:
    prune = no_ablation(ctx.of_protocol("run"))
    lot = no_ablation(ctx.of_protocol("lottery"))
    ltr = lot[(lot["structure"] == "unstructured") & ~lot["rewind_to"].isin(REWIND_CHOICES)]
    for target, at in prune.groupby("sparsity_target", sort=True):
        if not (~at["prune_at"].isin(["0it", "end"])).any():
            continue  # only init. and after training: that is accuracy vs sparsity, not vs step
        at = at.assign(label=method_labels(at))
        curves = {label: accuracy_curve(part, x="prune_step", by="prune_step") for label, part in at.groupby("label")}
        used = [at]
        matched = ltr[(ltr["sparsity_target"] - target).abs() < 1e-3]
        if not matched.empty:
            curves["LTR"] = accuracy_curve(matched, x="rewind_step", by="rewind_step")
            used.append(matched)
        rows = pd.concat(used)
        drops = lr_drops(rows)
        ltr_text = " LTR prunes after training and rewinds to the weights at t." if "LTR" in curves else ""
        drop_text = " Dash-dotted vertical lines mark the learning-rate drops." if drops else ""
        yield ReportFigure(
            f"accuracy-vs-step-{slug(percent(target))}-{ctx.setting}",
            f"Accuracy when pruning at step t, sparsity {percent(target)} — {ctx.label}",
            "Test accuracy (%) of each criterion when pruning after t training iterations and retraining the whole "
            f"schedule, against t; {spread_text(rows)}.{ltr_text}{drop_text}{dense_text(ctx)} "
            "(Frankle et al. 2021, §6, Fig. 6.)",
            Plot(plots.accuracy_vs_step, curves, dense=ctx.dense_percent(), lr_drops=drops,
                                   title=f"{ctx.label}, sparsity {percent(target)}"),
            common_hparams(rows), list(rows["id"]))
