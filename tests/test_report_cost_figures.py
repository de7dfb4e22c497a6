"""The report's training-cost figures on a store of real tiny runs: "Training cost over time"
(Frankle et al. 2021, Fig. 1) and "Accuracy vs training cost", their plotted data against values
computed here from each run's result.json, and their absence from a store without cost fields."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from test_data import write_idx_set

from prunelab.experiments.hparams import DataHparams, ModelHparams
from prunelab.experiments.protocols import get_protocol, lottery, prune_at_step
from prunelab.experiments.protocols.lottery import LotteryHparams
from prunelab.experiments.protocols.prune_at import PruneHparams
from prunelab.experiments.protocols.sparse import DynamicHparams, GradualHparams
from prunelab.experiments.runner import Replicate, Runner
from prunelab.experiments.store import RunStore
from prunelab.reports import plots
from prunelab.reports.figures import curve_area, curve_end, report_figures
from prunelab.reports.html import write_report
from prunelab.reports.tables import runs_table

# 64 examples, batch 16: 4 iterations per epoch, T = 8 in all.
TRAINING_DICT = dict(train="2ep", batch_size=16, lr=0.05, momentum=0.9)
T, BATCH, REWIND = 8, 16, 2
COST_FIELDS = ("train_flops", "total_train_flops", "forward_flops", "dense_forward_flops", "density_auc",
               "density_curve")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """LeNet-300-100, seeds 0 and 1: dense; random at init. and magnitude after training (90%); RigL and
    gradual (90%); two IMP levels rewound to step 2 (50%, 75%)."""
    from prunelab.training import TrainSettings

    base = tmp_path_factory.mktemp("cost")
    write_idx_set(base / "data" / "MNIST" / "raw", n_train=64, n_test=32, gz=True)
    runner = Runner(RunStore(base / "runs"), data_root=base / "data", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in (0, 1):
            rep = Replicate(ModelHparams("lenet_300_100"), DataHparams("mnist"), TrainSettings(**TRAINING_DICT),
                            seed=seed)
            prune_at_step(runner, rep, PruneHparams(method="random", sparsity=0.9))
            prune_at_step(runner, rep, PruneHparams(method="magnitude", sparsity=0.9, prune_at="end"))
            get_protocol("rigl").run(runner, rep, DynamicHparams(sparsity=0.9, every="2it"))
            get_protocol("gradual").run(runner, rep, GradualHparams(sparsity=0.9, every="2it"))
            lottery(runner, rep, LotteryHparams(levels=2, rate=0.5, rewind_to=f"{REWIND}it", scope="layer"))
    return base / "runs"


def _results(store) -> dict[str, tuple[dict, dict]]:
    return {p.name: (json.loads((p / "hparams.json").read_text()), json.loads((p / "result.json").read_text()))
            for p in store.iterdir() if (p / "result.json").is_file()}


def _label(hp: dict, methods: bool) -> str:
    if hp["kind"] == "prune":
        pr = hp["pruning"]
        when = {"0it": "at init", "end": "after training"}[pr["prune_at"]]
        return f"{pr['method'] if methods else 'pruned'} {when}"
    return hp["kind"]


def _target(hp: dict) -> float | None:
    if hp["kind"] == "lottery":
        return 1 - (1 - hp["lottery"]["rate"]) ** hp["lottery"]["levels"]
    section = hp.get("pruning") or hp.get("dynamic") or hp.get("gradual")
    return section["sparsity"] if section else None  # dense: drawn in every panel


def _expected_end(hp: dict) -> int:
    """Where each protocol's training ends, counted over the whole protocol (T steps of dense training)."""
    if hp["kind"] == "prune" and hp["pruning"]["prune_at"] == "end":
        return 2 * T  # dense training, then the whole schedule again at the mask
    if hp["kind"] == "lottery":
        return T + hp["lottery"]["levels"] * (T - REWIND)  # dense run, then each level from the rewind step
    return T


def _panel(fig, target: float):
    title = f"sparsity {100 * target:.4g}%"
    return next(ax for ax in fig.figure.axes if ax.get_title() == title)


@pytest.fixture(scope="module")
def figures(store):
    figs, notes = report_figures(store)
    assert notes == []
    return {f.name.rsplit("-", 1)[0]: f for f in figs}


def test_training_cost_over_time_draws_each_protocols_density_curve(store, figures):
    fig = figures["training-cost-over-time"]
    assert "Frankle et al. 2021, Fig. 1" in fig.caption and fig.title.startswith("Training cost over time")
    results = _results(store)
    first_seed = {}  # (label, target) -> the first seed's (hparams, result); prune: first method too
    for run_id in sorted(results, key=lambda r: (results[r][0]["seed"], r)):
        hp, res = results[run_id]
        first_seed.setdefault((_label(hp, methods=False), _target(hp)), (hp, res))
    targets = sorted({t for _, t in first_seed if t is not None})
    assert [round(t, 6) for t in targets] == [0.5, 0.75, 0.9]
    assert len([ax for ax in fig.figure.axes if ax.get_visible()]) == len(targets)
    for target in targets:
        ax = _panel(fig, target)
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        expected = {k: v for k, v in first_seed.items() if k[1] is None or abs(k[1] - target) < 1e-9}
        assert set(lines) == {label for label, _ in expected}
        for (label, _), (hp, res) in expected.items():
            curve = res["density_curve"]
            end = _expected_end(hp)
            line = lines[label]
            assert line.get_drawstyle() == "steps-post"
            np.testing.assert_allclose(line.get_xdata(), [s for s, _ in curve] + [end])
            np.testing.assert_allclose(line.get_ydata(), [d for _, d in curve] + [curve[-1][1]])
            assert res["protocol_steps"] == end  # recorded where the curve ends, as computed from the hparams
            assert curve_area(curve, end) == pytest.approx(res["density_auc"])
            if hp["kind"] == "gradual":
                assert curve[0] == [0, 1.0] and len(curve) > 2  # dense at first, pruned in several steps
            if hp["kind"] == "rigl":
                assert curve[0][0] == 0 and curve[0][1] == pytest.approx(0.1, abs=0.01)  # sparse from the start
    assert sorted(fig.runs) == sorted(run_id for run_id, (hp, res) in results.items()
                                      if any(res is r for _, r in first_seed.values()))


def test_accuracy_vs_training_cost_plots_seed_means_against_total_flops(store, figures):
    fig = figures["accuracy-vs-training-cost"]
    assert "Evci et al. 2020, App. H" in fig.caption and "3 × the forward FLOPs" in fig.caption
    results = _results(store)
    dense = [res for hp, res in results.values() if hp["kind"] == "dense"]
    assert len(dense) == 2 and all(r["total_train_flops"] == 3 * BATCH * T * r["dense_forward_flops"] for r in dense)
    groups: dict[tuple, list[dict]] = {}
    for hp, res in results.values():
        groups.setdefault((_label(hp, methods=True), _target(hp)), []).append(res)
    for target in (0.5, 0.75, 0.9):
        ax = _panel(fig, target)
        assert ax.get_xscale() == "log"
        shown = {c.get_label(): c for c in ax.containers}
        expected = {k: v for k, v in groups.items() if k[1] is None or abs(k[1] - target) < 1e-9}
        assert set(shown) == {label for label, _ in expected}
        for (label, _), runs in expected.items():
            assert len(runs) == 2  # two seeds
            x = np.mean([r["total_train_flops"] for r in runs])
            acc = 100 * np.array([r["test_accuracy"] for r in runs])
            data, _, (bars,) = shown[label].lines[0], shown[label].lines[1], shown[label].lines[2]
            assert data.get_xdata() == pytest.approx([x]) and data.get_ydata() == pytest.approx([acc.mean()])
            (low, high), = [np.asarray(seg)[:, 1] for seg in bars.get_segments()]
            assert (high - low) / 2 == pytest.approx(acc.std(ddof=1))
    # what the total includes: magnitude after training pays the dense run first, random at init. does not
    after = groups[("magnitude after training", 0.9)][0]
    assert after["total_train_flops"] == pytest.approx(after["train_flops"] + dense[0]["train_flops"])
    init = groups[("random at init", 0.9)][0]
    assert init["total_train_flops"] == init["train_flops"]


def test_report_writes_the_cost_figures_and_a_store_without_cost_fields_skips_them(store, tmp_path):
    path = write_report(store, tmp_path / "out", dpi=30)
    manifest = json.loads((path.parent / "figures.json").read_text())
    names = {e["name"].rsplit("-", 1)[0]: e for e in manifest["figures"]}
    assert manifest["notes"] == []
    for name in ("training-cost-over-time", "accuracy-vs-training-cost"):
        png = path.parent / names[name]["file"]
        assert png.read_bytes().startswith(b"\x89PNG") and f'id="{names[name]["name"]}"' in path.read_text()
        setting = runs_table(store)["setting"].iloc[0]
        assert names[name]["name"] == f"{name}-{setting}" and "train_flops" not in names[name]["hparams"]

    old = tmp_path / "old"  # the same runs as an older version wrote them: no cost fields
    for folder in store.iterdir():
        shutil.copytree(folder, old / folder.name, ignore=shutil.ignore_patterns("checkpoints"))
        result = json.loads((old / folder.name / "result.json").read_text())
        (old / folder.name / "result.json").write_text(json.dumps({k: v for k, v in result.items()
                                                                   if k not in COST_FIELDS}))
    figs, notes = report_figures(old, layers=pd.DataFrame(columns=["id", "layer", "index", "sparsity"]))
    names = {f.name.rsplit("-", 1)[0] for f in figs}
    assert not any("training cost" in n for n in notes)  # skipped silently, not as a failure
    assert "training-cost-over-time" not in names and "accuracy-vs-training-cost" not in names
    assert "accuracy-vs-sparsity" in names  # the other figures are still drawn


def test_curve_end_and_plot_checks():
    row = pd.Series({"id": "x", "kind": "prune", "steps": 10, "protocol_steps": 20})
    assert curve_end([[0, 1.0], [10, 0.1]], row) == 20
    assert curve_area([[0, 1.0], [10, 0.1]], 20) == pytest.approx((10 * 1.0 + 10 * 0.1) / 20)
    with pytest.raises(ValueError, match="protocol_steps"):
        curve_end([[0, 1.0], [10, 0.1]], pd.Series({"id": "x", "protocol_steps": np.nan}))
    fig = plots.density_over_time({"p": {"a": ([0, 5], [1.0, 0.2], 9)}})
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [0, 5, 9]
    with pytest.raises(ValueError, match="before its last breakpoint"):
        plots.density_over_time({"p": {"a": ([0, 5], [1.0, 0.2], 3)}})
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.accuracy_vs_cost({})
