"""Mixed-precision modes, run-time options (channels-last, cuDNN flags, TF32, deterministic), evaluation."""

import hashlib
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab import Mask
from prunelab.cli import build_parser, main
from prunelab.experiments.hparams import run_hash
from prunelab.training import TrainSettings, evaluate, train
from prunelab.training.precision import Precision
from prunelab.training.runtime import RuntimeOptions, auto_loader_workers

SHORT = TrainSettings(train="1ep", batch_size=32, lr=0.05, eval_every="1ep")  # 4 steps


def convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 4))


# ---- mixed precision ------------------------------------------------------------------------------

@pytest.mark.parametrize("amp,device,dtype,scaling", [
    (False, "cpu", None, False), (True, "cpu", torch.bfloat16, False), (True, "cuda", torch.float16, True),
    ("bf16", "cuda", torch.bfloat16, False), ("fp16", "cpu", torch.float16, True),
])
def test_amp_modes(amp, device, dtype, scaling):
    p = Precision.of(amp, device)
    assert (p.dtype, p.loss_scaling) == (dtype, scaling)


def test_amp_true_keeps_its_hash_and_modes_get_their_own():
    def by_hand(training):  # the canonical JSON of run_hash, written out independently
        text = json.dumps({"kind": "dense", "training": training}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    assert run_hash("dense", training=TrainSettings(amp=True)) == by_hand({"amp": True})
    assert run_hash("dense", training=TrainSettings(amp="bf16")) == by_hand({"amp": "bf16"})
    assert len({run_hash("dense", training=TrainSettings(amp=a)) for a in (False, True, "bf16", "fp16")}) == 4


@pytest.mark.parametrize("bad", ["bf61", 1, "float16"])
def test_bad_amp_modes_are_refused(bad):
    with pytest.raises(ValueError, match="amp"):
        TrainSettings(amp=bad)


@pytest.mark.parametrize("argv,want", [([], None), (["--amp"], True), (["--amp", "bf16"], "bf16"),
                                       (["--amp", "fp16"], "fp16"), (["--no-amp"], False)])
def test_amp_flag(argv, want):
    args = build_parser().parse_args(["train", "--model", "m", "--dataset", "d", *argv])
    assert args.amp == want


@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), (False, torch.float32)])
def test_training_runs_the_forward_pass_in_the_mode_dtype(tiny_dataset, amp, dtype):
    model, seen = convnet(), []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    res = train(model, tiny_dataset, SHORT.replace(amp=amp), device="cpu")
    assert set(seen) == {dtype} and res.test_accuracy is not None
    assert all(p.dtype == torch.float32 for p in model.parameters())  # float32 master weights


# ---- run-time options -------------------------------------------------------------------------------

def test_runtime_options_are_not_part_of_the_identity_and_reach_provenance(tmp_path, capsys):
    from test_data import write_idx_set

    from prunelab.experiments.store import RunStore

    write_idx_set(tmp_path / "data" / "MNIST" / "raw", n_train=32, n_test=16, gz=True)
    base = ["train", "--model", "lenet_300_100", "--dataset", "mnist", "--train", "2it", "--batch-size", "16",
            "--data-root", str(tmp_path / "data"), "--root", str(tmp_path / "runs"), "--no-progress", "--device",
            "cpu"]
    assert main(base + ["--deterministic", "--tf32", "--channels-last", "--sparse-kernels", "on"]) == 0
    assert main(base) == 0  # the same run: found, not redone
    store = RunStore(tmp_path / "runs")
    (run_id,) = [i for i, _, _ in store.runs()]
    (session,) = store.provenance(run_id)["sessions"]
    assert session["runtime"] == {"loader_workers": None, "channels_last": True, "cudnn_benchmark": False,
                                  "tf32": True, "deterministic": True, "threads": None, "sparse_kernels": "on"}
    assert session["threads"] == 1  # --threads not given: the one default of docs/guide.md §4
    assert session["device_info"]["type"] == "cpu" and session["device_info"]["cuda"] == torch.version.cuda


def test_backend_flags_are_set_while_training_and_restored_after(tiny_dataset, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.backends.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled())
    seen = {}

    def look(step, model):
        seen.update(det=torch.are_deterministic_algorithms_enabled(), cudnn_det=torch.backends.cudnn.deterministic,
                    tf32=torch.backends.cuda.matmul.allow_tf32, cublas=os.environ.get("CUBLAS_WORKSPACE_CONFIG"))

    train(convnet(), tiny_dataset, SHORT, device="cpu", runtime=RuntimeOptions(deterministic=True, tf32=True),
          on_step=look)
    assert seen == {"det": True, "cudnn_det": True, "tf32": True, "cublas": ":4096:8"}
    after = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled())
    assert after == before


def test_bad_runtime_options_are_refused():
    with pytest.raises(ValueError, match="exclude each other"):
        RuntimeOptions(deterministic=True, cudnn_benchmark=True)
    with pytest.raises(ValueError, match="non-negative"):
        RuntimeOptions(loader_workers=-1)


def test_channels_last_trains_the_same_network_and_keeps_the_mask(tiny_dataset):
    formats = []

    def look(step, model):
        formats.append(model[0].weight.is_contiguous(memory_format=torch.channels_last))

    results = []
    for channels_last in (False, True):
        model = convnet()
        mask = Mask({"0.weight": torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(0)) > 0.5,
                     "4.weight": torch.ones(4, 256, dtype=torch.bool)})
        train(model, tiny_dataset, SHORT.replace(momentum=0.9), device="cpu", mask=mask,
              runtime=RuntimeOptions(channels_last=channels_last), on_step=look if channels_last else None)
        assert torch.all(model[0].weight[~mask["0.weight"]] == 0)
        results.append(model.state_dict())
    assert formats and all(formats)
    for k in results[0]:
        torch.testing.assert_close(results[1][k], results[0][k], rtol=1e-4, atol=1e-5)


def test_loader_workers_default_from_the_cpus_per_gpu(monkeypatch):
    from prunelab.training import runtime

    monkeypatch.setattr(runtime, "available_cpus", lambda: 32)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert auto_loader_workers(torch.device("cuda", 0)) == 4
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert auto_loader_workers(torch.device("cuda", 0)) == 8  # at most 8
    assert auto_loader_workers(torch.device("cpu")) == 0
    assert RuntimeOptions(loader_workers=3).workers_for(torch.device("cuda", 0)) == 3


def test_loader_workers_for_an_in_memory_dataset_are_ignored_with_a_warning(tiny_dataset):
    with pytest.warns(UserWarning, match="--loader-workers 2 ignored"):
        train(convnet(), tiny_dataset, SHORT, device="cpu", runtime=RuntimeOptions(loader_workers=2))


# ---- evaluation ------------------------------------------------------------------------------------

def test_evaluate_equals_a_plain_computation(tiny_dataset):
    model = convnet(3).eval()
    x, y = tiny_dataset.test.images, tiny_dataset.test.labels
    with torch.no_grad():
        out = model(tiny_dataset.normalize(x))
    want_acc = (out.argmax(1) == y).double().mean().item()
    want_loss = F.cross_entropy(out.double(), y).item()
    acc, loss = evaluate(model, tiny_dataset.loader("test", 10).epoch(0), torch.device("cpu"))  # 64 = 6*10 + 4
    assert acc == want_acc and loss == pytest.approx(want_loss, rel=1e-6)
