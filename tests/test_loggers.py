"""``--log tensorboard`` and ``--log wandb``: what the trackers hold, read back with their own readers
(TensorBoard's EventAccumulator; the records of W&B's offline run file), against ``metrics.jsonl``,
``mask.pt`` and ``result.json`` read independently; run ids unchanged; user errors before any work."""

from __future__ import annotations

import json
import struct
import sys
import warnings
from pathlib import Path

import pytest
from test_data import write_idx_set

from prunelab import Mask
from prunelab.experiments.hparams import DataHparams, ModelHparams, PruneHparams
from prunelab.experiments.protocols import prune_at_step
from prunelab.experiments.runner import Replicate, Runner
from prunelab.experiments.store import RunStore
from prunelab.training import TrainSettings
from prunelab.training.loggers import LOGGERS, check_loggers

# 64 examples, batch 16: 4 iterations per epoch, an evaluation every 2 of the 8 iterations.
TRAINING = TrainSettings(train="2ep", batch_size=16, lr=0.05, momentum=0.9, eval_every="2it", milestones=("1ep",))
REP = Replicate(ModelHparams("lenet_300_100"), DataHparams("mnist"), TRAINING, seed=0)
PRUNING = PruneHparams(method="magnitude", sparsity=0.9)
# nn.Sequential LeNet-300-100: Flatten, Linear, ReLU, Linear, ReLU, Linear
LABELS = {"1.weight": "1 (Linear)", "3.weight": "3 (Linear)", "5.weight": "5 (Linear)"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loggers-data")
    write_idx_set(root / "MNIST" / "raw", n_train=64, n_test=32, gz=True)
    return root


def _run(root: Path, data_root: Path, log: tuple[str, ...]) -> tuple[Runner, dict]:
    runner = Runner(RunStore(root), data_root=data_root, device="cpu", log=log)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runner, prune_at_step(runner, REP, PRUNING)


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _layer_sparsity(folder: Path) -> dict[str, float]:
    """Each layer's share of zeros in the saved mask, counted here."""
    return {name: 1 - float(t.float().sum()) / t.numel() for name, t in Mask.load(folder / "mask.pt").items()}


def _runs(root: Path) -> dict[str, Path]:
    """kind -> run folder."""
    return {json.loads((f / "hparams.json").read_text())["kind"]: f for f in root.iterdir()}


@pytest.fixture(scope="module")
def tensorboard_store(tmp_path_factory, data_root):
    pytest.importorskip("tensorboard")
    root = tmp_path_factory.mktemp("tb") / "runs"
    _run(root, data_root, ("tensorboard",))
    return root


def test_tensorboard_holds_every_evaluation_the_hyperparameters_and_the_result(tensorboard_store, data_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = _runs(tensorboard_store)
    assert set(runs) == {"dense", "prune"}  # the dense run the pruned one needs is logged as a run of its own
    for kind, folder in runs.items():
        events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
        evaluations = [m for m in _metrics(folder) if "test_accuracy" in m]
        assert [m["step"] for m in evaluations] == [2, 4, 6, 8]
        for key in ("test_accuracy", "test_loss", "train_loss", "lr", "epoch"):
            assert [s for s, _ in scalars[key]] == [m["step"] for m in evaluations]
            assert [v for _, v in scalars[key]] == pytest.approx([m[key] for m in evaluations], rel=1e-6)
        result = json.loads((folder / "result.json").read_text())
        assert scalars["result/test_accuracy"] == [(8, pytest.approx(result["test_accuracy"]))]
        assert scalars["result/sparsity"][0][1] == pytest.approx(result["sparsity"])
        if kind == "prune":
            assert [v for _, v in scalars["density"]] == pytest.approx([1 - result["sparsity"]] * 4, abs=1e-6)
            for name, sparsity in _layer_sparsity(folder).items():
                assert [v for _, v in scalars[f"layer_sparsity/{LABELS[name]}"]] == pytest.approx([sparsity] * 4)
        else:
            assert [v for _, v in scalars["density"]] == [1.0] * 4
            assert not any(tag.startswith("layer_sparsity/") for tag in scalars)
        hparams_plugin = events.PluginTagToContent("hparams")
        session = next(v for k, v in hparams_plugin.items() if "session_start" in k)
        assert b"training.lr" in session and b"model.model" in session and b"lenet_300_100" in session


def test_logging_leaves_run_ids_and_results_alone(tensorboard_store, data_root):
    runner, result = _run(tensorboard_store, data_root, ())  # the same command without --log
    assert runner.steps_executed == 0  # found the stored runs: logging is not part of a run's identity
    assert result["id"] == _runs(tensorboard_store)["prune"].name


def test_a_resumed_run_shows_each_evaluation_once_in_tensorboard(tmp_path, data_root, monkeypatch):
    """Interrupted after the evaluation at step 6 (its last checkpoint: step 4), then rerun: TensorBoard hides
    what the first attempt logged and shows every evaluation once, with the values of metrics.jsonl."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from prunelab.experiments import runner as runner_module
    from prunelab.training.loop import Callback

    class Interrupt(Callback):
        def after_step(self, loop, batch):
            if loop.step == 6:
                raise KeyboardInterrupt

    plain = runner_module.train

    def interrupted(*args, callbacks=(), **kwargs):  # the pruned run's training only: the dense one finishes
        extra = [Interrupt()] if kwargs.get("mask") is not None else []
        return plain(*args, callbacks=[*callbacks, *extra], **kwargs)

    monkeypatch.setattr(runner_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "runs", data_root, ("tensorboard",))
    monkeypatch.setattr(runner_module, "train", plain)
    _run(tmp_path / "runs", data_root, ("tensorboard",))
    folder = _runs(tmp_path / "runs")["prune"]
    assert len(list((folder / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per attempt
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    evaluations = [m for m in _metrics(folder) if "test_accuracy" in m]
    for key in ("test_accuracy", "train_loss"):
        shown = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in shown] == [m["step"] for m in evaluations] == [2, 4, 6, 8]
        assert [v for _, v in shown] == pytest.approx([m[key] for m in evaluations], rel=1e-6)


# ---- W&B offline -------------------------------------------------------------------------------

def _wandb_records(path: Path):
    """The protobuf records of a W&B run file: a 7-byte header (":W&B", magic, version), then LevelDB log
    records (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run_holds_every_evaluation_the_config_and_the_result(tmp_path, data_root, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _run(tmp_path / "runs", data_root, ("wandb",))
    folder = _runs(tmp_path / "runs")["prune"]
    (run_file,) = folder.glob(f"wandb/offline-run-*/run-{folder.name}.wandb")
    history: dict[int, dict] = {}
    config, summary = {}, {}
    for record in _wandb_records(run_file):
        which = record.WhichOneof("record_type")
        if which == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[row.pop("_step")] = row
        elif which == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif which == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
        elif which == "run":  # the run's start: its id, group, job type and initial config
            assert (record.run.run_id, record.run.job_type) == (folder.name, "prune") and record.run.run_group
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    evaluations = {m["step"]: m for m in _metrics(folder) if "test_accuracy" in m}
    assert sorted(history) == sorted(evaluations) == [2, 4, 6, 8]
    layers = _layer_sparsity(folder)
    for step, metrics in evaluations.items():
        for key in ("test_accuracy", "test_loss", "train_loss", "lr", "epoch"):
            assert history[step][key] == pytest.approx(metrics[key])
        for name, sparsity in layers.items():
            assert history[step][f"layer_sparsity/{LABELS[name]}"] == pytest.approx(sparsity)
        assert history[step]["density"] == pytest.approx(0.1, abs=1e-6)
    hparams = json.loads((folder / "hparams.json").read_text())
    assert config["pruning"]["method"] == "magnitude" and config["training"]["lr"] == hparams["training"]["lr"]
    result = json.loads((folder / "result.json").read_text())
    assert summary["result/test_accuracy"] == pytest.approx(result["test_accuracy"])
    assert summary["result/status"] == "done"


# ---- user errors -------------------------------------------------------------------------------

def test_unknown_or_missing_tracker_fails_before_any_work(tmp_path, monkeypatch, capsys):
    from prunelab.cli import main

    assert set(LOGGERS.names()) == {"tensorboard", "wandb"}
    with pytest.raises(ValueError, match="unknown logger 'tensorbord'; did you mean 'tensorboard'"):
        check_loggers(["tensorbord"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed
    argv = ["run", "--model", "lenet_300_100", "--dataset", "mnist", "--root", str(tmp_path / "runs"),
            "--data-root", str(tmp_path / "nodata"), "--log", "wandb"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["prunelab: error: --log wandb needs the wandb package: pip install 'prunelab[wandb]'"]
    assert not (tmp_path / "runs").exists()
