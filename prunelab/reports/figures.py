"""Which figures a run store can support, and the data behind each: from tidy tables to :mod:`plots`.

Every figure is drawn per *setting* (one model, dataset and training recipe; see
:func:`prunelab.reports.tables.setting_of`) and only when the store holds the runs it needs: no
ablation panel without ablation runs, no mask image without a fully-connected first layer. Each
:class:`ReportFigure` carries the hyperparameters common to all the runs it shows, so a reader
knows what was held fixed, and a caption written from what the figure shows: a baseline, an
error bar or a guide line is mentioned only when the store has it. Accuracy is in percent throughout,
and layers are named by their module and its type ("conv1 (Conv2d)").
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from prunelab.experiments import runfiles
from prunelab.experiments.protocols.lottery import REWIND_CHOICES, ticket_labels
from prunelab.experiments.protocols.lottery import VARIANT_COLUMNS as LOTTERY_VARIANT
from prunelab.experiments.protocols.prune_at import method_labels
from prunelab.reports import plots
from prunelab.reports.tables import (
    RESULT_ONLY,
    aggregate,
    is_missing,
    is_reference,
    layers_table,
    of_protocol,
    protocol_labels,
    read_metrics,
    runs_of,
    runs_table,
)

_MAX_IMAGE_ROWS = 6


@dataclass
class ReportFigure:
    """A figure of the report: ``name`` (file stem), ``title``, ``caption`` (what it shows and the
    paper's figure it follows), ``hparams`` (settings shared by all its runs), ``runs`` (their ids)."""

    name: str
    title: str
    caption: str
    figure: Figure
    hparams: dict[str, Any] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)


@dataclass
class Context:
    """The runs of one setting, and where to read their files."""

    root: Path
    setting: str
    runs: pd.DataFrame  # every finished run of the setting
    layers: pd.DataFrame
    _labels: dict[str, str] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        first = self.runs.iloc[0]
        return f"{first['model']} on {first['dataset']}"

    def of_protocol(self, name: str) -> pd.DataFrame:
        """The runs of the protocol registered as ``name`` ("run", "lottery", ...)."""
        return runs_of(self.runs, name)

    def reference(self) -> pd.DataFrame:
        """The dense baseline's runs (:func:`prunelab.reports.tables.is_reference`)."""
        return self.runs[is_reference(self.runs)]

    def folder(self, run_id: str) -> Path:
        return self.root / run_id

    def dense(self) -> tuple[float, float | None] | None:
        """(mean, std) over seeds of the dense accuracy: the dense runs, else the accuracy runs record."""
        dense = self.reference()
        values = dense["test_accuracy"] if not dense.empty else (
            self.runs.drop_duplicates("seed")["dense_accuracy"])
        values = values.dropna().to_numpy(float)
        if values.size == 0:
            return None
        return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else None

    def dense_percent(self) -> tuple[float, float | None] | None:
        """:meth:`dense` in percent, as the accuracy axes show it."""
        dense = self.dense()
        return None if dense is None else (100 * dense[0], None if dense[1] is None else 100 * dense[1])

    def has_dense_line(self) -> bool:
        return self.dense() is not None

    def layer_label(self, name: str) -> str:
        """``"conv1 (Conv2d)"`` for the parameter ``conv1.weight`` of this setting's network (rebuilt from its
        model name, on the meta device: no memory, no initialization cost); the name itself when the
        network cannot be rebuilt (a model this version does not know)."""
        if self._labels is None:
            self._labels = _network_labels(str(self.runs.iloc[0]["model"]), str(self.runs.iloc[0]["dataset"]))
        return self._labels.get(name, name)

    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        """The entries of the run's ``metrics.jsonl``."""
        return read_metrics(self.folder(run_id) / runfiles.METRICS)


# ---- helpers -----------------------------------------------------------------------------------

def _network_labels(model: str, dataset: str) -> dict[str, str]:
    """Parameter name -> "module (Type)" of a registered model built for ``dataset``; {} when it cannot be built."""
    import torch

    from prunelab import data, models
    from prunelab.analysis import layer_labels

    try:
        info = data.info(dataset)
        try:
            with torch.device("meta"):
                net = models.create(model, num_classes=info["num_classes"], input_shape=info["input_shape"])
        except (RuntimeError, NotImplementedError, TypeError):  # a model whose construction computes on data
            net = models.create(model, num_classes=info["num_classes"], input_shape=info["input_shape"])
    except (ValueError, KeyError, RuntimeError, TypeError):
        return {}
    return layer_labels(net, [n for n, _ in net.named_parameters()])


def _seeds_text(rows: pd.DataFrame) -> str:
    """"3 seeds (0, 1, 2)" or "seed 0": what the error bars of a figure are computed over."""
    seeds = sorted(int(s) for s in rows["seed"].dropna().unique())
    listed = ", ".join(str(s) for s in seeds)
    return f"{len(seeds)} seeds ({listed})" if len(seeds) > 1 else f"seed {listed}"


def _spread_text(rows: pd.DataFrame, what: str = "error bars") -> str:
    """How the spread over seeds is drawn: a sentence true of ``rows`` (no error bars from one seed)."""
    per_point = rows.groupby([c for c in _config_columns(rows) if c != "id"], dropna=False)["seed"].nunique() \
        if len(rows) else pd.Series(dtype=int)
    if per_point.empty or per_point.max() < 2:
        return f"points are single runs ({_seeds_text(rows)}), so there are no {what}"
    return f"points are means over {_seeds_text(rows)}; {what} are the sample standard deviation over the seeds"


def _dense_text(ctx: Context) -> str:
    """The sentence on the gray dense line, only when the store has the dense accuracy."""
    if not ctx.has_dense_line():
        return ""
    dense = ctx.dense()
    band = " with a ±1 std band" if dense[1] is not None else ""
    return f" The dashed gray line is the dense network ({100 * dense[0]:.2f}%{band})."


def _config_columns(rows: pd.DataFrame) -> list[str]:
    """The hyperparameter columns of ``rows`` (everything but results and the seed) that hold a value."""
    skip = set(RESULT_ONLY) | {"seed", "label", "accuracy_percent"}
    return [c for c in rows.columns if c not in skip and rows[c].notna().any()]


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def common_hparams(rows: pd.DataFrame) -> dict[str, Any]:
    """The hyperparameters every run in ``rows`` shares (columns with one value), plus the seeds; results
    (accuracies, FLOPs, ...) are not hyperparameters and are left out."""
    skip = set(RESULT_ONLY) | {"id", "seed", "kind", "label"}
    out: dict[str, Any] = {}
    for col in rows.columns:
        if col in skip:
            continue
        values = rows[col].dropna().unique()
        if len(values) == 1 and rows[col].notna().all():
            value = values[0]
            out[col] = value.item() if hasattr(value, "item") else value
    kinds = sorted(rows["kind"].dropna().unique())
    out["kinds"] = ", ".join(kinds)
    out["seeds"] = ", ".join(str(s) for s in sorted(rows["seed"].dropna().unique()))
    out["runs"] = len(rows)
    return out


def _curve(rows: pd.DataFrame, x: str = "sparsity", by: str = "sparsity_target") -> plots.Curve:
    """Test accuracy in percent (mean and std over seeds) against ``x``, one point per value of ``by``."""
    agg = aggregate(rows, by=[by], metrics=["test_accuracy", x] if x != by else ["test_accuracy"])
    xs = agg[f"{x}_mean"] if x != by else agg[by]
    return plots.Curve(xs.to_numpy(float), 100 * agg["test_accuracy_mean"].to_numpy(float),
                       100 * agg["test_accuracy_std"].to_numpy(float))


def _no_ablation(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["ablation"].isna()]


def _percent(s: float) -> str:
    return f"{100 * s:.4g}%"


def _load_mask(folder: Path):
    from prunelab import Mask

    path = folder / runfiles.MASK
    if not path.is_file():
        raise FileNotFoundError(f"no mask.pt in {folder}")
    return Mask.load(path)


def _trained_weights(folder: Path, steps) -> dict:
    from prunelab.training import load_checkpoint

    return load_checkpoint(folder / runfiles.CHECKPOINTS / f"step_{int(steps)}.pt")["model"]


def _input_shape(dataset: str) -> tuple[int, ...] | None:
    from prunelab import data

    try:
        return tuple(data.info(dataset)["input_shape"])
    except ValueError:
        return None


def _lr_drops(runs: pd.DataFrame) -> list[int]:
    """The iterations where the learning rate drops (training.milestones), for vertical lines
    (Frankle et al. 2021, Fig. 6).

    Iterations per epoch come from a run's step count and its schedule length ``training.train``.
    """
    from prunelab.training.durations import Step

    if "training.milestones" not in runs.columns or runs["steps"].dropna().empty:
        return []
    first = runs.dropna(subset=["steps"]).iloc[0]
    text = first.get("training.milestones")
    if is_missing(text) or not str(text).strip():
        return []
    total = Step.parse(str(first.get("training.train", "0it")))
    per_epoch = (int(first["steps"]) - total.iterations) / total.epochs if total.epochs else None
    drops = []
    for m in str(text).split():
        d = Step.parse(m)
        if d.epochs and not per_epoch:
            return []
        drops.append(int(round(d.epochs * (per_epoch or 0) + d.iterations)))
    return drops


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _pick_sparsity(ctx: Context, init: pd.DataFrame) -> tuple[float, str]:
    """The sparsity at which to compare criteria layer by layer: the highest *matching* sparsity of
    Frankle et al. 2021 (§4 footnote 2: magnitude pruning after training still matches the dense accuracy, here within
    one standard deviation) among those pruned at initialization; else the highest sparsity most
    criteria share."""
    targets = sorted(init["sparsity_target"].dropna().unique())
    dense = ctx.dense()
    after = _no_ablation(ctx.of_protocol("run"))
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


def _second_conv(mask) -> str | None:
    convs = [n for n, t in mask.items() if t.dim() == 4]
    return convs[1] if len(convs) > 1 else (convs[0] if convs else None)


# ---- the figures -------------------------------------------------------------------------------

def _accuracy_vs_sparsity(ctx: Context) -> Iterable[ReportFigure]:
    prune = _no_ablation(ctx.of_protocol("run"))
    init = prune[prune["prune_at"] == "0it"]
    if init.empty:
        return
    curves, used = {}, []
    after = prune[(prune["prune_at"] == "end") & (prune["method"] == "magnitude")]
    if not after.empty:
        curves["magnitude after training"] = _curve(after)
        used.append(after)
    init = init.assign(label=method_labels(init))
    for label, part in init.groupby("label", sort=True):
        curves[label] = _curve(part)
        used.append(part)
    lot = _no_ablation(ctx.of_protocol("lottery"))
    ltr = lot[(lot["structure"] == "unstructured") & ~lot["rewind_to"].isin(REWIND_CHOICES)]
    for (rewind, rate, scope), part in ltr.groupby(["rewind_to", "rate", "scope"], sort=True, dropna=False):
        name = f"LTR rewind {rewind}" + (f" rate {rate:g}" if ltr["rate"].nunique() > 1 else "") + (
            f" {scope}" if ltr["scope"].nunique() > 1 else "")
        curves[name] = _curve(part)
        used.append(part)
    rows = pd.concat(used)
    baselines = [b for b, present in (("magnitude pruning after training", not after.empty),
                                      ("lottery-ticket rewinding", not ltr.empty)) if present]
    compared = f", with {_listing(baselines)} as {'a baseline' if len(baselines) == 1 else 'baselines'}" \
        if baselines else ""
    yield ReportFigure(
        f"accuracy-vs-sparsity-{ctx.setting}", f"Accuracy vs sparsity, pruning at initialization — {ctx.label}",
        f"Test accuracy (%) of each criterion pruning at initialization ({_listing(sorted(init['label'].unique()))}), "
        f"against sparsity on a log-density axis{compared}; {_spread_text(rows)}.{_dense_text(ctx)} "
        "(Frankle et al. 2021, Figs. 3 and 8.)",
        plots.accuracy_vs_sparsity(curves, dense=ctx.dense_percent(), title=ctx.label), common_hparams(rows),
        list(rows["id"]))


def _lottery_accuracy(ctx: Context) -> Iterable[ReportFigure]:
    lot = ctx.of_protocol("lottery")
    if lot.empty:
        return
    lot = lot.assign(label=ticket_labels(lot))
    curves = {label: _curve(part) for label, part in lot.groupby("label", sort=True)}
    yield ReportFigure(
        f"lottery-accuracy-{ctx.setting}", f"Iterative pruning: accuracy vs sparsity — {ctx.label}",
        f"Test accuracy (%) of each pruning level of iterative magnitude pruning against the level's sparsity, one "
        f"line per variant ({_listing(list(curves))}; after each pruning: {_lottery_treatments(lot)}); "
        f"{_spread_text(lot)}."
        f"{_dense_text(ctx)} (Paganini & Forde 2020, Fig. 2; lottery-ticket rewinding in Frankle et al. 2021, "
        "Fig. 8.)",
        plots.accuracy_vs_sparsity(curves, dense=ctx.dense_percent(), title=ctx.label), common_hparams(lot),
        list(lot["id"]))


_TREATMENTS = {"finetune": "finetuning the trained weights", "sign": "reinitializing to the signs of the weights",
               "sigma_sign": "reinitializing to sigma times the signs"}


def _lottery_treatments(lot: pd.DataFrame) -> str:
    """What the lottery runs of the store do to the weights after each pruning: rewinding (to which steps),
    finetuning, sign reinitialization."""
    treatments = []
    rewinds = sorted({str(r) for r in lot["rewind_to"].dropna() if r not in _TREATMENTS})
    if rewinds:
        treatments.append(f"rewinding to step {_listing(rewinds)}")
    treatments += [_TREATMENTS[r] for r in sorted(set(lot["rewind_to"].dropna()) & set(_TREATMENTS))]
    return _listing(treatments)


_ABLATIONS = {"shuffle": "shuffle (the mask permuted within each layer)",
              "reinit": "reinit (the kept weights reinitialized)", "invert": "invert (the lowest scores kept)",
              "fixed_variance": "fixed_variance (a fixed-variance initialization)"}

_ABLATION_TITLES = {"0it": ("at initialization", "Frankle et al. 2021, Fig. 4"),
                    "end": ("after training", "Frankle et al. 2021, Fig. 9")}


def _ablations(ctx: Context) -> Iterable[ReportFigure]:
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
            plain = _no_ablation(part)
            if not plain.empty:
                lines["unmodified"] = _curve(plain)
            for ablation, abl in part[part["ablation"].notna()].groupby("ablation", sort=True):
                lines[str(ablation)] = _curve(abl)
            panels[label] = lines
            used.append(part)
        when, figure_ref = _ABLATION_TITLES.get(prune_at,
            (f"at step {prune_at}", "Frankle et al. 2021, Figs. 4, 9 and 10"))
        rows = pd.concat(used)
        present = sorted(str(a) for a in rows["ablation"].dropna().unique())
        described = [_ABLATIONS.get(a, a) for a in present]
        unmodified = "unmodified and " if rows["ablation"].isna().any() else ""
        yield ReportFigure(
            f"ablations-{_slug(str(prune_at))}-{ctx.setting}", f"Ablations when pruning {when} — {ctx.label}",
            f"Test accuracy (%) against sparsity for each criterion pruning {when}, {unmodified}under "
            f"{'the ablation' if len(present) == 1 else 'each ablation'} in the store: {_listing(described)}; "
            f"{_spread_text(rows)}.{_dense_text(ctx)} ({figure_ref}; §5.)",
            plots.ablation_panels(panels, dense=ctx.dense_percent(), title=f"{ctx.label}, pruned {when}"),
            common_hparams(rows), list(rows["id"]))


def _accuracy_vs_step(ctx: Context) -> Iterable[ReportFigure]:
    prune = _no_ablation(ctx.of_protocol("run"))
    lot = _no_ablation(ctx.of_protocol("lottery"))
    ltr = lot[(lot["structure"] == "unstructured") & ~lot["rewind_to"].isin(REWIND_CHOICES)]
    for target, at in prune.groupby("sparsity_target", sort=True):
        if not (~at["prune_at"].isin(["0it", "end"])).any():
            continue  # only init. and after training: that is accuracy vs sparsity, not vs step
        at = at.assign(label=method_labels(at))
        curves = {label: _curve(part, x="prune_step", by="prune_step") for label, part in at.groupby("label")}
        used = [at]
        matched = ltr[(ltr["sparsity_target"] - target).abs() < 1e-3]
        if not matched.empty:
            curves["LTR"] = _curve(matched, x="rewind_step", by="rewind_step")
            used.append(matched)
        rows = pd.concat(used)
        drops = _lr_drops(rows)
        ltr_text = " LTR prunes after training and rewinds to the weights at t." if "LTR" in curves else ""
        drop_text = " Dash-dotted vertical lines mark the learning-rate drops." if drops else ""
        yield ReportFigure(
            f"accuracy-vs-step-{_slug(_percent(target))}-{ctx.setting}",
            f"Accuracy when pruning at step t, sparsity {_percent(target)} — {ctx.label}",
            "Test accuracy (%) of each criterion when pruning after t training iterations and retraining the whole "
            f"schedule, against t; {_spread_text(rows)}.{ltr_text}{drop_text}{_dense_text(ctx)} "
            "(Frankle et al. 2021, §6, Fig. 6.)",
            plots.accuracy_vs_step(curves, dense=ctx.dense_percent(), lr_drops=drops,
                                   title=f"{ctx.label}, sparsity {_percent(target)}"),
            common_hparams(rows), list(rows["id"]))


def _compared_at(ctx: Context) -> tuple[pd.DataFrame, float, str] | None:
    """The unablated runs pruned at init. (and magnitude after training) at the comparison sparsity."""
    prune = _no_ablation(ctx.of_protocol("run"))
    init = prune[prune["prune_at"] == "0it"]
    if init.empty:
        return None
    target, why = _pick_sparsity(ctx, init)
    chosen = prune[((prune["prune_at"] == "0it") | ((prune["prune_at"] == "end") & (prune["method"] == "magnitude")))
                   & ((prune["sparsity_target"] - target).abs() < 1e-9)]
    labels = method_labels(chosen)
    labels[chosen["prune_at"] == "end"] = "magnitude after training"
    return chosen.assign(label=labels), target, why


def _layer_sparsity(ctx: Context) -> Iterable[ReportFigure]:
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
        f"layer-sparsity-{ctx.setting}", f"Per-layer sparsity at {_percent(target)} — {ctx.label}",
        f"Sparsity (%) of each prunable layer (input to output) chosen by each criterion at {_percent(target)}, "
        f"{why}; {'mean over ' + _seeds_text(shown) if shown['seed'].nunique() > 1 else _seeds_text(shown)} "
        "(Frankle et al. 2021, Appendix J, Fig. 15).",
        plots.layer_sparsity_bars(per, title=f"{ctx.label}, sparsity {_percent(target)}"),
        common_hparams(chosen), list(chosen["id"]))


def _neuron_collapse(ctx: Context) -> Iterable[ReportFigure]:
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
            result = analysis.neuron_collapse(_load_mask(ctx.folder(run_id)))
            thresholds = result["thresholds"]
            fractions.append(result["fraction"])
        values = np.asarray(fractions, float)
        std = values.std(axis=0, ddof=1) if len(values) > 1 else None
        curves[label] = plots.Curve(thresholds, values.mean(axis=0), std)
    spread = "shaded: the standard deviation over " + _seeds_text(chosen) if chosen.groupby("label")["seed"].nunique(
    ).max() > 1 else _seeds_text(chosen)
    shuffled_text = "; \"shuffled\" masks are the shuffle ablation of the same criterion" if not shuffled.empty else ""
    yield ReportFigure(
        f"neuron-collapse-{ctx.setting}", f"Neuron collapse at {_percent(target)} — {ctx.label}",
        f"Percent of neurons (units, conv channels) whose incoming weights are at least s sparse, against s, "
        f"for each criterion at {_percent(target)}, {why}{shuffled_text}; {spread} "
        "(Frankle et al. 2021, §5, Fig. 5).",
        plots.neuron_collapse(curves, title=f"{ctx.label}, sparsity {_percent(target)}"),
        common_hparams(chosen), list(chosen["id"]))


def _density_vs_compression(ctx: Context) -> Iterable[ReportFigure]:
    prune = _no_ablation(ctx.of_protocol("run"))
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
        + f"; {'means over ' + _seeds_text(rows) if rows['seed'].nunique() > 1 else _seeds_text(rows)} "
        "(Tanaka et al. 2020, §3, Fig. 2).",
        plots.layer_density_vs_compression(panels, title=ctx.label), common_hparams(rows), list(rows["id"]))


def _any_collapse(panels: dict) -> bool:
    return any(d <= 0 for lines in panels.values() for _, per in lines for d in per.values())


def _conservation(ctx: Context) -> Iterable[ReportFigure]:
    """SynFlow's scores on the initial network of the smallest seed: data-free, so the report needs no data."""
    import prunelab
    from prunelab import analysis, models
    from prunelab.analysis import layer_labels

    prune = ctx.of_protocol("run")
    synflow = prune[prune["method"] == "synflow"]
    if synflow.empty:
        return
    first = synflow.sort_values("seed").iloc[0]
    input_shape = _input_shape(first["dataset"])
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
        plots.conservation(neurons, weights, title=f"{ctx.label}, seed {int(first['seed'])}"), hparams,
        [str(first["id"])])


def _jaccard(ctx: Context) -> Iterable[ReportFigure]:
    """Per layer, Jaccard distance of each variant's masks to a reference variant's, same seed and level
    (Paganini & Forde 2020, §4): varying the structure (Figs. 3-4) or the weight treatment,
    rewinding vs finetuning (Fig. 9)."""
    from prunelab import analysis

    lot = ctx.of_protocol("lottery")
    if lot.empty:
        return
    for vary, preferred, ref_fig in (("structure", ("unstructured", "l2"), "Figs. 3-4"),
                                     ("rewind_to", ("0it",), "Fig. 9")):
        fixed = [c for c in LOTTERY_VARIANT if c != vary]
        for k, (_, group) in enumerate(lot.groupby(fixed, sort=True, dropna=False)):
            values = sorted(group[vary].astype(str).unique())
            if len(values) < 2:
                continue
            reference = next((p for p in preferred if p in values), values[0])
            ref_rows = group[group[vary].astype(str) == reference]
            panels: dict[str, dict[str, plots.Curve]] = {}
            used = [ref_rows]
            for other in values:
                if other == reference:
                    continue
                rows = group[group[vary].astype(str) == other]
                by_level: dict[int, list[dict[str, float]]] = {}
                for _, row in rows.iterrows():
                    match = ref_rows[(ref_rows["seed"] == row["seed"]) & (ref_rows["level"] == row["level"])]
                    if match.empty:
                        continue
                    sim = analysis.jaccard_per_layer(_load_mask(ctx.folder(match.iloc[0]["id"])),
                                                     _load_mask(ctx.folder(row["id"])), shared_only=True)
                    by_level.setdefault(int(row["level"]), []).append({n: 1 - s for n, s in sim.items()})
                    used.append(rows.loc[[row.name]])
                if not by_level:
                    continue
                levels = sorted(by_level)
                for layer in by_level[levels[0]][0]:
                    per = [np.array([d[layer] for d in by_level[lv]]) for lv in levels]
                    panels.setdefault(layer, {})[other] = plots.Curve(
                        levels, [p.mean() for p in per], [p.std(ddof=1) if p.size > 1 else np.nan for p in per])
            if not panels:
                continue
            order = list(_load_mask(ctx.folder(ref_rows.iloc[0]["id"])))  # panels in the network's layer order
            panels = {ctx.layer_label(layer): lines for layer, lines in
                      sorted(panels.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))}
            shown = pd.concat(used).drop_duplicates("id")
            yield ReportFigure(
                f"jaccard-{vary.replace('_', '-')}-{k}-{ctx.setting}",
                f"Mask similarity across pruning iterations ({vary}) — {ctx.label}",
                f"Jaccard distance (1 - intersection over union of the kept weights) between the masks of "
                f"{vary} = {reference} and those of the other values of {vary}, same seed and pruning iteration, "
                f"one panel per layer; {_spread_text(shown)} (Paganini & Forde 2020, §4, {ref_fig}).",
                plots.jaccard_vs_iteration(panels, reference=f"{vary}={reference}", title=ctx.label),
                common_hparams(shown), list(shown["id"]))


def _first_layer_masks(ctx: Context) -> Iterable[ReportFigure]:
    prune = _no_ablation(ctx.of_protocol("run"))
    init = prune[prune["prune_at"] == "0it"]
    if init.empty:
        return
    input_shape = _input_shape(init.iloc[0]["dataset"])
    if input_shape is None:
        return
    first_run = init.iloc[0]
    mask = _load_mask(ctx.folder(first_run["id"]))
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
        image = plots.first_layer_image(_load_mask(ctx.folder(row["id"]))[name].numpy(), input_shape)
        grid.setdefault(f"sparsity {_percent(row['sparsity_target'])}", {})[row["label"]] = image
    yield ReportFigure(
        f"first-layer-masks-{ctx.setting}", f"First-layer masks — {ctx.label}",
        f"The mask of the first fully-connected layer, {ctx.layer_label(name)}, averaged over its units and reshaped "
        "to the input "
        "image: bright pixels keep their connections; one column per criterion, one row per sparsity "
        f"(seed {int(seed)}; Lee et al. 2019, Fig. 2).",
        plots.mask_images(grid, title=ctx.label), common_hparams(rows), list(rows["id"]))


def _conv_masks(ctx: Context) -> Iterable[ReportFigure]:
    lot = ctx.of_protocol("lottery")
    if lot.empty:
        return
    seed = lot["seed"].min()
    lot = lot[lot["seed"] == seed]
    lot = lot.assign(label=ticket_labels(lot))
    mask = _load_mask(ctx.folder(lot.iloc[0]["id"]))
    layer = _second_conv(mask)
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
            weight = _trained_weights(folder, row["steps"])[layer].numpy()
            grid.setdefault(f"iteration {int(level)}", {})[label] = (weight, _load_mask(folder)[layer].numpy())
            used.append(part.iloc[:1])
    rows = pd.concat(used)
    yield ReportFigure(
        f"conv-masks-{ctx.setting}", f"Masked weights of {ctx.layer_label(layer)} — {ctx.label}",
        f"Trained weights of the convolution {ctx.layer_label(layer)} under each pruning variant, at "
        f"{'two pruning iterations' if len(levels) > 1 else 'one pruning iteration'}: input "
        "channels in rows, output channels in columns, one small square per kernel; pruned weights gray, kept "
        f"positive weights red, negative blue (seed {int(seed)}; Paganini & Forde 2020, §4, Fig. 5).",
        plots.conv_masks(grid, title=ctx.label), common_hparams(rows), list(rows["id"]))


def _weight_trajectories(ctx: Context, n_weights: int = 40) -> Iterable[ReportFigure]:
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
            states.append(_trained_weights(ctx.folder(base.iloc[0]["id"]), base.iloc[0]["steps"]))
            masks.append(None)
            x.append(0.0)
        for _, row in part.iterrows():
            folder = ctx.folder(row["id"])
            states.append(_trained_weights(folder, row["steps"]))
            masks.append(_load_mask(folder))
            x.append(100 * float(row["sparsity"]))
        last = masks[-1]
        names = [n for n in (_second_conv(last), list(last)[-1]) if n is not None]
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
            f"weight-trajectories-{_slug(label)}-{ctx.setting}", f"Weight trajectories ({label}) — {ctx.label}",
            f"Values after training of up to {n_weights} randomly chosen weights of {_listing(list(panels))} at "
            "consecutive pruning levels (x: sparsity" + (", 0 = the dense network" if not base.empty else "")
            + f"); a line ends when its weight is pruned (seed {int(seed)}; Paganini & Forde 2020, §5, Figs. 6-7).",
            plots.weight_trajectories(panels, title=f"{ctx.label}, {label}"), common_hparams(shown),
            list(shown["id"]))


# ---- training cost (Frankle et al. 2021, Fig. 1; Evci et al. 2020, App. H) -----------------------

_FLOPS_CONVENTION = (
    "A training step costs 3 × the forward FLOPs of its batch at the step's layer densities (backward = 2 × "
    "forward; RigL adds its dense-gradient passes; Evci et al. 2020, App. H), and totals include the dense "
    "training a protocol needs first (the dense steps to the pruning step, the dense run and earlier levels "
    "of iterative pruning).")
_COST_COLUMNS = ["train_flops", "total_train_flops", "density_auc", "forward_flops", "dense_forward_flops",
                 "mask_updates", "accuracy_percent"]


def _cost_hparams(rows: pd.DataFrame) -> dict[str, Any]:
    """:func:`common_hparams` without the cost results (shared FLOPs are a result, not a setting)."""
    return common_hparams(rows.drop(columns=_COST_COLUMNS, errors="ignore"))


def _targets(rows: pd.DataFrame) -> list[float]:
    return sorted({round(float(t), 6) for t in rows["sparsity_target"].dropna()})


def _at_target(rows: pd.DataFrame, target: float) -> pd.DataFrame:
    return rows[(rows["sparsity_target"].astype(float) - target).abs() < 1e-6]


def _read_result(ctx: Context, run_id: str) -> dict[str, Any]:
    return runfiles.read(ctx.folder(run_id) / runfiles.RESULT_JSON) or {}


def _read_result_field(row: pd.Series, key: str):
    value = row.get(key)
    return None if is_missing(value) else value


def curve_area(curve: list, end: float) -> float:
    """Mean density of a ``density_curve`` held from its last breakpoint until ``end`` (its ``density_auc``)."""
    steps = [float(s) for s, _ in curve] + [float(end)]
    area = sum(float(d) * (b - a) for (_, d), a, b in zip(curve, steps, steps[1:]))
    return area / steps[-1] if steps[-1] > 0 else 1.0


def curve_end(curve: list, row: pd.Series) -> int:
    """The cumulative step at which a run's ``density_curve`` ends (its recorded ``protocol_steps``)."""
    end = _read_result_field(row, "protocol_steps")
    if end is None or int(end) <= int(curve[-1][0]):
        raise ValueError(f"run {row['id']}: its result has no protocol_steps past its density curve")
    return int(end)


def _training_cost_over_time(ctx: Context) -> Iterable[ReportFigure]:
    runs = _no_ablation(ctx.runs)
    runs = runs[runs["steps"].notna()]
    sparse = runs[~is_reference(runs)]
    if sparse.empty or "density_auc" not in runs.columns or sparse["density_auc"].isna().all():
        return
    runs = runs[runs["density_auc"].notna()].assign(label=lambda d: protocol_labels(d, methods=False))
    reference = set(runs.loc[is_reference(runs), "id"])  # the dense runs: in every panel
    first = runs.sort_values(["seed", "method", "id"], na_position="last", kind="stable")
    lines_of: dict[float | None, dict[str, tuple]] = {}
    used = []
    for (label, target), part in first.groupby(["label", "sparsity_target"], sort=True, dropna=False):
        row = part.iloc[0]  # the first seed (and the first criterion: all prune the same weights' share)
        result = _read_result(ctx, row["id"])
        curve = result.get("density_curve")
        if not curve or result.get("protocol_steps") is None:
            continue
        row = row.copy()
        row["protocol_steps"] = result["protocol_steps"]
        key = None if row["id"] in reference or is_missing(target) else round(float(target), 6)  # every panel
        lines_of.setdefault(key, {})[label] = ([s for s, _ in curve], [d for _, d in curve], curve_end(curve, row))
        used.append(part.iloc[:1])
    dense_lines = lines_of.pop(None, {})
    if not lines_of:
        return
    panels = {f"sparsity {_percent(t)}": {**dense_lines, **lines} for t, lines in sorted(lines_of.items())}
    rows = pd.concat(used)
    seeds = ", ".join(str(int(s)) for s in sorted(rows["seed"].unique()))
    yield ReportFigure(
        f"training-cost-over-time-{ctx.setting}", f"Training cost over time — {ctx.label}",
        "Overall density (fraction of the prunable weights kept) against the training step, counted over the "
        "whole protocol including the dense training it needs first, one step function per protocol and one "
        "panel per sparsity target" + (", the dense run in every panel" if dense_lines else "")
        + "; each line is one run of seed " + seeds + " (the "
        "first seed; for pruning at a step, the first criterion: all reach the same density) drawn from its "
        "density_curve, whose last density holds to the end of the protocol's training (protocol_steps) "
        "(Frankle et al. 2021, Fig. 1).",
        plots.density_over_time(panels, title=ctx.label), _cost_hparams(rows), list(rows["id"]))


def _accuracy_vs_training_cost(ctx: Context) -> Iterable[ReportFigure]:
    runs = _no_ablation(ctx.runs)
    if "total_train_flops" not in runs.columns:
        return
    runs = runs[pd.to_numeric(runs["total_train_flops"], errors="coerce").notna() & runs["test_accuracy"].notna()]
    if is_reference(runs).all():
        return
    runs = runs.assign(label=protocol_labels(runs), total_train_flops=runs["total_train_flops"].astype(float),
                       accuracy_percent=100 * runs["test_accuracy"])
    dense, sparse = runs[is_reference(runs)], runs[~is_reference(runs)]

    def point(rows: pd.DataFrame) -> plots.Curve:
        x = rows["total_train_flops"].to_numpy(float)
        y = rows["accuracy_percent"].to_numpy(float)
        return plots.Curve([x.mean()], [y.mean()], [y.std(ddof=1) if y.size > 1 else np.nan])

    panels: dict[str, dict[str, plots.Curve]] = {}
    for target in _targets(sparse):
        at = _at_target(sparse, target)
        lines = {"dense": point(dense)} if not dense.empty else {}
        lines.update({label: point(part) for label, part in at.groupby("label", sort=True)})
        panels[f"sparsity {_percent(target)}"] = lines
    rows = pd.concat([dense, sparse[sparse["sparsity_target"].notna()]])
    yield ReportFigure(
        f"accuracy-vs-training-cost-{ctx.setting}", f"Accuracy vs training cost — {ctx.label}",
        "Test accuracy (%) against the total training FLOPs (log scale) of each protocol, one panel per sparsity "
        f"target{', the dense network in every panel' if not dense.empty else ''}; {_spread_text(rows)}. "
        f"{_FLOPS_CONVENTION}",
        plots.accuracy_vs_cost(panels, title=ctx.label), _cost_hparams(rows), list(rows["id"]))


# ---- training curves ----------------------------------------------------------------------------

_CURVE_METRICS = {"test_accuracy": ("Test accuracy (%)", 100.0), "test_loss": ("Test loss", 1.0)}


def _curve_labels(rows: pd.DataFrame) -> pd.Series:
    """One label per configuration (the runs that differ only by their seed share it): the protocol's label,
    the ablation when there is one; configurations that would share a label are numbered."""
    labels = protocol_labels(rows)
    ablated = rows["ablation"].notna()
    labels[ablated] = labels[ablated] + " " + rows.loc[ablated, "ablation"].astype(str)
    config = [c for c in _config_columns(rows) if c != "id"]
    keys = rows[config].apply(lambda r: "|".join(map(repr, r)), axis=1) if config else \
        pd.Series("", index=rows.index)
    named: dict[str, str] = {}
    for key, label in zip(keys, labels):
        if key not in named:
            taken = sum(1 for v in named.values() if v == label or v.startswith(label + " #"))
            named[key] = label if taken == 0 else f"{label} #{taken + 1}"
    return keys.map(named)


def _replicates(ctx: Context, rows: pd.DataFrame, metric: str, scale: float) -> plots.Replicates:
    """Each run's curve of ``metric`` from its metrics.jsonl, and their mean and std per step."""
    runs, points = [], []
    for run_id in rows["id"]:
        entries = [m for m in ctx.metrics(run_id) if isinstance(m.get(metric), (int, float))]
        x = [int(m["step"]) for m in entries]
        y = [scale * float(m[metric]) for m in entries]
        if x:
            runs.append(plots.Curve(x, y))
            points += [(step, value) for step, value in zip(x, y)]
    if not points:
        raise ValueError(f"no {metric} in the metrics.jsonl of runs {', '.join(rows['id'])}")
    per_step = pd.DataFrame(points, columns=["step", "value"]).groupby("step")["value"]
    mean, std = per_step.mean(), per_step.std(ddof=1)
    return plots.Replicates(plots.Curve(mean.index.to_numpy(float), mean.to_numpy(float), std.to_numpy(float)), runs)


def _learning_curves(ctx: Context) -> Iterable[ReportFigure]:
    """Test accuracy and loss against the step from every run's metrics.jsonl, one figure per sparsity target
    (the dense runs in each), the seeds of a configuration as thin lines around their mean and its band."""
    dense, sparse = ctx.reference(), ctx.runs[~is_reference(ctx.runs)]
    groups = [(t, pd.concat([dense, _at_target(sparse, t)])) for t in _targets(sparse)] or [(None, dense)]
    for target, rows in groups:
        if rows.empty:
            continue
        rows = rows.assign(label=_curve_labels(rows))
        order = sorted(rows["label"].unique(), key=lambda lab: (lab != "dense", lab))
        panels = {title: {label: _replicates(ctx, rows[rows["label"] == label], metric, scale) for label in order}
                  for metric, (title, scale) in _CURVE_METRICS.items()}
        drops = _lr_drops(rows)
        seeds = rows.groupby("label")["seed"].nunique()
        what = f"sparsity {_percent(target)}" if target is not None else "the dense network"
        bands = ("thin lines are single runs, thick lines the mean over the seeds of a configuration "
                 f"({_seeds_text(rows)}) with a ±1 standard deviation band") if seeds.max() > 1 else \
            f"one run per configuration ({_seeds_text(rows)}), so no band"
        rewound = rows[of_protocol(rows, "lottery") & rows["rewind_step"].fillna(0).gt(0)]
        yield ReportFigure(
            f"learning-curves-{_slug(_percent(target)) if target is not None else 'dense'}-{ctx.setting}",
            f"Learning curves, {what} — {ctx.label}",
            f"Test accuracy (%) and test loss against the training iteration, at each evaluation of the metrics "
            f"files, for {_listing(order)}"
            + (" (the dense network for reference)" if target is not None and not dense.empty else "")
            + f"; {bands}."
            + (" A rewound lottery ticket trains from its rewinding step." if not rewound.empty else "")
            + (" Dash-dotted vertical lines mark the learning-rate drops." if drops else ""),
            plots.learning_curves(panels, lr_drops=drops, title=f"{ctx.label}, {what}"), common_hparams(rows),
            list(rows["id"]))


BUILDERS: list[Callable[[Context], Iterable[ReportFigure]]] = [
    _accuracy_vs_sparsity, _ablations, _accuracy_vs_step, _layer_sparsity, _neuron_collapse,
    _density_vs_compression, _conservation, _first_layer_masks, _lottery_accuracy, _jaccard, _conv_masks,
    _weight_trajectories, _training_cost_over_time, _accuracy_vs_training_cost, _learning_curves,
]


def report_figures(root: str | os.PathLike, runs: pd.DataFrame | None = None,
                   layers: pd.DataFrame | None = None) -> tuple[list[ReportFigure], list[str]]:
    """Every figure the store at ``root`` has data for, and notes on figures that could not be drawn.

    A figure whose files are missing or unreadable (a deleted checkpoint, a mask from another model)
    is skipped with a note rather than failing the whole report.
    """
    root = Path(root)
    runs = runs_table(root) if runs is None else runs
    layers = layers_table(root) if layers is None else layers
    figures: list[ReportFigure] = []
    notes: list[str] = []
    done = runs[runs["status"] == "done"]
    for setting, part in done.groupby("setting", sort=True):
        ctx = Context(root, str(setting), part.reset_index(drop=True), layers[layers["id"].isin(part["id"])])
        for build in BUILDERS:
            what = build.__name__.strip("_").replace("_", " ")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    figures.extend(build(ctx))
            except (FileNotFoundError, KeyError, ValueError, RuntimeError, OSError) as e:
                notes.append(f"{ctx.label} ({setting}): {what} skipped: {' '.join(str(e).split())}")
    return figures, notes
