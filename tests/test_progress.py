"""Progress: plain lines when the output is not a terminal; sweep progress in training steps over all jobs."""

import io
import re
import time

import pytest
from test_data import write_idx_set

from prunelab import models, progress
from prunelab.cli import main
from prunelab.training import TrainSettings, train


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_not_a_terminal_gets_a_line_every_interval_and_no_carriage_returns():
    out = io.StringIO()
    bar = progress.bar(400, unit="steps", desc="sweep", file=out, interval=0.1)
    start = time.monotonic()
    for _ in range(400):
        time.sleep(0.002)
        bar.update(1)
    bar.close()
    elapsed = time.monotonic() - start
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert 2 <= len(lines) <= elapsed / 0.1 + 3  # the first line, one per interval at most, the last one
    assert lines[-1].startswith("sweep: 400/400 steps (100%)") and "ETA" in lines[-1]


def test_a_terminal_gets_tqdms_live_bar():
    out = Terminal()
    bar = progress.bar(10, file=out)
    bar.update(10)
    bar.close()
    assert "\r" in out.getvalue()


def test_disabled_bar_writes_nothing():
    out = io.StringIO()
    bar = progress.bar(10, file=out, enabled=False)
    bar.update(10)
    bar.close()
    assert out.getvalue() == ""


def test_training_progress_in_a_log_is_a_few_lines(tiny_dataset, capsys, monkeypatch):
    monkeypatch.setattr(progress, "LINE_INTERVAL", 3600.0)  # no time-driven line: only the first and the last
    model = models.create("lenet_300_100", num_classes=4, input_shape=(1, 8, 8), seed=0)
    train(model, tiny_dataset, TrainSettings(train="10ep", batch_size=8), device="cpu", progress=True)
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    steps = 10 * 128 // 8
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("training: 0/160") and lines[1].startswith(f"training: {steps}/")
    assert "acc=" in lines[1]


@pytest.fixture
def data_root(tmp_path):
    write_idx_set(tmp_path / "data" / "MNIST" / "raw", n_train=32, n_test=16, gz=True)
    return tmp_path / "data"


def write_spec(path):
    path.write_text('protocol = "run"\nseeds = [0]\n[model]\nmodel = "lenet_300_100"\n[dataset]\ndataset = "mnist"\n'
                    '[training]\ntrain = "2ep"\nbatch_size = 8\n[pruning]\nmethod = ["magnitude", "random"]\n'
                    'sparsity = 0.5\n')
    return str(path)


def sweep_lines(err: str) -> list[str]:
    assert "\r" not in err
    return [line for line in err.splitlines() if line.startswith("sweep:")]


def test_sweep_progress_counts_training_steps_of_every_job(data_root, tmp_path, capsys):
    assert main(["sweep", write_spec(tmp_path / "s.toml"), "--root", str(tmp_path / "runs"), "--data-root",
                 str(data_root), "--workers", "1", "--device", "cpu"]) == 0
    # 32 examples / batch 8 = 4 steps per epoch, 2 epochs: the dense replicate, then two runs retraining 8 each
    total = 3 * 4 * 2
    lines = sweep_lines(capsys.readouterr().err)
    assert lines[0].startswith(f"sweep: 0/{total} steps")
    assert re.match(rf"sweep: {total}/{total} steps \(100%\)", lines[-1]), lines[-1]
    assert "jobs=3/3" in lines[-1] and "failed=0" in lines[-1]


def test_sweep_workers_report_their_steps_through_a_queue(data_root, tmp_path, capsys):
    root, spec = str(tmp_path / "runs"), write_spec(tmp_path / "s.toml")
    dense = ["train", "--model", "lenet_300_100", "--dataset", "mnist", "--train", "2ep", "--batch-size", "8"]
    assert main([*dense, "--root", root, "--data-root", str(data_root), "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    # the dense replicate is done: one phase, two runs in two worker processes (one pool, started once)
    assert main(["sweep", spec, "--root", root, "--data-root", str(data_root), "--workers", "2", "--device",
                 "cpu"]) == 0
    lines = sweep_lines(capsys.readouterr().err)
    assert re.match(r"sweep: 16/16 steps \(100%\)", lines[-1]), lines[-1]
    assert "jobs=2/2" in lines[-1]
