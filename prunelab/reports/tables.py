"""Tidy tables from the run store: one row per run, one row per (run, layer), one row per (run, step,
metric) of the training curves, and seed aggregates.

The rows are flat so that pandas can group them without knowing the store's JSON layout: the
swept hyperparameters get short names (``method``, ``sparsity_target``, ``prune_at``, ``ablation``,
``level``, ``rewind_to``, ``structure`` ...), the fixed ones keep their section as a prefix
(``training.lr``, ``model.init``). A ``setting`` column is a short hash of everything that fixes the
dense network except the seed (model, dataset, training), so figures and aggregates never mix
networks trained differently.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prunelab.experiments.protocols import protocol_of_kind
from prunelab.experiments.protocols.base import table_value

# Metrics averaged over seeds by :func:`aggregate` (``drop`` = dense accuracy - test accuracy).
METRICS = ["test_accuracy", "dense_accuracy", "drop", "sparsity", "test_loss", "wall_time"]

# Columns read from the run's result rather than its hyperparameters: never grouped on.
RESULT_COLUMNS = ["status", "sparsity", "prune_step", "rewind_step", "steps", "layer_collapse", "test_accuracy",
                  "dense_accuracy", "drop", "test_loss", "wall_time"]

# Results of a run (never hyperparameters): left out of the columns :func:`metrics_table` repeats per row.
RESULT_ONLY = [*RESULT_COLUMNS, "train_flops", "total_train_flops", "density_auc", "forward_flops",
               "dense_forward_flops", "mask_updates"]

# The leading columns of :func:`metrics_table`.
METRIC_COLUMNS = ["id", "step", "epoch", "metric", "value"]

LEADING = ["id", "setting", "kind", "status", "model", "dataset", "seed", "method", "sparsity_target", "sparsity",
           "prune_at", "prune_step", "ablation", "level", "rate", "rewind_to", "rewind_step", "structure", "scope",
           "iterations", "schedule", "batch_per_class", "distribution", "test_accuracy", "dense_accuracy", "drop",
           "test_loss", "train_flops", "total_train_flops", "density_auc", "forward_flops", "layer_collapse",
           "wall_time", "steps"]

_MISSING = object()  # a field an older version's defaults lack: always hashed


@functools.cache
def _section_defaults() -> dict[str, dict[str, Any]]:
    """The JSON of each section's default values, as ``hparams.json`` records them (computed once, not per run)."""
    from prunelab.experiments.hparams import DataHparams, ModelHparams, identity_dict
    from prunelab.training.settings import TrainSettings

    return {name: json.loads(json.dumps(identity_dict(cls())))
            for name, cls in (("model", ModelHparams), ("dataset", DataHparams), ("training", TrainSettings))}


def setting_of(hparams: dict[str, Any]) -> str:
    """8 hex digits naming (model, dataset, training) of a run: the seed-independent dense network. Like a run
    id it hashes the non-default values only, so a field added later (with its default) splits no setting."""
    defaults = _section_defaults()
    parts = {k: {f: v for f, v in (hparams.get(k) or {}).items() if defaults[k].get(f, _MISSING) != v}
             for k in defaults}
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_row(run_id: str, hp: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    """One flat row for a run (see the module docstring for the column names)."""
    result = result or {}
    kind = hp.get("kind", result.get("kind"))
    row: dict[str, Any] = {"id": run_id, "setting": setting_of(hp), "kind": kind,
                           "status": result.get("status", "unfinished"),
                           "model": hp.get("model", {}).get("model"), "dataset": hp.get("dataset", {}).get("dataset"),
                           "seed": hp.get("seed")}
    try:
        row.update(protocol_of_kind(kind).table_row(hp))
    except ValueError:  # a kind this version does not know: its settings are left out of the table
        pass
    for key in ("sparsity", "prune_step", "rewind_step", "steps", "test_accuracy", "dense_accuracy", "test_loss",
                "wall_time", "train_flops", "total_train_flops", "density_auc", "forward_flops", "dense_forward_flops",
                "mask_updates"):
        if key in result:
            row[key] = result[key]
    if "layer_collapse" in result:
        row["layer_collapse"] = " ".join(result["layer_collapse"])
    acc, dense = result.get("test_accuracy"), result.get("dense_accuracy")
    row["drop"] = dense - acc if acc is not None and dense is not None else None
    for section in ("model", "dataset", "training"):
        for key, value in (hp.get(section) or {}).items():
            if not (section in ("model", "dataset") and key == section):
                row[f"{section}.{key}"] = table_value(value)
    return row


def runs_table(root: str | os.PathLike) -> pd.DataFrame:
    """One row per run of the store at ``root``, unfinished runs included (status ``unfinished``).

    Raises FileNotFoundError when ``root`` is not a folder.
    """
    from prunelab.experiments.store import RunStore

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run store {root} does not exist (give --root the folder the runs were written to)")
    rows = [run_row(run_id, hp, result) for run_id, hp, result in RunStore(root).runs()]
    return _ordered(pd.DataFrame(rows))


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    for col in LEADING:
        if col not in df.columns:
            df[col] = None
    rest = sorted(c for c in df.columns if c not in LEADING)
    df = df[LEADING + rest]
    for col in ("seed", "level", "prune_step", "rewind_step", "steps", "iterations", "batch_per_class"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("sparsity_target", "sparsity", "rate", "test_accuracy", "dense_accuracy", "drop", "test_loss",
                "wall_time"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    sort = ["setting", "kind", "method", "structure", "prune_at", "ablation", "sparsity_target", "level", "seed", "id"]
    return df.sort_values(sort, na_position="first", kind="stable").reset_index(drop=True)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a ``metrics.jsonl`` (none when the file is missing). A line that is not a JSON
    object is a damaged file: ValueError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if not isinstance(entry, dict) or "step" not in entry:
            raise ValueError(f"{path}: line {number} is not a metrics entry")
        entries.append(entry)
    return entries


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metrics_table(root: str | os.PathLike, hparams: bool = True) -> pd.DataFrame:
    """Every run's training curves from its ``metrics.jsonl``, in long ("tidy") form: one row per
    (run, evaluation step, metric).

    Columns: ``id``, ``step`` (training iterations), ``epoch``, ``metric`` (``test_accuracy`` as a
    fraction, ``test_loss``, ``train_loss`` = mean training loss since the previous evaluation, ``lr``),
    ``value``; then, with ``hparams``, the run's hyperparameter columns named as in :func:`runs_table`
    (``setting``, ``kind``, ``model``, ``dataset``, ``seed``, ``method``, ``sparsity_target``, ...,
    ``training.lr``) and its ``status``, so that curves group by configuration without a merge::

        df = metrics_table("runs")
        acc = df[df.metric == "test_accuracy"]
        acc.groupby(["method", "sparsity_target", "step"])["value"].agg(["mean", "std"])   # over seeds
        df.pivot_table(index=["id", "step"], columns="metric", values="value")         # wide, per step

    Only observed numbers are rows (no NaN rows: the evaluation at the start has no training loss).
    Unfinished runs are included (their status says so); a run with a damaged ``metrics.jsonl`` is left
    out with a :class:`~prunelab.experiments.store.SkippedRunWarning` naming the file.
    """
    import warnings

    from prunelab.experiments import runfiles
    from prunelab.experiments.store import SkippedRunWarning

    runs = runs_table(root)
    rows = []
    for run_id in runs["id"]:
        path = Path(root) / run_id / runfiles.METRICS
        try:
            entries = read_metrics(path)
        except (ValueError, OSError) as e:
            warnings.warn(f"skipped the metrics of run {run_id}: {e}", SkippedRunWarning, stacklevel=2)
            continue
        for entry in entries:
            epoch = entry.get("epoch")
            for metric, value in entry.items():
                if metric not in ("step", "epoch") and _is_number(value):
                    rows.append((run_id, entry["step"], epoch, metric, float(value)))
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    df["step"] = df["step"].astype("int64")
    df["epoch"] = pd.to_numeric(df["epoch"], errors="coerce").astype(float)
    df["value"] = df["value"].astype(float)
    if hparams:
        config = [c for c in runs.columns if c not in RESULT_ONLY or c == "status"]
        df = df.merge(runs[[*config]], on="id", how="left", validate="many_to_one")
    return df


def layers_table(root: str | os.PathLike) -> pd.DataFrame:
    """One row per (finished run, masked layer): ``id``, ``layer``, ``index`` (input to output) and ``sparsity``."""
    from prunelab.experiments.store import RunStore

    rows = []
    for run_id, _, result in RunStore(root).runs():
        if not result or result.get("status") != "done":
            continue
        for index, (layer, sparsity) in enumerate((result.get("layer_sparsity") or {}).items()):
            rows.append({"id": run_id, "layer": layer, "index": index, "sparsity": float(sparsity)})
    return pd.DataFrame(rows, columns=["id", "layer", "index", "sparsity"])


def group_columns(df: pd.DataFrame) -> list[str]:
    """The columns that tell one experiment point from another: every hyperparameter but the seed."""
    skip = set(RESULT_COLUMNS) | {"id", "seed"}
    return [c for c in df.columns if c not in skip and df[c].notna().any()]


def aggregate(df: pd.DataFrame, by: Sequence[str] | None = None,
              metrics: Sequence[str] = tuple(METRICS)) -> pd.DataFrame:
    """Mean, standard deviation and count over seeds of the finished (``done``) runs of ``df``.

    ``by``: the grouping columns, by default :func:`group_columns` (all hyperparameters but the seed).
    The standard deviation is the sample one (``ddof=1``; empty for a single seed), the error bars of
    the papers' plots (Frankle et al. 2021, §3: "error bars are the standard deviation over replicates"). Output
    columns: ``by``, then ``<metric>_mean`` and ``<metric>_std`` for each metric, then ``count``.
    Missing values in ``by`` form their own group (a dense run has no method).
    """
    by = list(by) if by is not None else group_columns(df)
    unknown = [c for c in [*by, *metrics] if c not in df.columns]
    if unknown:
        raise ValueError(f"aggregate: no column {', '.join(map(repr, unknown))}; columns are {', '.join(df.columns)}")
    done = df[df["status"] == "done"] if "status" in df.columns else df
    out_cols = by + [f"{m}_{s}" for m in metrics for s in ("mean", "std")] + ["count"]
    if done.empty:
        return pd.DataFrame(columns=out_cols)
    keyed = done.copy()
    key_cols = []
    for col in by:  # group on a string key so that NaN/None and mixed types group reliably
        key = f"__key_{col}"
        keyed[key] = keyed[col].map(lambda v: "\0" if is_missing(v) else repr(v))
        key_cols.append(key)
    rows = []
    for _, part in keyed.groupby(key_cols, sort=False, dropna=False):
        first = part.iloc[0]
        row = {col: first[col] for col in by}
        for m in metrics:
            values = pd.to_numeric(part[m], errors="coerce").to_numpy(dtype=float)
            values = values[~np.isnan(values)]
            row[f"{m}_mean"] = float(values.mean()) if values.size else np.nan
            row[f"{m}_std"] = float(values.std(ddof=1)) if values.size > 1 else np.nan
        row["count"] = len(part)
        rows.append(row)
    return pd.DataFrame(rows, columns=out_cols)


def is_missing(value: Any) -> bool:
    """None, pandas' NA or a float NaN: an empty cell of a table."""
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


# ---- selecting runs by protocol --------------------------------------------------------------------

def of_protocol(runs: pd.DataFrame | pd.Series, *names: str) -> pd.Series | bool:
    """True on the rows of ``runs`` (a runs table; or one of its rows, then a bool) made by the protocols
    ``names`` (their registered names: the CLI command and the sweep's ``protocol = ...``, e.g. ``"run"``,
    ``"lottery"``, ``"train"``). The protocol knows the kind its runs record; a reader of the table never
    spells it."""
    from prunelab.experiments.protocols import get_protocol

    kinds = [get_protocol(name).kind for name in names]
    kind = runs["kind"]
    return kind.isin(kinds) if isinstance(kind, pd.Series) else kind in kinds


def runs_of(runs: pd.DataFrame, *names: str) -> pd.DataFrame:
    """The rows of ``runs`` made by the protocols ``names`` (:func:`of_protocol`)."""
    return runs[of_protocol(runs, *names)]


def is_reference(runs: pd.DataFrame) -> pd.Series:
    """True on the rows of the dense baseline (runs of a protocol marked ``reference``): drawn in every panel
    of a figure of sparse runs rather than at a sparsity of their own."""
    from prunelab.experiments.protocols import PROTOCOLS

    kinds = [PROTOCOLS.get(n).kind for n in PROTOCOLS if PROTOCOLS.get(n).reference]
    return runs["kind"].isin(kinds)


def protocol_labels(runs: pd.DataFrame, methods: bool = True) -> pd.Series:
    """A legend label per run telling protocols apart, each protocol labelling its own runs
    (:meth:`~prunelab.experiments.protocols.Protocol.label`: "dense", "magnitude at init", "lottery l2",
    "gradual update_every=2it"); runs of a kind this version does not know are labelled by their kind.
    ``methods``: name the criterion where a protocol has one."""
    labels = pd.Series("", index=runs.index, dtype=object)
    for kind, part in runs.groupby("kind", sort=False):
        try:
            protocol = protocol_of_kind(str(kind))
        except ValueError:
            labels[part.index] = str(kind)
            continue
        labels[part.index] = protocol.label(part, methods=methods)
    return labels
