"""The report reuses what it drew: a second report of an unchanged store runs no builder and draws nothing,
one changed run redraws only the figures that show it (and the same bytes as a report drawn from scratch),
workers write the bytes of a serial report, and a damaged mask is named in one warning line."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import warnings
from pathlib import Path

import pytest
from test_data import write_idx_set

from prunelab.experiments.hparams import DataHparams, ModelHparams
from prunelab.experiments.protocols import prune_at_step
from prunelab.experiments.protocols.prune_at import PruneHparams
from prunelab.experiments.runner import Replicate, Runner
from prunelab.experiments.store import RunStore
from prunelab.reports import figure_builds
from prunelab.reports.html import build_report

TRAINING_DICT = dict(train="2ep", batch_size=16, lr=0.05, momentum=0.9)


@pytest.fixture(scope="module")
def made_store(tmp_path_factory):
    """LeNet-300-100, seed 0: the dense run, magnitude and random at init. at 50% and 90%."""
    from prunelab.training import TrainSettings

    base = tmp_path_factory.mktemp("cache")
    write_idx_set(base / "data" / "MNIST" / "raw", n_train=64, n_test=32, gz=True)
    runner = Runner(RunStore(base / "runs"), data_root=base / "data", device="cpu")
    rep = Replicate(ModelHparams("lenet_300_100"), DataHparams("mnist"), TrainSettings(**TRAINING_DICT), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sparsity in (0.5, 0.9):
            for method in ("magnitude", "random"):
                prune_at_step(runner, rep, PruneHparams(method=method, sparsity=sparsity))
    return base / "runs"


@pytest.fixture
def store(made_store, tmp_path):
    """A copy of the store that a test may change."""
    return Path(shutil.copytree(made_store, tmp_path / "runs"))


def _files(out: Path) -> dict[str, bytes]:
    """Every file of a report but the page, whose first paragraph says when it was written."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != "index.html"}


def _page(out: Path) -> str:
    return re.sub(r"Written [0-9T:-]+\.", "", (out / "index.html").read_text())


def _identities(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each figure file: an atomic rewrite changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "figures").iterdir()}


def _run_of(store: Path, method: str, sparsity: float) -> Path:
    for folder in store.iterdir():
        pruning = json.loads((folder / "hparams.json").read_text()).get("pruning") or {}
        if (pruning.get("method"), pruning.get("sparsity")) == (method, sparsity):
            return folder
    raise AssertionError(f"no {method} run at {sparsity}")


def test_a_second_report_runs_no_builder_draws_nothing_and_writes_the_same_files(store, tmp_path, monkeypatch):
    out = tmp_path / "report"
    _, first = build_report(store, out, dpi=30, jobs=1)
    assert first.drawn == len(first.figures) >= 6 and first.notes == []
    files, page, identities = _files(out), _page(out), _identities(out)

    calls = []
    monkeypatch.setattr(figure_builds, "run_builder", lambda *a, **k: calls.append(a) or ([], []))
    monkeypatch.setattr("prunelab.Mask.load", lambda path: pytest.fail(f"{path} was read again"))
    _, second = build_report(store, out, dpi=30, jobs=1)
    assert calls == [] and second.drawn == 0 and second.reused == len(first.figures)
    assert _files(out) == files and _page(out) == page
    assert {k: v for k, v in _identities(out).items() if k != "builds.json"} == {
        k: v for k, v in identities.items() if k != "builds.json"}  # not even rewritten


def test_one_changed_run_redraws_exactly_the_figures_that_show_it(store, tmp_path):
    out = tmp_path / "report"
    _, first = build_report(store, out, dpi=30, jobs=1)
    before = _identities(out)
    run = _run_of(store, "random", 0.9)
    result = json.loads((run / "result.json").read_text())
    result["test_accuracy"] = 0.123
    (run / "result.json").write_text(json.dumps(result))

    _, second = build_report(store, out, dpi=30, jobs=1)
    after = _identities(out)
    redrawn = {name.partition(".")[0] for name in after if after[name] != before.get(name)} - {"builds"}
    # the accuracy of a run is drawn by the accuracy figures that include it, and by nothing else
    assert redrawn == {f.name for f in second.figures if run.name in f.runs and f.name.startswith("accuracy-vs-")}
    assert redrawn and second.drawn == len(redrawn)
    # and they are the files a report drawn from scratch writes
    build_report(store, tmp_path / "fresh", dpi=30, jobs=1)
    assert _files(out) == _files(tmp_path / "fresh") and _page(out) == _page(tmp_path / "fresh")

    # one run's training curve: only the learning curves at its sparsity are drawn again
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace('"test_accuracy": ', '"test_accuracy": 0.5, "was": ', 1))
    _, third = build_report(store, out, dpi=30, jobs=1)
    assert third.drawn == 1 and any(f.name.startswith("learning-curves-90-") for f in third.figures)
    changed = {name for name, ident in _identities(out).items() if ident != after.get(name)} - {"builds.json"}
    assert {name.partition(".")[0] for name in changed} == {
        f.name for f in third.figures if f.name.startswith("learning-curves-90-")}


def test_workers_write_the_bytes_of_a_serial_report(store, tmp_path):
    _, serial = build_report(store, tmp_path / "serial", dpi=30, jobs=1)
    _, parallel = build_report(store, tmp_path / "parallel", dpi=30, jobs=2)
    assert parallel.drawn == serial.drawn == len(serial.figures)
    assert _files(tmp_path / "parallel") == _files(tmp_path / "serial")
    assert _page(tmp_path / "parallel") == _page(tmp_path / "serial")


def test_rebuild_draws_every_figure_again_and_stale_figures_are_removed(store, tmp_path):
    out = tmp_path / "report"
    _, first = build_report(store, out, dpi=30, jobs=1)
    files = _files(out)
    _, again = build_report(store, out, dpi=30, jobs=1, rebuild=True)
    assert again.drawn == len(first.figures) and _files(out) == files
    for run in store.iterdir():  # every pruned run gone: only the dense run's figures are left
        if json.loads((run / "hparams.json").read_text())["kind"] != "dense":
            shutil.rmtree(run)
    _, dense = build_report(store, out, dpi=30, jobs=1)
    left = {p.name.partition(".")[0] for p in (out / "figures").iterdir()} - {"builds"}
    assert left == {f.name for f in dense.figures} and len(left) < len(first.figures)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled: the mask ran code",))


@pytest.mark.parametrize("damage", ["malicious pickle", "garbage"])
def test_a_damaged_mask_is_named_in_one_warning_line_every_report(store, tmp_path, capsys, damage):
    from prunelab.cli import main

    mask = _run_of(store, "magnitude", 0.9) / "mask.pt"
    mask.write_bytes(pickle.dumps(_Evil()) if damage == "malicious pickle" else b"\x00not a mask")
    for _ in range(2):  # the report remembers the sound files only: a damaged one is named every time
        assert main(["report", "--root", str(store), "--out", str(tmp_path / "out"), "--dpi", "30"]) == 0
        captured = capsys.readouterr()
        assert "unpickled" not in captured.out + captured.err
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("prunelab: warning: ") and str(mask) in lines[0], lines


def test_vector_files_are_drawn_on_request_alone_and_removed_when_not_asked(store, tmp_path, capsys):
    """A first report writes PNG only (the page's files); asking for PDF and SVG later draws those formats alone
    (no PNG rewritten) with the bytes of a report that drew all three at once; asking for PNG again removes them."""
    out = tmp_path / "report"
    _, first = build_report(store, out, dpi=30, jobs=1)
    figures = out / "figures"
    assert {p.suffix for p in figures.iterdir()} == {".png", ".sha256", ".json"}
    assert "--formats png,pdf,svg" in (out / "index.html").read_text()
    pngs = {k: v for k, v in _identities(out).items() if k.endswith(".png")}

    _, vector = build_report(store, out, dpi=30, jobs=1, formats=("svg", "png", "pdf"))
    assert vector.drawn == len(first.figures)
    assert {k: v for k, v in _identities(out).items() if k.endswith(".png")} == pngs  # not redrawn
    assert len(list(figures.glob("*.pdf"))) == len(list(figures.glob("*.svg"))) == len(first.figures)
    for fig in vector.figures:
        assert list(fig.files) == ["png", "pdf", "svg"]
    build_report(store, tmp_path / "at-once", dpi=30, jobs=1, formats=("png", "pdf", "svg"))
    assert _files(out) == _files(tmp_path / "at-once")

    _, again = build_report(store, out, dpi=30, jobs=1, formats=("png", "pdf", "svg"))
    assert again.drawn == 0
    _, png_only = build_report(store, out, dpi=30, jobs=1)
    assert png_only.drawn == 0 and not list(figures.glob("*.pdf")) and not list(figures.glob("*.svg"))
    n = len(first.figures)
    assert png_only.notes == [f"removed {n} PDF and {n} SVG files of the figures, a format this report was not asked "
                              "for (--formats png,pdf,svg keeps them)"]  # said, not silent


@pytest.mark.parametrize("formats, message", [
    ("png,eps", "unknown figure format 'eps'"),
    ("pdf,svg", "lack png, which the report's page shows"),
])
def test_bad_figure_formats_are_one_line_before_anything_is_written(store, tmp_path, capsys, formats, message):
    from prunelab.cli import main

    out = tmp_path / "out"
    assert main(["report", "--root", str(store), "--out", str(out), "--formats", formats]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
