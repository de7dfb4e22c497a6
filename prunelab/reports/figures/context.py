"""What every figure of the report starts from: the runs of one setting (:class:`Context`), the figure it
yields (:class:`ReportFigure`), and the readers of the run files and table columns the figures share
(masks, trained weights, accuracy curves over seeds, learning-rate drops)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from prunelab.experiments import runfiles
from prunelab.reports import plots
from prunelab.reports.tables import (
    aggregate,
    is_missing,
    is_reference,
    read_metrics,
    runs_of,
)


class Plot:
    """A plot described but not drawn yet: a function of :mod:`prunelab.reports.plots` and its arguments.

    Builders describe their figures and the report draws them later, because the arguments are the plain
    data a figure shows: a report compares their digest with the one of the files it drew before and
    draws only the figures whose data changed (:mod:`prunelab.reports.figure_builds`)."""

    def __init__(self, function: Callable[..., Figure], /, *args: Any, **kwargs: Any):
        self.function, self.args, self.kwargs = function, args, kwargs

    def draw(self) -> Figure:
        return self.function(*self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"Plot({self.function.__module__}.{self.function.__qualname__})"


@dataclass
class ReportFigure:
    """A figure of the report: ``name`` (file stem), ``title``, ``caption`` (what it shows and the
    paper's figure it follows), ``plot`` (what to draw), ``hparams`` (settings shared by all its runs),
    ``runs`` (their ids). ``figure`` draws the plot on first use."""

    name: str
    title: str
    caption: str
    plot: Plot
    hparams: dict[str, Any] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    _figure: Figure | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def figure(self) -> Figure:
        if self._figure is None:
            self._figure = self.plot.draw()
        return self._figure


@dataclass
class Context:
    """The runs of one setting, and where to read their files."""

    root: Path
    setting: str
    runs: pd.DataFrame  # every finished run of the setting
    layers: pd.DataFrame
    _labels: dict[str, str] | None = field(default=None, repr=False)
    _metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

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
        """The entries of the run's ``metrics.jsonl``, read once per context (a learning-curve figure reads the
        dense runs and each metric of a run again)."""
        if run_id not in self._metrics:
            self._metrics[run_id] = read_metrics(self.folder(run_id) / runfiles.METRICS)
        return self._metrics[run_id]


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


def accuracy_curve(rows: pd.DataFrame, x: str = "sparsity", by: str = "sparsity_target") -> plots.Curve:
    """Test accuracy in percent (mean and std over seeds) against ``x``, one point per value of ``by``."""
    agg = aggregate(rows, by=[by], metrics=["test_accuracy", x] if x != by else ["test_accuracy"])
    xs = agg[f"{x}_mean"] if x != by else agg[by]
    return plots.Curve(xs.to_numpy(float), 100 * agg["test_accuracy_mean"].to_numpy(float),
                       100 * agg["test_accuracy_std"].to_numpy(float))


def no_ablation(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["ablation"].isna()]


def load_mask(folder: Path):
    from prunelab import Mask

    path = folder / runfiles.MASK
    if not path.is_file():
        raise FileNotFoundError(f"no mask.pt in {folder}")
    return Mask.load(path)


def trained_weights(folder: Path, steps) -> dict:
    from prunelab.training import load_checkpoint

    return load_checkpoint(folder / runfiles.CHECKPOINTS / f"step_{int(steps)}.pt")["model"]


def dataset_input_shape(dataset: str) -> tuple[int, ...] | None:
    from prunelab import data

    try:
        return tuple(data.info(dataset)["input_shape"])
    except ValueError:
        return None


def lr_drops(runs: pd.DataFrame) -> list[int]:
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


def second_conv(mask) -> str | None:
    convs = [n for n, t in mask.items() if t.dim() == 4]
    return convs[1] if len(convs) > 1 else (convs[0] if convs else None)


def sparsity_targets(rows: pd.DataFrame) -> list[float]:
    return sorted({round(float(t), 6) for t in rows["sparsity_target"].dropna()})


def at_target(rows: pd.DataFrame, target: float) -> pd.DataFrame:
    return rows[(rows["sparsity_target"].astype(float) - target).abs() < 1e-6]
