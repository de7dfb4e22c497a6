"""A run's thread count is part of what it promises (one default alone and in a sweep, recorded, a resume
with another count said in one line), and a training shorter than its recipe's schedule scales the recipe's
values and refuses the user's (issue 30, items 4 and 5)."""

import json
import warnings

import pytest
import torch
from test_data import write_idx_set

from prunelab.cli import main
from prunelab.experiments.hparams import DataHparams, ModelHparams
from prunelab.experiments.runner import Replicate, Runner, ScheduleScaledWarning
from prunelab.experiments.store import RunStore
from prunelab.training import TrainSettings, recipe, train
from prunelab.training import runtime as runtime_module
from prunelab.training.checkpoints import load_checkpoint, save_checkpoint
from prunelab.training.loop import CPUChangeWarning, ExecutionChangeWarning
from prunelab.training.runtime import RuntimeOptions, default_threads, torch_threads
from prunelab.training.settings import fit_schedule


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=32, n_test=16, gz=True)
    return root


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    """64 training images: 16 iterations per epoch at batch 4, so the vit_tiny recipe's 7ep is 112 it."""
    root = tmp_path_factory.mktemp("fashion")
    write_idx_set(root / "FashionMNIST" / "raw", n_train=64, n_test=16, gz=True)
    return root


# ---- threads ---------------------------------------------------------------------------------------

def test_the_default_thread_rule(monkeypatch):
    monkeypatch.setattr(runtime_module, "available_cpus", lambda: 16)
    # On the CPU: one thread per run, alone or beside any number of workers.
    assert {default_threads("cpu", w) for w in (1, 2, 16, 64)} == {1}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    # On CUDA: the CPUs per GPU, fewer when more workers than GPUs share the machine.
    assert default_threads("cuda") == default_threads("auto", 4) == 4 and default_threads("cuda", 8) == 2
    assert RuntimeOptions(threads=3).threads_for("cuda", 8) == 3  # --threads wins
    with pytest.raises(ValueError, match=r"--threads must be an integer >= 1"):
        RuntimeOptions(threads=0)


def _weights(root, run_id):
    folder = RunStore(root).folder(run_id)
    result = json.loads((folder / "result.json").read_text())
    state = load_checkpoint(folder / "checkpoints" / f"step_{result['steps']}.pt")["model"]
    return result, state


def test_cli_and_sweeps_of_one_and_two_workers_agree_bitwise(mnist_root, tmp_path, capsys):
    """The same dense job launched alone and by sweeps of 1 and 2 workers: the same thread count (recorded in
    each session) and the same bits, even when the launching process runs more threads."""
    flags = ["--data-root", str(mnist_root), "--device", "cpu", "--no-progress"]
    spec = tmp_path / "s.toml"
    spec.write_text('protocol = "train"\nseeds = [0]\n[model]\nmodel = "lenet_300_100"\n[dataset]\n'
                    'dataset = "mnist"\n[training]\ntrain = "1ep"\nbatch_size = 8\nmomentum = 0.9\n')
    with torch_threads(2):  # a caller with more threads: the run must not inherit them
        assert main(["train", "--model", "lenet_300_100", "--dataset", "mnist", "--train", "1ep", "--batch-size",
                     "8", "--momentum", "0.9", "--root", str(tmp_path / "cli"), *flags]) == 0
        assert torch.get_num_threads() == 2  # given back
        for workers in ("1", "2"):
            assert main(["sweep", str(spec), "--root", str(tmp_path / f"w{workers}"), "--workers", workers,
                         *flags]) == 0
    capsys.readouterr()
    (run_id,) = RunStore(tmp_path / "cli").ids()
    expected_result, expected = _weights(tmp_path / "cli", run_id)
    for root in ("cli", "w1", "w2"):
        (session,) = RunStore(tmp_path / root).provenance(run_id)["sessions"]
        assert session["threads"] == 1 and session["interop_threads"] >= 1
        result, state = _weights(tmp_path / root, run_id)
        assert result["test_loss"] == expected_result["test_loss"]
        assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_threads_flag_is_recorded(mnist_root, tmp_path, capsys):
    assert main(["train", "--model", "lenet_300_100", "--dataset", "mnist", "--train", "2it", "--batch-size", "8",
                 "--threads", "2", "--root", str(tmp_path), "--data-root", str(mnist_root), "--device", "cpu",
                 "--no-progress"]) == 0
    (run_id,) = RunStore(tmp_path).ids()
    (session,) = RunStore(tmp_path).provenance(run_id)["sessions"]
    assert session["threads"] == 2 and session["runtime"]["threads"] == 2
    assert main(["train", "--model", "lenet_300_100", "--dataset", "mnist", "--threads", "0",
                 "--root", str(tmp_path), "--data-root", str(mnist_root)]) == 2
    assert "--threads must be an integer >= 1" in capsys.readouterr().err


def test_a_resume_with_another_thread_count_or_cpu_warns_in_one_line(tiny_dataset, tmp_path):
    from test_speed_options import convnet

    settings = TrainSettings(train="2ep", batch_size=32)
    with torch_threads(2):
        train(convnet(), tiny_dataset, settings, device="cpu", checkpoint_dir=tmp_path, end_step=4)
    assert load_checkpoint(tmp_path / "latest.pt")["threads"] == 2
    with torch_threads(1), pytest.warns(CPUChangeWarning) as caught:
        train(convnet(), tiny_dataset, settings, device="cpu", checkpoint_dir=tmp_path)
    (w,) = [w for w in caught if issubclass(w.category, ExecutionChangeWarning)]
    message = str(w.message)
    assert "\n" not in message and "resuming at step 4 with 1 torch thread on" in message
    assert "written with 2 torch threads" in message and "--threads 2" in message

    # the same count, another instruction set: said too; the same of both: nothing
    state = load_checkpoint(tmp_path / "latest.pt")
    save_checkpoint(tmp_path / "latest.pt", {**state, "step": 4, "capability": "NO AVX"})
    with pytest.warns(CPUChangeWarning, match="written with 1 torch thread on NO AVX"):
        train(convnet(), tiny_dataset, settings, device="cpu", checkpoint_dir=tmp_path)
    save_checkpoint(tmp_path / "latest.pt", {**state, "step": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExecutionChangeWarning)
        train(convnet(), tiny_dataset, settings, device="cpu", checkpoint_dir=tmp_path)


# ---- short trainings -------------------------------------------------------------------------------

def vit(fashion_root, tmp_path, *extra):
    return ["run", "--model", "vit_tiny", "--dataset", "fashion_mnist", "--batch-size", "4", "--method", "random",
            "--sparsity", "0.5", "--root", str(tmp_path / "runs"), "--data-root", str(fashion_root), "--device", "cpu",
            "--no-progress", *extra]


def test_a_smoke_test_scales_the_recipes_schedule_and_says_so(fashion_root, tmp_path, capsys):
    assert main(vit(fashion_root, tmp_path, "--train", "100it")) == 0
    (note,) = capsys.readouterr().err.splitlines()
    assert note.startswith("prunelab: warning: training 100it is shorter than the vit_tiny recipe's schedule")
    assert "warmup 1ep -> 10it; milestones 7ep, 9ep -> 70it, 90it" in note
    store = RunStore(tmp_path / "runs")
    dense = next(h for _, h, _ in store.runs() if h["kind"] == "dense")
    assert dense["training"]["warmup"] == "10it" and dense["training"]["milestones"] == ["70it", "90it"]
    assert all(r["status"] == "done" for _, _, r in store.runs())


def test_the_users_values_are_refused_with_every_conflict_in_one_line(fashion_root, tmp_path, capsys):
    assert main(vit(fashion_root, tmp_path, "--train", "100it", "--warmup", "500it")) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == ("prunelab: error: warmup 500it is past the end of training 100it: give --warmup within it, or "
                    "a longer --train (the vit_tiny recipe's milestones 7ep (112 it), 9ep (144 it) would be "
                    "scaled to it)")
    assert main(vit(fashion_root, tmp_path, "--train", "100it", "--warmup", "500it", "--milestones", "50it",
                    "200it")) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "warmup 500it and milestone 200it are past the end of training 100it" in line
    assert "give --warmup and --milestones within it" in line
    assert not (tmp_path / "runs").exists()


def test_trainings_that_fit_keep_their_settings_and_ids(fashion_root, tmp_path):
    runner = Runner(RunStore(tmp_path), data_root=fashion_root, device="cpu")
    model, data = ModelHparams("vit_tiny"), DataHparams("fashion_mnist")
    plain = recipe("vit_tiny", "fashion_mnist")
    for training in (plain, plain.replace(train="200it"), plain.replace(train="9ep"), plain.replace(warmup="3it")):
        rep = Replicate(model, data, training)
        assert runner.fitted(rep) is rep  # 9ep: 9ep is the end, not past it


def test_scaling_is_in_epochs_when_exact():
    plain = recipe("resnet20", "cifar10")  # 160ep, drops at 80ep and 120ep
    fitted, note = fit_schedule(plain.replace(train="16ep"), plain, lambda: 391)
    assert fitted.milestones == ("8ep", "12ep") and "milestones 80ep, 120ep -> 8ep, 12ep" in note
    fitted, _ = fit_schedule(plain.replace(train="100it"), plain, lambda: 391)
    assert fitted.milestones == ("50it", "75it")


def test_a_sweep_of_a_short_training_scales_it_too(fashion_root, tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('protocol = "train"\nseeds = [0]\n[model]\nmodel = "vit_tiny"\n[dataset]\n'
                    'dataset = "fashion_mnist"\n[training]\ntrain = "100it"\nbatch_size = 4\n')
    assert main(["sweep", str(spec), "--root", str(tmp_path / "runs"), "--data-root", str(fashion_root),
                 "--device", "cpu", "--no-progress", "--dry-run"]) == 0
    (note,) = capsys.readouterr().err.splitlines()
    assert "warmup 1ep -> 10it; milestones 7ep, 9ep -> 70it, 90it" in note


def test_the_note_is_a_warning_of_its_own_class(fashion_root, tmp_path):
    runner = Runner(RunStore(tmp_path), data_root=fashion_root, device="cpu")
    rep = Replicate(ModelHparams("vit_tiny"), DataHparams("fashion_mnist"),
                    recipe("vit_tiny", "fashion_mnist").replace(train="100it", batch_size=4))
    with pytest.warns(ScheduleScaledWarning, match="warmup 1ep -> 10it"):
        assert runner.fitted(rep).training.milestones == ("70it", "90it")
