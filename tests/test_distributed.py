"""DDP over two CPU processes (gloo) under torchrun, against single-process training."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_data import write_idx_set

from prunelab.experiments import protocols
from prunelab.experiments.hparams import DataHparams, ModelHparams, PruneHparams
from prunelab.experiments.runner import Replicate, Runner
from prunelab.experiments.store import RunStore
from prunelab.training import TrainSettings
from prunelab.training.checkpoints import CheckpointFolder


def test_ddp_two_ranks_match_single_process(tmp_path):
    pytest.importorskip("torch.distributed.run")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    data_root = tmp_path / "data"
    write_idx_set(data_root / "MNIST" / "raw", n_train=64, n_test=32, gz=True)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "tests/ddp_worker.py", str(data_root), str(tmp_path / "ddp"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # SNIP scored its batch shared out over both ranks (prunelab.scores.batching); rank 0 saved the mask
    assert (out / "pruned_by_rank0").exists() and (out / "pruned_by_rank1").exists()
    store = RunStore(tmp_path / "ddp")
    (prune_run,) = [i for i, hp, r in store.runs() if hp["kind"] == "prune"]
    r0, r1 = (torch.load(out / f"rank{r}_{prune_run}.pt") for r in (0, 1))
    assert r0["mask"].keys() == r1["mask"].keys()
    assert all(torch.equal(r0["mask"][n], r1["mask"][n]) for n in r0["mask"])
    for record in (r0, r1):
        for name, keep in record["mask"].items():
            assert torch.all(record["state"][name][~keep] == 0.0)
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])  # ranks in lock-step

    # the same run in one process, same global batch
    runner = Runner(RunStore(tmp_path / "single"), data_root=data_root, device="cpu")
    training = TrainSettings(train="2ep", batch_size=16, lr=0.05, momentum=0.9)
    rep = Replicate(ModelHparams("lenet_300_100"), DataHparams("mnist"), training, seed=0)
    result = protocols.prune_at_step(runner, rep, PruneHparams(method="snip", sparsity=0.8, batch_per_class=2))
    assert result["id"] == prune_run
    single = CheckpointFolder(tmp_path / "single" / prune_run / "checkpoints").load_latest()["model"]
    for k, v in single.items():
        assert torch.allclose(v, r0["state"][k], atol=1e-5), k
    ddp_result = store.result(prune_run)
    assert ddp_result["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1 / 32 + 1e-9)


def test_evaluation_is_split_across_ranks_and_equals_the_whole_test_set(tmp_path):
    """Each rank evaluates its part of every test batch (the last batch has one image: rank 1's part is
    empty) and the sums are all-reduced: the figures are those of rank 0's network on the whole set,
    each image counted once, computed here in one plain pass."""
    pytest.importorskip("torch.distributed.run")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from conftest import make_learnable_images
    from test_speed_options import convnet

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "tests/ddp_eval_worker.py", str(tmp_path)]
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    def test_figures(record):
        return [(m["step"], m["test_accuracy"], m["test_loss"]) for m in record["metrics"]]

    assert test_figures(r0) == test_figures(r1)  # every rank holds the reduced figures (train loss: its own)
    model = convnet()
    model.load_state_dict(r0["state"])
    model.eval()
    images, labels = make_learnable_images(513, 4, 8, seed=1)
    train_images = make_learnable_images(64, 4, 8, seed=0)[0].double() / 255
    mean, std = train_images.mean().item(), train_images.std(unbiased=False).item()
    with torch.no_grad():
        out = model(((images.float() / 255 - mean) / std).float())
    final = r0["metrics"][-1]
    assert final["test_accuracy"] == (out.argmax(1) == labels).sum().item() / 513
    assert final["test_loss"] == pytest.approx(torch.nn.functional.cross_entropy(out.double(), labels).item(), rel=1e-5)
