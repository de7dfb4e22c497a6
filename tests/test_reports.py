"""prunelab.reports end to end on a store of real runs made from tiny generated MNIST files:
tidy tables against the JSON files, aggregates against numpy, the training curves against the
metrics files, the HTML page against its CSVs and figures and in a real browser (headless Chromium),
``export``, and the ``analyze`` command against a hand-built mask."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import sys
import warnings
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_hex
from test_data import write_idx_set

from prunelab import Mask, models
from prunelab.experiments.hparams import DataHparams, ModelHparams
from prunelab.experiments.protocols import lottery, prune_at_step
from prunelab.experiments.protocols.lottery import LotteryHparams
from prunelab.experiments.protocols.prune_at import PruneHparams
from prunelab.experiments.runner import Replicate, Runner
from prunelab.experiments.store import RunStore
from prunelab.reports import figures, plots
from prunelab.reports.commands import register
from prunelab.reports.html import write_report
from prunelab.reports.tables import aggregate, layers_table, metrics_table, runs_table

# 64 examples, batch 16: 4 iterations per epoch, 8 in all; the learning rate drops after epoch 1.
TRAINING_DICT = dict(train="2ep", batch_size=16, lr=0.05, momentum=0.9, milestones=("1ep",))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """LeNet-300-100 (2 seeds): magnitude and SynFlow at init., magnitude after training, a shuffle
    ablation, pruning at step 4; LeNet-5 (1 seed): two-level lottery runs, unstructured and L1."""
    from prunelab.training import TrainSettings

    base = tmp_path_factory.mktemp("reports")
    write_idx_set(base / "data" / "MNIST" / "raw", n_train=64, n_test=32, gz=True)
    runner = Runner(RunStore(base / "runs"), data_root=base / "data", device="cpu")
    training = TrainSettings(**TRAINING_DICT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in (0, 1):
            rep = Replicate(ModelHparams("lenet_300_100"), DataHparams("mnist"), training, seed=seed)
            for sparsity in (0.5, 0.9):
                prune_at_step(runner, rep, PruneHparams(method="magnitude", sparsity=sparsity))
                prune_at_step(runner, rep, PruneHparams(method="synflow", sparsity=sparsity, iterations=5))
                prune_at_step(runner, rep, PruneHparams(method="magnitude", sparsity=sparsity, prune_at="end"))
            prune_at_step(runner, rep, PruneHparams(method="magnitude", sparsity=0.9, ablation="shuffle"))
            prune_at_step(runner, rep, PruneHparams(method="magnitude", sparsity=0.9, prune_at="4it"))
        rep5 = Replicate(ModelHparams("lenet5"), DataHparams("mnist"), training, seed=0)
        for structure in ("unstructured", "l1"):
            lottery(runner, rep5, LotteryHparams(levels=2, rate=0.5, structure=structure, scope="layer"))
    return base / "runs"


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = write_report(store, out, dpi=40, formats=("png", "pdf", "svg"))
    manifest = json.loads((out / "figures.json").read_text())
    assert manifest["notes"] == []  # nothing was skipped
    return path, manifest["figures"]


@pytest.fixture(scope="module")
def contexts(store):
    """model name -> the figures' view of its setting (finished runs), as report_figures builds it."""
    runs, layers = runs_table(store), layers_table(store)
    done = runs[runs["status"] == "done"]
    return {part.iloc[0]["model"]: figures.Context(store, str(setting), part.reset_index(drop=True),
                                                   layers[layers["id"].isin(part["id"])])
            for setting, part in done.groupby("setting")}


def _evaluations(store, run_id: str) -> list[dict]:
    lines = (store / run_id / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if "test_accuracy" in e]


# ---- tables ------------------------------------------------------------------------------------

def test_runs_table_has_a_row_per_run_that_matches_its_files(store):
    df = runs_table(store)
    folders = sorted(p for p in store.iterdir() if (p / "hparams.json").is_file())
    assert len(df) == len(folders) == 2 * (1 + 8) + (1 + 4)
    rows = df.set_index("id")
    for folder in folders:
        hp = json.loads((folder / "hparams.json").read_text())
        result = json.loads((folder / "result.json").read_text())
        row = rows.loc[folder.name]
        assert (row["kind"], row["model"], row["seed"], row["status"]) == (
            hp["kind"], hp["model"]["model"], hp["seed"], result["status"])
        assert row["test_accuracy"] == result["test_accuracy"] and row["sparsity"] == result["sparsity"]
        assert row["drop"] == pytest.approx(result["dense_accuracy"] - result["test_accuracy"])
        assert row["training.lr"] == 0.05 and row["training.milestones"] == "1ep"
        if hp["kind"] == "prune":
            assert (row["method"], row["sparsity_target"], row["prune_at"]) == (
                hp["pruning"]["method"], hp["pruning"]["sparsity"], hp["pruning"]["prune_at"])
            assert row["prune_step"] == result["prune_step"]
        if hp["kind"] == "lottery":
            level = hp["lottery"]["levels"]
            assert row["level"] == level and row["sparsity_target"] == pytest.approx(1 - 0.5**level)
    assert df["setting"].nunique() == 2  # two networks: LeNet-300-100 and LeNet-5


def test_aggregate_equals_a_hand_computation_over_seeds(store):
    df = runs_table(store)
    agg = aggregate(df, by=["setting", "kind", "method", "sparsity_target", "prune_at", "ablation", "level"])
    groups: dict[tuple, list[float]] = {}
    for _, r in df.iterrows():
        key = tuple(None if pd.isna(r[c]) else r[c] for c in
                    ("setting", "kind", "method", "sparsity_target", "prune_at", "ablation", "level"))
        groups.setdefault(key, []).append(float(r["test_accuracy"]))
    assert len(agg) == len(groups)
    for _, a in agg.iterrows():
        key = tuple(None if pd.isna(a[c]) else a[c] for c in
                    ("setting", "kind", "method", "sparsity_target", "prune_at", "ablation", "level"))
        values = np.array(groups[key])
        assert a["count"] == len(values)
        assert a["test_accuracy_mean"] == pytest.approx(values.mean())
        if len(values) > 1:
            by_hand = np.sqrt(((values - values.mean()) ** 2).sum() / (len(values) - 1))
            assert a["test_accuracy_std"] == pytest.approx(by_hand)
        else:
            assert np.isnan(a["test_accuracy_std"])


def test_aggregate_on_a_hand_made_table():
    df = pd.DataFrame({"status": ["done", "done", "done", "diverged", "done"],
                       "method": ["snip", "snip", "snip", "snip", None],
                       "test_accuracy": [0.5, 0.7, 0.9, None, 0.4]})
    agg = aggregate(df, by=["method"], metrics=["test_accuracy"])
    snip = agg[agg["method"] == "snip"].iloc[0]
    assert snip["count"] == 3  # the diverged run is not averaged
    assert snip["test_accuracy_mean"] == pytest.approx(0.7)
    assert snip["test_accuracy_std"] == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert agg["method"].isna().sum() == 1 and agg["count"].sum() == 4
    with pytest.raises(ValueError, match="no column 'seed'"):
        aggregate(df, by=["seed"])


def _metrics_by_hand(store) -> set[tuple]:
    """(run id, step, metric, value) of every number in every metrics.jsonl, read here line by line."""
    rows = set()
    for folder in store.iterdir():
        path = folder / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.is_file() else []:
            entry = json.loads(line)
            for key, value in entry.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.add((folder.name, entry["step"], key, float(value)))
    return rows


def test_metrics_table_has_a_row_per_run_step_and_metric_of_the_metrics_files(store):
    df = metrics_table(store)
    expected = _metrics_by_hand(store)
    assert len(df) == len(expected) > 0
    assert set(zip(df["id"], df["step"], df["metric"], df["value"])) == expected
    assert list(df.columns[:5]) == ["id", "step", "epoch", "metric", "value"]
    assert set(df["metric"]) == {"test_accuracy", "test_loss", "train_loss", "lr"}
    with_epoch = df[df["epoch"].notna()]
    assert (with_epoch["epoch"] == with_epoch["step"] / 4).all()  # 4 iterations per epoch
    for run_id, part in df.groupby("id"):  # the hyperparameter columns are those of the run
        hp = json.loads((store / run_id / "hparams.json").read_text())
        assert set(part["kind"]) == {hp["kind"]} and set(part["seed"]) == {hp["seed"]}
        assert set(part["training.lr"]) == {hp["training"]["lr"]} and set(part["status"]) == {"done"}
        if hp["kind"] == "prune":
            assert set(part["method"]) == {hp["pruning"]["method"]}
    assert "test_accuracy" not in df.columns and "dense_accuracy" not in df.columns  # results stay in runs_table
    bare = metrics_table(store, hparams=False)
    assert list(bare.columns) == ["id", "step", "epoch", "metric", "value"] and len(bare) == len(df)


def test_metrics_table_skips_a_damaged_metrics_file_with_a_warning(store, tmp_path):
    import shutil

    from prunelab.experiments.store import SkippedRunWarning

    copy = tmp_path / "runs"
    folders = sorted(store.iterdir())[:2]
    for folder in folders:
        shutil.copytree(folder, copy / folder.name, ignore=shutil.ignore_patterns("checkpoints", "*.pt"))
    (copy / folders[0].name / "metrics.jsonl").write_text('{"step": 2, "test_accuracy": 0.5}\n{"step": 4, "te')
    with pytest.warns(SkippedRunWarning, match=f"run {folders[0].name}.*line 2 is not a metrics entry"):
        df = metrics_table(copy)
    assert set(df["id"]) == {folders[1].name}


def test_export_writes_the_run_table_and_the_metrics_as_csv_and_parquet(store, tmp_path, capsys):
    assert _run("export", "--root", store, "--out", tmp_path / "csv") == 0
    assert "metrics.csv" in capsys.readouterr().out
    runs = pd.read_csv(tmp_path / "csv" / "runs.csv")
    metrics = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    assert sorted(runs["id"]) == sorted(p.name for p in store.iterdir())
    assert set(zip(metrics["id"], metrics["step"], metrics["metric"], metrics["value"])) == _metrics_by_hand(store)
    pytest.importorskip("pyarrow")
    assert _run("export", "--root", store, "--out", tmp_path / "pq", "--format", "parquet") == 0
    for name, csv in (("runs", runs), ("metrics", metrics)):
        parquet = pd.read_parquet(tmp_path / "pq" / f"{name}.parquet")
        assert list(parquet.columns) == list(csv.columns) and len(parquet) == len(csv)
    parquet = pd.read_parquet(tmp_path / "pq" / "metrics.parquet")
    assert set(zip(parquet["id"], parquet["step"], parquet["metric"], parquet["value"])) == _metrics_by_hand(store)


def test_export_onto_a_file_is_one_plain_line(store, tmp_path, capsys):
    target = tmp_path / "runs.csv"
    target.write_text("mine")
    from prunelab.cli import main

    assert main(["export", "--root", str(store), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file; export writes runs.csv and metrics.csv into a folder" in err
    assert "Errno" not in err and target.read_text() == "mine"


def _drop_report_modules(monkeypatch):
    """Forget the imported report modules, so that importing them again meets the blocked packages."""
    import prunelab.reports

    for module in [m for m in sys.modules if m.startswith(("prunelab.reports.html", "prunelab.reports.plots",
                                                           "prunelab.reports.figure"))]:
        monkeypatch.delitem(sys.modules, module)
    for name in ("html", "plots", "figures", "figure_builds", "figure_inputs"):
        monkeypatch.delattr(prunelab.reports, name, raising=False)


@pytest.mark.parametrize("blocked, argv, message", [
    ("matplotlib", ["report"], "prunelab report needs the plots extra: pip install 'prunelab[plots]'"),
    ("pyarrow", ["export", "--format", "parquet"],
     "prunelab export --format parquet needs the parquet extra: pip install 'prunelab[parquet]'"),
])
def test_a_missing_extra_is_one_line_and_nothing_is_written(store, tmp_path, monkeypatch, capsys, blocked, argv,
                                                              message):
    from prunelab.cli import main

    _drop_report_modules(monkeypatch)
    monkeypatch.setitem(sys.modules, blocked, None)  # `import matplotlib` now fails as if it were not installed
    assert main([*argv, "--root", str(store), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"prunelab: error: {message}"]
    assert not (tmp_path / "out").exists()


# ---- the HTML report ---------------------------------------------------------------------------

class _Tables(HTMLParser):
    """Text of every cell of every <table id=...>, and the src of every <img>."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "id" in attrs:
            self._table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _same(cell: str, value) -> bool:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return cell == ""
    if isinstance(value, (bool, np.bool_)):
        return cell == str(bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(cell) == pytest.approx(float(value), rel=1e-5, abs=1e-12)
    return cell == str(value)


def test_report_embeds_every_figure_and_its_tables_agree_with_the_csvs(report):
    path, manifest = report
    text = path.read_text()
    parser = _Tables()
    parser.feed(text)
    embedded = [src for src in parser.images if src.startswith("data:image/png;base64,")]
    assert len(embedded) == len(parser.images) == len(manifest) == len(list((path.parent / "figures").glob("*.png")))
    for entry, src in zip(manifest, embedded):
        png = (path.parent / entry["file"]).read_bytes()
        assert png.startswith(b"\x89PNG") and base64.b64decode(src.split(",", 1)[1]) == png
        assert entry["hparams"]["training.lr"] == 0.05 and entry["runs"]
        files = {fmt: (path.parent / f).read_bytes() for fmt, f in entry["files"].items()}
        assert set(files) == {"png", "pdf", "svg"} and files["png"] == png  # the vector files for a paper
        assert files["pdf"].startswith(b"%PDF") and b"<svg" in files["svg"][:1000]
        assert f'href="{entry["files"]["pdf"]}"' in text and f'href="{entry["files"]["svg"]}"' in text
    kinds = {re.sub(r"-[0-9a-f]{8}$", "", e["name"]) for e in manifest}
    assert {"accuracy-vs-sparsity", "ablations-0it", "accuracy-vs-step-90", "layer-sparsity", "neuron-collapse",
            "layer-density", "conservation", "first-layer-masks", "lottery-accuracy", "jaccard-structure-0",
            "conv-masks", "weight-trajectories-l1", "weight-trajectories-unstructured", "training-cost-over-time",
            "accuracy-vs-training-cost", "learning-curves-50", "learning-curves-75", "learning-curves-90"} == kinds
    for name in ("runs", "summary", "settings"):
        csv = pd.read_csv(path.parent / f"{name}.csv", keep_default_na=True)
        header, *rows = parser.tables[name]
        assert header == list(csv.columns) and len(rows) == len(csv)
        for row, (_, expected) in zip(rows, csv.iterrows()):
            bad = [(c, cell, expected[c]) for c, cell in zip(csv.columns, row) if not _same(cell, expected[c])]
            assert not bad, f"{name}: {bad[:3]}"


def test_report_figure_hyperparameters_are_those_shared_by_its_runs(report, store):
    _, manifest = report
    df = runs_table(store).set_index("id")
    ablation = next(e for e in manifest if e["name"].startswith("ablations-0it"))
    shown = df.loc[ablation["runs"]]
    assert set(shown["method"]) == {"magnitude"} and set(shown["ablation"].dropna()) == {"shuffle"}
    assert ablation["hparams"]["method"] == "magnitude" and ablation["hparams"]["prune_at"] == "0it"
    assert "ablation" not in ablation["hparams"] and ablation["hparams"]["seeds"] == "0, 1"
    conv = next(e for e in manifest if e["name"].startswith("conv-masks"))
    assert conv["hparams"]["model"] == "lenet5" and "structure" not in conv["hparams"]


def test_report_of_a_store_with_only_dense_runs_has_tables_and_no_figures(store, tmp_path):
    import shutil

    only = tmp_path / "runs"
    for folder in store.iterdir():
        if json.loads((folder / "hparams.json").read_text())["kind"] == "dense":
            shutil.copytree(folder, only / folder.name, ignore=shutil.ignore_patterns("checkpoints"))
    path = write_report(only, tmp_path / "out")
    parser = _Tables()
    parser.feed(path.read_text())
    manifest = json.loads((tmp_path / "out" / "figures.json").read_text())["figures"]
    assert [re.sub(r"-[0-9a-f]{8}$", "", e["name"]) for e in manifest] == ["learning-curves-dense"] * 2  # 2 settings
    assert len(parser.images) == 2 and len(parser.tables["runs"]) == 1 + 3
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nowhere", tmp_path / "out2")


def test_learning_curves_are_each_runs_metrics_file_and_their_mean_over_seeds(contexts, store):
    ctx = contexts["lenet_300_100"]
    curves = {re.sub(r"-[0-9a-f]{8}$", "", f.name): f for f in figures.learning_curves(ctx)}
    assert set(curves) == {"learning-curves-50", "learning-curves-90"}
    fig = curves["learning-curves-90"]
    acc, loss = fig.figure.axes[:2]
    assert (acc.get_ylabel(), loss.get_ylabel()) == ("Test accuracy (%)", "Test loss")
    df = runs_table(store)
    chosen = df[(df["kind"] == "prune") & (df["method"] == "synflow") & (df["sparsity_target"] == 0.9)]
    assert len(chosen) == 2  # two seeds
    by_seed = [_evaluations(store, run_id) for run_id in chosen["id"]]
    steps = [e["step"] for e in by_seed[0]]
    for ax, key, scale in ((acc, "test_accuracy", 100), (loss, "test_loss", 1)):
        mean = np.mean([[scale * e[key] for e in run] for run in by_seed], axis=0)
        line = next(ln for ln in ax.lines if ln.get_label() == "synflow at init")
        assert list(line.get_xdata()) == steps and line.get_ydata() == pytest.approx(mean)
        runs = [c for c in ax.collections if isinstance(c, LineCollection)]  # the thin lines: a collection each
        assert all(max(c.get_linewidths()) < 1 for c in runs)
        assert sum(len(c.get_segments()) for c in runs) == len(fig.runs) == len(set(fig.runs))  # one per run
        mine = [c for c in runs if to_hex(c.get_edgecolor()[0]) == to_hex(line.get_color())]
        assert len(mine) == 1 and np.allclose(sorted(seg[:, 1].tolist() for seg in mine[0].get_segments()),
                                              sorted([scale * e[key] for e in run] for run in by_seed))
        assert all(list(seg[:, 0]) == steps for seg in mine[0].get_segments())
        configurations = {ln.get_label() for ln in ax.lines if not ln.get_label().startswith("_")}
        bands = [c for c in ax.collections if not isinstance(c, LineCollection)]
        assert len(bands) == len(runs) == len(configurations - {"learning-rate drop"})  # a band each: 2 seeds each
    labels = {ln.get_label() for ln in acc.lines if not ln.get_label().startswith("_")}
    assert labels == {"dense", "magnitude at init", "magnitude at init shuffle", "magnitude after training",
                      "magnitude at 4it", "synflow at init", "learning-rate drop"}
    assert "2 seeds (0, 1)" in fig.caption and "learning-rate drops" in fig.caption


def test_learning_curve_means_skip_missing_values_and_have_no_std_from_one_run():
    from prunelab.reports.figures.curves import _replicates

    class Metrics:  # a context's metrics files: run id -> entries
        def __init__(self, entries):
            self.entries = entries

        def metrics(self, run_id):
            return self.entries[run_id]

    ctx = Metrics({"a": [{"step": 0, "loss": 1.0}, {"step": 10, "loss": float("nan")}, {"step": 20, "loss": 2.0}],
                   "b": [{"step": 0, "loss": 3.0}, {"step": 10, "loss": float("nan")}, {"step": 30, "loss": 4.0},
                         {"step": 40, "loss": "diverged"}]})
    rep = _replicates(ctx, ["a", "b"], "loss", 2.0)
    x, y, err = rep.mean.x, rep.mean.y, rep.mean.err
    expected = pd.DataFrame({"step": [0, 10, 20, 0, 10, 30], "v": [2.0, np.nan, 4.0, 6.0, np.nan, 8.0]})
    per_step = expected.groupby("step")["v"]
    assert list(x) == [0, 10, 20, 30] and len(rep.runs) == 2
    assert np.allclose(y, per_step.mean(), equal_nan=True) and np.allclose(err, per_step.std(ddof=1), equal_nan=True)
    assert np.isnan(y[1]) and np.isnan(err[2]) and err[0] == pytest.approx(np.std([2.0, 6.0], ddof=1))


def test_accuracy_is_in_percent_in_the_figures_and_the_tables(report, contexts, store):
    path, _ = report
    df = runs_table(store).set_index("id")
    csv = pd.read_csv(path.parent / "runs.csv").set_index("id")
    assert "test_accuracy" not in csv.columns
    for column in ("test_accuracy", "dense_accuracy", "drop"):
        assert csv[f"{column} (%)"].to_numpy() == pytest.approx(100 * df.loc[csv.index, column].to_numpy())
    (fig,) = figures.accuracy_vs_sparsity(contexts["lenet_300_100"])
    ax = fig.figure.axes[0]
    assert ax.get_ylabel() == "Test accuracy (%)"
    synflow = df[(df["method"] == "synflow") & (df["prune_at"] == "0it")]
    handles, labels = ax.get_legend_handles_labels()
    line = handles[labels.index("synflow")].lines[0]  # the data line of the errorbar container
    assert line.get_ydata() == pytest.approx(100 * synflow.groupby("sparsity_target")["test_accuracy"].mean())
    dense = next(ln for ln in ax.lines if ln.get_label() == "dense")
    dense_runs = df[(df["kind"] == "dense") & (df["model"] == "lenet_300_100")]
    assert dense.get_ydata()[0] == pytest.approx(100 * dense_runs["test_accuracy"].mean())


def test_captions_name_only_what_the_store_holds(report):
    _, manifest = report
    caption = {re.sub(r"-[0-9a-f]{8}$", "", e["name"]) + "/" + str(e["hparams"].get("model")): e["caption"]
               for e in manifest}
    at_init = caption["accuracy-vs-sparsity/lenet_300_100"]
    assert "magnitude pruning after training as a baseline" in at_init and "lottery" not in at_init.lower()
    assert "2 seeds (0, 1)" in at_init and "dashed gray line is the dense network" in at_init
    lot = caption["lottery-accuracy/lenet5"]
    assert "no error bars" in lot and "rewinding to step 0it" in lot
    assert "finetuning" not in lot and "sign" not in lot
    ablations = caption["ablations-0it/lenet_300_100"]
    assert "shuffle" in ablations and not any(a in ablations for a in ("reinit", "invert", "fixed_variance"))
    step = caption["accuracy-vs-step-90/lenet_300_100"]
    assert "LTR" not in step and "learning-rate drops" in step  # the lottery runs are of another network


def test_layers_are_named_with_their_module_type(report, contexts):
    (fig,) = figures.layer_sparsity(contexts["lenet_300_100"])
    ticks = [t.get_text() for t in fig.figure.axes[0].get_xticklabels()]
    assert ticks == ["1 (Linear)", "3 (Linear)", "5 (Linear)"]
    _, manifest = report
    conv = next(e for e in manifest if e["name"].startswith("conv-masks"))
    assert conv["title"].startswith("Masked weights of 3 (Conv2d)")
    lenet5 = dict(models.create("lenet5", num_classes=10, input_shape=(1, 28, 28)).named_modules())
    assert isinstance(lenet5["3"], torch.nn.Conv2d)  # the second convolution, as the title says


def test_one_shot_ltr_is_one_curve_across_its_rates_and_iterative_pruning_one_per_rate():
    from prunelab.reports.figures.accuracy import ltr_labels

    runs = pd.DataFrame({"rate": [0.2, 0.2, 0.2, 0.5, 0.9, 0.9], "level": [1, 2, 3, 1, 1, 1],
                         "rewind_to": ["0it", "0it", "0it", "0it", "0it", "1000it"], "scope": "global"})
    assert list(ltr_labels(runs)) == ["LTR rewind 0it, 0.2 per level"] * 3 + ["LTR rewind 0it"] * 2 + [
        "LTR rewind 1000it"]  # rates 0.5 and 0.9 at one level each: one-shot, one curve; 0.2 ran three levels
    assert set(ltr_labels(runs.assign(scope=["global"] * 5 + ["layer"]))) == {
        "LTR rewind 0it, 0.2 per level global", "LTR rewind 0it global", "LTR rewind 1000it layer"}


def test_random_pruning_at_erk_or_another_criterions_densities_is_its_own_curve():
    """Random masks at ERK densities or at another criterion's (``--like``) are other experiments than uniform
    random masks: pooled into one "random" point they averaged masks that train to 19 and 87% alike."""
    from prunelab.experiments.protocols.prune_at import method_labels

    runs = pd.DataFrame({"method": ["random", "random", "random", "random", "snip"],
                         "distribution": [None, "erk", None, None, None],
                         "like": [None, None, "force", "ntk_sap", None], "batch_per_class": 10})
    assert list(method_labels(runs)) == ["random", "random distribution=erk", "random like=force",
                                         "random like=ntk_sap", "snip"]


def test_a_long_legend_goes_below_the_axes_and_the_figure_grows_for_it():
    few = {f"m{i}": C(SPARSITY, np.linspace(90, 60, 5)) for i in range(3)}
    many = {f"m{i}": C(SPARSITY, np.linspace(90, 60, 5)) for i in range(20)}
    small, large = plots.accuracy_vs_sparsity(few), plots.accuracy_vs_sparsity(many)
    assert small.axes[0].get_legend() is not None and not small.legends
    assert large.axes[0].get_legend() is None and len(large.legends) == 1
    assert large.get_figheight() > small.get_figheight()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(large)
    canvas.draw()  # the layout engine places the legend at drawing time
    renderer = canvas.get_renderer()
    legend, axes = large.legends[0].get_window_extent(renderer), large.axes[0].get_window_extent(renderer)
    assert legend.y1 <= axes.y0 and legend.y0 >= 0  # under the axes, inside the figure


def test_guide_lines_are_drawn_to_be_seen():
    fig = plots.accuracy_vs_sparsity({"snip": C(SPARSITY, np.linspace(90, 60, 5))}, dense=(91.0, 0.5))
    dense = next(ln for ln in fig.axes[0].lines if ln.get_label() == "dense")
    assert dense.get_linewidth() >= 1.4 and dense.get_color() == plots.GUIDE["color"]
    panels = {"snip": [(2.0, {"a": 0.5, "b": 0.5}), (10.0, {"a": 0.1, "b": 0.1}), (100.0, {"a": 0.01, "b": 0.01})]}
    ax = plots.layer_density_vs_compression(panels).axes[0]
    assert [ln.get_label() for ln in ax.lines] == ["2x", "10x", "100x"]  # every ratio in the legend
    assert min(ln.get_alpha() for ln in ax.lines) == pytest.approx(0.45)  # the highest compression stays readable
    s = np.random.default_rng(0).lognormal(size=20)
    fig = plots.conservation({"l1": (s, s)}, {"l1": (100, 3.0), "l2": (1000, 3.0)})
    guides = [ln for ax in fig.axes for ln in ax.lines if ln.get_linestyle() == ":"]
    assert len(guides) == 2 and all(ln.get_linewidth() >= 1.4 for ln in guides)
    assert [ln.get_label() for ln in guides] == ["$S^{in} = S^{out}$ (Theorem 1)", "equal layer totals (Theorem 2)"]


# ---- the page in a real browser: headless Chromium (Debian's chromium and chromium-driver, which .ci/run
# installs when missing), driven by Selenium; every figure must decode and the console stay free of errors

def _chromium() -> tuple[str, str] | None:
    """(browser, driver) executables, or None."""
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    found = _chromium()
    if found is None:
        pytest.skip("headless Chromium not found: install Debian's chromium and chromium-driver (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_the_report_page_loads_every_figure_without_a_console_error(browser, report, store):
    """Set ``PRUNELAB_REPORT_SCREENSHOT=/path.png`` to keep a screenshot of the whole page."""
    report_page, _ = report
    browser.get(report_page.resolve().as_uri())
    images = browser.execute_script(
        "return Array.from(document.images, i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
    n_figures = len(list((report_page.parent / "figures").glob("*.png")))
    assert len(images) == n_figures >= 10
    broken = [alt for alt, complete, width, height in images if not (complete and width > 0 and height > 0)]
    assert broken == []
    rows = browser.execute_script("return document.querySelectorAll('table#runs tbody tr').length")
    assert rows == len(list(store.iterdir()))
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    shot = os.environ.get("PRUNELAB_REPORT_SCREENSHOT")
    if shot:
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1280, height)
        browser.save_screenshot(shot)


def test_the_browser_reports_a_broken_image_and_a_script_error(browser, tmp_path):
    """The checks above can fail: a page with a missing image and a throwing script is caught by both."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><img alt='missing' src='nowhere.png'>"
                    "<script>undefinedFunction();</script></body></html>")
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(page.as_uri())
    images = browser.execute_script("return Array.from(document.images, i => [i.complete, i.naturalWidth]);")
    assert images == [[True, 0]]
    messages = " ".join(e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE")
    assert "undefinedFunction" in messages


# ---- the commands ------------------------------------------------------------------------------

def _run(*argv) -> int:
    parser = argparse.ArgumentParser(prog="prunelab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_analyze_prints_the_kept_counts_of_a_hand_built_mask(tmp_path, capsys):
    # LeNet-300-100: units 0-9 of layer 1 keep all 784 inputs; layer 2 units 0-4 keep inputs 0-19,
    # of which 10-19 come from units with no inputs; the output layer keeps everything, but only its
    # columns 0-4 read units that receive a signal.
    keep1 = torch.zeros(300, 784, dtype=torch.bool)
    keep1[:10] = True
    keep3 = torch.zeros(100, 300, dtype=torch.bool)
    keep3[:5, :20] = True
    mask = Mask({"1.weight": keep1, "3.weight": keep3, "5.weight": torch.ones(10, 100, dtype=torch.bool)})
    mask.save(tmp_path / "m.pt")
    assert _run("analyze", tmp_path / "m.pt", "--model", "lenet_300_100", "--input-shape", 1, 28, 28) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["1.weight"][2:5] == ["7,840", "235,200", f"{1 - 7840 / 235200:.4f}"]
    assert lines["3.weight"][2:4] == ["100", "30,000"]
    assert lines["5.weight"][2:4] == ["1,000", "1,000"]
    assert lines["total"][1:3] == ["8,940", "266,200"]
    # effective: 7,840 + 50 + 50 weights lie on an input-to-output path (Frankle et al. 2021, App. M)
    assert lines["3.weight"][5] == f"{1 - 50 / 30000:.4f}" and lines["5.weight"][5] == f"{1 - 50 / 1000:.4f}"
    assert f"{1 - 7940 / 266200:.4f}" in out and "layer collapse: none" in out
    assert f"max compression N/L: {266200 / 3:,.0f}x" in out

    empty = Mask({**mask, "3.weight": torch.zeros(100, 300, dtype=torch.bool)})
    empty.save(tmp_path / "collapsed.pt")
    assert _run("analyze", tmp_path / "collapsed.pt") == 0
    out = capsys.readouterr().out
    assert "COLLAPSED" in out and "layer collapse: 3.weight" in out and "effective sparsity: not computed" in out


def test_analyze_a_run_of_the_store_and_the_user_errors(store, capsys):
    df = runs_table(store)
    run = df[(df["method"] == "synflow") & (df["sparsity_target"] == 0.9) & (df["seed"] == 0)].iloc[0]
    assert _run("analyze", run["id"][:10], "--root", store) == 0
    out = capsys.readouterr().out
    kept = Mask.load(store / run["id"] / "mask.pt").num_kept
    assert "synflow@0it, target sparsity 0.9" in out and f"{kept:,}" in out and "effective sparsity: " in out
    dense = df[df["kind"] == "dense"].iloc[0]["id"]
    with pytest.raises(ValueError, match="dense run"):
        _run("analyze", dense, "--root", store)
    with pytest.raises(ValueError, match="no run 'ffff'"):
        _run("analyze", "ffff", "--root", store)
    with pytest.raises(FileNotFoundError, match="no mask file"):
        _run("analyze", "missing/mask.pt")
    with pytest.raises(ValueError, match="input-shape"):
        _run("analyze", store / run["id"] / "mask.pt", "--model", "lenet_300_100")
    with pytest.raises(ValueError, match="does not fit"):
        _run("analyze", store / run["id"] / "mask.pt", "--model", "lenet5", "--input-shape", 1, 28, 28)


def test_register_adds_report_and_analyze(tmp_path):
    parser = argparse.ArgumentParser(prog="prunelab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", "--root", "r", "--out", "o"])
    assert (args.root, args.out, args.func.__name__) == ("r", "o", "cmd_report")
    args = parser.parse_args(["analyze", "abc"])
    assert (args.mask_or_run, args.root, args.func.__name__) == ("abc", "runs", "cmd_analyze")
    with pytest.raises(FileNotFoundError):
        _run("report", "--root", tmp_path / "none", "--out", tmp_path / "o")


# ---- plot functions on synthetic inputs --------------------------------------------------------

C = plots.Curve
SPARSITY = np.array([0.0, 0.5, 0.75, 0.875, 0.9375])


def test_accuracy_plots_draw_one_line_per_curve_on_a_reversed_log_density_axis():
    curves = {"magnitude after training": C(SPARSITY, [0.9, 0.9, 0.89, 0.88, 0.85], [0.01] * 5),
              "snip": C(SPARSITY, [0.9, 0.88, 0.85, 0.8, 0.7]), "mystery": C(SPARSITY[::-1], np.linspace(.5, .9, 5))}
    fig = plots.accuracy_vs_sparsity(curves, dense=(0.91, 0.005), title="t")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlim()[0] > ax.get_xlim()[1]  # density falls to the right
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["dense", *curves]
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["0", "50", "75"]
    palette = plots.colors(list(curves))
    assert palette["magnitude after training"] == "#1f77b4" and palette["snip"] == "#d62728"
    assert len(set(palette.values())) == 3
    assert plots.to_png(fig, dpi=30).startswith(b"\x89PNG")

    panels = {m: {"unmodified": C(SPARSITY, np.ones(5)), "shuffle": C(SPARSITY, np.ones(5))} for m in ("a", "b")}
    assert len(plots.ablation_panels(panels).axes) == 2
    six = {m: panels["a"] for m in "abcdef"}  # in rows of four, the two spare panels hidden
    fig = plots.ablation_panels(six)
    assert fig.get_figwidth() == pytest.approx(4 * 3.6) and fig.get_figheight() > 2 * 3.4 - 1e-9
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == list("abcdef")
    fig = plots.accuracy_vs_step({"ltr": C([0, 100, 1000], [0.8, 0.85, 0.9])}, lr_drops=[500, 750])
    drops = [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "-."]
    assert [ln.get_xdata()[0] for ln in drops] == [500, 750] and all(ln.get_linewidth() >= 1.4 for ln in drops)
    assert sorted(fig.axes[0].get_legend_handles_labels()[1]) == ["learning-rate drop", "ltr"]
    with pytest.raises(ValueError, match="as many x as y"):
        plots.accuracy_vs_sparsity({"x": C([0.5, 0.9], [0.5])})
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.accuracy_vs_sparsity({})


def test_layer_plots_on_synthetic_inputs():
    layers = {m: {"conv1": 0.2, "conv2": 0.9, "fc": 0.5} for m in ("snip", "synflow")}
    fig = plots.layer_sparsity_bars(layers)
    assert len(fig.axes[0].patches) == 6 and len(fig.legends) == 1
    assert fig.axes[0].patches[1].get_height() == pytest.approx(90)  # snip's conv2
    th = np.linspace(0, 1, 11)
    fig = plots.neuron_collapse({"synflow": C(th, 1 - th, 0.1 * th), "snip": C(th, (1 - th) ** 2)})
    assert fig.axes[0].lines[0].get_ydata()[0] == pytest.approx(100)
    panels = {"random": [(1.0, {"a": 1.0, "b": 1.0}), (10.0, {"a": 0.1, "b": 0.1})],
              "snip": [(1.0, {"a": 1.0, "b": 1.0}), (100.0, {"a": 0.02, "b": 0.0})]}
    fig = plots.layer_density_vs_compression(panels)
    styles = [ln.get_linestyle() for ln in fig.axes[1].lines if ln.get_marker() in ("None", None, "")]
    assert styles == ["-", "--"]  # the collapsed line is dashed
    rng = np.random.default_rng(0)
    s = rng.lognormal(size=20)
    fig = plots.conservation({"l1": (s, s), "l2": (s, 1.01 * s)}, {"l1": (100, 3.0), "l2": (1000, 3.0)})
    assert len(fig.axes) == 2 and fig.axes[1].get_xscale() == "log"
    fig = plots.jaccard_vs_iteration({f"layer{i}": {"l1": C([1, 2, 3], [0.1, 0.2, 0.3])} for i in range(5)},
                                     reference="l2")
    assert sum(ax.get_visible() for ax in fig.axes) == 5


def test_mask_image_helpers_against_hand_computations():
    keep = np.zeros((4, 2 * 3 * 3), dtype=bool)
    keep[:2, 0] = True  # pixel (0, 0) of channel 0 kept by half the units
    keep[:, 9] = True  # pixel (0, 0) of channel 1 kept by all units
    image = plots.first_layer_image(keep, (2, 3, 3))
    assert image.shape == (3, 3) and image[0, 0] == pytest.approx((0.5 + 1.0) / 2) and image[1:, :].sum() == 0
    with pytest.raises(ValueError, match="first-layer mask"):
        plots.first_layer_image(keep, (1, 28, 28))
    fig = plots.mask_images({"50%": {"snip": image, "random": image}, "90%": {"snip": image}})
    assert sum(ax.get_visible() for ax in fig.axes) == 3

    weight = np.arange(3 * 2 * 2 * 2, dtype=float).reshape(3, 2, 2, 2) + 1
    mask = np.ones_like(weight, dtype=bool)
    mask[1, 0] = False  # output channel 1, input channel 0 pruned
    grid = plots.kernel_grid(weight, mask, rows="input")  # 2 input rows x 3 output columns of 2x2 kernels
    assert grid.shape == (2 * 3 - 1, 3 * 3 - 1)
    assert grid[0, 0] == weight[0, 0, 0, 0] and grid[3, 6] == weight[2, 1, 0, 0]
    assert np.isnan(grid[0:2, 3:5]).all() and np.isneginf(grid[2, :]).all()
    assert plots.kernel_grid(weight, mask, rows="output").shape == (3 * 3 - 1, 2 * 3 - 1)
    fig = plots.conv_masks({"iteration 1": {"l1": (weight, mask)}})
    assert fig.axes[0].images[0].get_array().shape == grid.shape

    values = np.array([[0.1, -0.2], [0.15, np.nan], [0.2, np.nan]])
    fig = plots.weight_trajectories({"fc": ([0, 50, 75], values)})
    assert len(fig.axes[0].lines) == 2 + 1  # two weights and the zero line
    with pytest.raises(ValueError, match="levels"):
        plots.weight_trajectories({"fc": ([0, 50], values)})


def test_setting_ignores_fields_at_their_default():
    """A field added with its default (recorded by newer runs, absent from older hparams.json) splits no
    setting; a non-default value does."""
    from prunelab.reports.tables import setting_of

    old = {"model": {"model": "lenet5", "init": "kaiming_normal"}, "dataset": {"dataset": "fashion_mnist"},
           "training": {"train": "10ep", "lr": 0.1}}
    new = {"model": {**old["model"], "bn_init": "uniform"}, "dataset": {**old["dataset"], "augment": True},
           "training": {**old["training"], "batch_size": 128}}
    assert setting_of(new) == setting_of(old)
    assert setting_of({**old, "dataset": {"dataset": "fashion_mnist", "augment": False}}) != setting_of(old)
    assert setting_of({**old, "training": {"train": "10ep", "lr": 0.01}}) != setting_of(old)


def test_analyze_says_when_an_attention_layer_lost_every_key_weight(tmp_path, capsys):
    # nn.MultiheadAttention stacks the query, key and value rows of in_proj_weight (8 each for width 8).
    keep = torch.ones(24, 8, dtype=torch.bool)
    keep[8:16] = False  # every key weight
    Mask({"attn.in_proj_weight": keep, "head.weight": torch.ones(3, 8, dtype=torch.bool)}).save(tmp_path / "k.pt")
    assert _run("analyze", tmp_path / "k.pt") == 0
    assert "attention collapse: attn.in_proj_weight" in capsys.readouterr().out
    keep[8:16] = True
    keep[0:8] = False  # every query weight instead: the attention still depends on the keys
    Mask({"attn.in_proj_weight": keep, "head.weight": torch.ones(3, 8, dtype=torch.bool)}).save(tmp_path / "q.pt")
    assert _run("analyze", tmp_path / "q.pt") == 0
    assert "attention collapse" not in capsys.readouterr().out


def test_long_layer_names_and_single_points_draw_without_a_layout_warning():
    """The layers of a torchvision ViT have names of 80 characters: the per-layer figures grow to hold them
    (matplotlib warned that the panels collapsed to nothing and left them unlaid); an ablation panel with one
    sparsity drew a warning of a zero-width axis."""
    names = [f"encoder.layers.encoder_layer_{i}.self_attention.out_proj (NonDynamicallyQuantizableLinear)"
             for i in range(12)]
    bars = plots.layer_sparsity_bars({m: {n: 0.9 for n in names} for m in ("snip", "random")})
    density = plots.layer_density_vs_compression(
        {m: [(10.0, {n: 0.1 for n in names}), (50.0, {n: 0.02 for n in names})] for m in ("snip", "synflow")})
    single = plots.ablation_panels({"snip": {"reinit": plots.Curve([0.9], [80.0], [0.5])}})
    for fig in (bars, density, single):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plots.render(fig, ["png"], dpi=30)
        assert all(ax.get_position().height > 0.15 for ax in fig.axes if ax.get_visible())


def test_learning_curves_of_a_hundred_configurations_draw_without_a_layout_warning():
    """The learning curves of a store with 103 configurations (35 rows of legend, more than the figure's height)
    squeezed the panels to nothing: matplotlib warned and left them unlaid. The figure grows by the legend's
    height beyond a quarter of its own."""
    curve = plots.Replicates(plots.Curve([0, 100, 200], [50.0, 60.0, 70.0], [1.0, 1.0, 1.0]))
    lines = {f"magnitude after training shuffle #{i}": curve for i in range(103)}
    for panels in ({"Test accuracy (%)": lines, "Test loss": lines}, {"Test accuracy (%)": lines}):
        fig = plots.learning_curves(panels, title="lenet_300_100 on fashion_mnist, sparsity 93.13%")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plots.render(fig, ["png"])  # at the report's resolution: text hinted at a few pixels lays out otherwise
        assert all(ax.get_position().height * fig.get_figheight() > 1.5 for ax in fig.axes)  # inches


@pytest.mark.parametrize("labels, panels", [
    (["dense"], ["Test accuracy (%)"]),
    ([f"lottery unstructured rewind_to=sigma_sign #{i}" for i in range(26)], ["Test accuracy (%)", "Test loss"]),
    (["dense", "snip at init"], ["Test accuracy (%)", "Test loss", "Train loss"]),
])
def test_learning_curves_laid_out_without_a_layout_engine_keep_every_text_inside_and_apart(labels, panels):
    """Learning curves are laid out from the sizes of their texts (no constrained layout, a fifth of their drawing
    time): every text is inside the figure, each panel with its labels clear of the others and of the legend,
    and the layout is the same whatever the formats drawn."""
    x = [0, 1000, 25000, 50000]
    curves = {"Test accuracy (%)": plots.Curve(x, [10.0, 80.0, 99.0, 100.0], [1.0] * 4),
              "Test loss": plots.Curve(x, [2.30251, 2.30253, 2.30252, 2.30254], [1e-5] * 4),  # an offset text
              "Train loss": plots.Curve(x, [0.3, 0.1, 0.02, 0.01], [0.2, 0.1, 0.05, 0.04])}  # below zero
    data = {p: {label: plots.Replicates(curves[p], [curves[p]]) for label in labels} for p in panels}
    title = "resnet20 on cifar10, sparsity 98.2%, with a title long enough to be wrapped on two lines"
    fig = plots.learning_curves(data, lr_drops=[25000], title=title)
    assert fig.get_layout_engine() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = plots.render(fig, ["png", "pdf"])
    assert plots.render(plots.learning_curves(data, lr_drops=[25000], title=title), ["pdf"])["pdf"] == png["pdf"]
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    # A panel's tight box holds the tick labels it draws, its axis labels and offset text.
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes] + [fig.legends[0].get_window_extent(renderer)]
    for box in boxes + [t.get_window_extent(renderer) for t in fig.legends[0].get_texts()]:
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)
    title = fig._suptitle.get_window_extent(renderer)
    assert page.y1 >= title.y1 and all(not title.overlaps(b) for b in boxes)
