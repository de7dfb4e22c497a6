"""Compact exports (prunelab.compact, prunelab export-model): the export's outputs equal the masked network's, computed
by a plain forward pass of the original network with its pruned weights set to zero; the channels it removes are
those an independent count of all-zero input slices finds; the command checks everything before any work."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import prunelab
from prunelab import models
from prunelab.compact import LAYER_FORMATS, CompactWarning, CsrLinear, compact, load_compact, save_compact

pytest.importorskip("torch_pruning")


def _reference(model: nn.Module, mask, x: torch.Tensor) -> torch.Tensor:
    """The masked network's outputs: a copy of the plain network, pruned weights set to 0, one forward pass."""
    ref = copy.deepcopy(model)
    prunelab.remove_mask(ref)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, keep in mask.items():
            params[name].mul_(keep.to(params[name].dtype))
        return ref.eval()(x)


def _inputs(shape, n=32, seed=5):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _assert_equal_outputs(model, mask, net, shape):
    x = _inputs(shape)
    want = _reference(model, mask, x)
    with torch.inference_mode():
        got = net(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def _random_bn(model: nn.Module, seed: int = 0) -> None:
    """BatchNorm statistics and shifts far from their defaults, so that a channel removed wrongly shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_a_hand_built_mask_loses_exactly_the_channels_no_layer_reads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    _random_bn(model)
    mask = prunelab.Mask.ones(model)
    keep = mask["3.weight"].clone()
    keep[:, [1, 5]] = False  # input channels 1 and 5 of the second convolution
    mask = prunelab.Mask({**mask, "3.weight": keep})
    net, report = compact(model, mask, (3, 6, 6), repeats=1, formats=["dense"])
    assert net[0].out_channels == 6 and net[1].num_features == 6 and net[3].in_channels == 6
    assert net[6].out_features == 5  # the outputs are never touched
    assert report.channels == {"0": (8, 6)}
    _assert_equal_outputs(model, mask, net, (3, 6, 6))


def test_lenet_300_100_in_csr_and_its_dead_units_removed():
    model = models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), seed=0)
    mask = prunelab.prune(model, "random", 0.99, seed=1)  # about a third of the hidden units lose every output
    net, report = compact(model, mask, (1, 28, 28), repeats=1, formats=["csr"])
    assert all(isinstance(m, CsrLinear) for m in (net[1], net[3], net[5]))
    # A hidden unit whose every outgoing weight is pruned reads into nothing: counted here from the mask alone.
    unread_1 = int((~mask["3.weight"]).all(dim=0).sum())
    unread_2 = int((~mask["5.weight"]).all(dim=0).sum())
    assert unread_1 > 0 and net[1].out_features == 300 - unread_1 and net[3].out_features == 100 - unread_2
    assert report.params_after < report.params_before
    _assert_equal_outputs(model, mask, net, (1, 28, 28))


def test_lenet5_with_input_channel_masks_becomes_a_smaller_dense_network():
    model = models.create("lenet5", num_classes=10, input_shape=(1, 28, 28), seed=0)
    mask = _quiet(prunelab.prune, model, "l1_channel", 0.5)
    net, report = compact(model, mask, (1, 28, 28), repeats=1)
    read_by_conv2 = int(mask["3.weight"].any(dim=(0, 2, 3)).sum())
    assert net[0].out_channels == read_by_conv2 < 20
    assert net[7].out_features == int(mask["9.weight"].any(dim=0).sum()) < 500
    assert report.params_after < 0.6 * report.params_before
    _assert_equal_outputs(model, mask, net, (1, 28, 28))


def test_resnet20_channels_removed_through_residual_connections():
    model = models.create("resnet20", num_classes=10, input_shape=(3, 16, 16), seed=0)
    _random_bn(model)
    mask = _quiet(prunelab.prune, model, "l1_channel", 0.5)
    net, report = compact(model, mask, (3, 16, 16), repeats=1, formats=["dense"])
    for stage in ("layer1", "layer2", "layer3"):
        for block in range(3):
            name = f"{stage}.{block}"
            read = int(mask[f"{name}.conv2.weight"].any(dim=(0, 2, 3)).sum())
            assert net.get_submodule(f"{name}.conv1").out_channels == read, name
            assert net.get_submodule(f"{name}.bn1").num_features == read, name
    assert report.params_after < report.params_before
    _assert_equal_outputs(model, mask, net, (3, 16, 16))


def test_output_channels_with_a_bias_stay_and_are_named():
    model = models.create("lenet5", num_classes=10, input_shape=(1, 28, 28), seed=0)
    mask = _quiet(prunelab.prune, model, "l1_channel", 0.5, axis="output")
    with pytest.warns(CompactWarning, match="output channels with all-zero weights stay"):
        net, _ = compact(model, mask, (1, 28, 28), repeats=1, formats=["dense"])
    _assert_equal_outputs(model, mask, net, (1, 28, 28))


def test_a_2_4_mask_exports_and_the_cuda_format_says_why_not_here():
    model = models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), seed=0)
    mask = prunelab.prune(model, "magnitude", 0.5, pattern="2:4")
    net, report = compact(model, mask, (1, 28, 28), repeats=1)
    if not torch.cuda.is_available():
        assert all("CUDA" in c.refused["2:4"] for c in report.layers)
    _assert_equal_outputs(model, mask, net, (1, 28, 28))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 semi-structured kernels run on CUDA only")
def test_2_4_layers_run_semi_structured_on_cuda():
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))
    mask = prunelab.prune(model, "magnitude", 0.5, pattern="2:4")
    net, report = compact(model, mask, (128,), device="cuda", dtype=torch.float16, formats=["2:4"], repeats=1)
    assert report.formats() == {"0": "2:4", "2": "2:4"}
    x = _inputs((128,))
    want = _reference(model, mask, x)
    with torch.inference_mode():
        got = net(x.cuda().half()).float().cpu()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


def test_vit_tiny_keeps_dense_the_layers_its_fused_path_reads_and_loses_dead_mlp_units():
    model = models.create("vit_tiny", num_classes=10, input_shape=(1, 28, 28), seed=0)
    mask = _quiet(prunelab.prune, model, "magnitude", 0.95)
    net, report = _quiet(compact, model, mask, (1, 28, 28), repeats=1, formats=["csr"])
    refused = {c.name: c.refused.get("csr", "") for c in report.layers}
    assert "AttributeError" in refused["encoder.layers.0.linear1"]  # TransformerEncoderLayer reads linear1.weight
    for i in range(4):  # MLP units whose every outgoing weight is pruned: counted from the mask alone
        unread = int((~mask[f"encoder.layers.{i}.linear2.weight"]).all(dim=0).sum())
        assert net.get_submodule(f"encoder.layers.{i}.linear1").out_features == 128 - unread
    _assert_equal_outputs(model, mask, net, (1, 28, 28))


def test_save_and_load_give_the_same_outputs(tmp_path):
    model = models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), seed=0)
    mask = prunelab.prune(model, "magnitude", 0.98)
    net, report = compact(model, mask, (1, 28, 28), repeats=1, formats=["csr"])
    path = save_compact(tmp_path / "m.compact.pt", net, report, (1, 28, 28))
    loaded = load_compact(path)
    assert isinstance(loaded[1], CsrLinear)
    _assert_equal_outputs(model, mask, loaded, (1, 28, 28))


def test_an_export_that_would_change_the_outputs_is_refused(monkeypatch):
    from prunelab import compact as compact_module

    model = models.create("lenet5", num_classes=10, input_shape=(1, 28, 28), seed=0)
    mask = _quiet(prunelab.prune, model, "l1_channel", 0.5)
    real = compact_module._dead_in_group

    def one_read_channel_too(group, readers, per_channel):  # a wrong analysis: one channel that is read goes too
        dead = real(group, readers, per_channel)
        if dead is None:
            return None
        return dead + [i for i in range(len(group.items[0].idxs)) if i not in dead][:1]

    monkeypatch.setattr(compact_module, "_dead_in_group", one_read_channel_too)
    with pytest.raises(ValueError, match="differ from the masked network's"):
        compact(model, mask, (1, 28, 28), repeats=1, formats=["dense"])


def test_the_commands_format_names_are_the_registry(tmp_path):
    from prunelab.export_model import FORMAT_NAMES

    assert FORMAT_NAMES == tuple(LAYER_FORMATS)


# ---- the command ----------------------------------------------------------------------------------------

def _finished_run(root, sparsity=0.95, kind="prune"):
    """A run folder as the prune protocol leaves it: hparams, mask, trained weights (a checkpoint), result."""
    from prunelab.experiments.hparams import DataHparams, ModelHparams
    from prunelab.experiments.protocols.prune_at import PRUNE_AT_STEP, PruneHparams
    from prunelab.experiments.runner import Replicate
    from prunelab.experiments.store import RunStore
    from prunelab.training.checkpoints import CheckpointFolder
    from prunelab.training.settings import recipe

    rep = Replicate(ModelHparams(model="lenet_300_100"), DataHparams(dataset="fashion_mnist"),
                    recipe("lenet_300_100", "fashion_mnist"), seed=0)
    hp = PruneHparams(method="magnitude", sparsity=sparsity)
    store = RunStore(root)
    run_id = "a1" * 8
    record = PRUNE_AT_STEP.hparams_record(rep, hp) if kind == "prune" else {"kind": "dense", **rep.describe()}
    folder = store.begin(run_id, record)
    model = models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), seed=3)
    mask = prunelab.prune(model, "magnitude", sparsity)
    mask.apply(model)
    mask.save(folder / "mask.pt")
    ck = CheckpointFolder(folder / "checkpoints")
    ck.folder.mkdir(parents=True, exist_ok=True)
    ck.save({"step": 10, "model": model.state_dict()})
    store.finish(run_id, {"status": "done", "kind": kind, "test_accuracy": 0.5, "sparsity": mask.sparsity})
    return run_id, model, mask


def test_export_model_writes_an_export_equal_to_the_masked_network(tmp_path, capsys):
    from prunelab import cli

    run_id, model, mask = _finished_run(tmp_path / "runs")
    out = tmp_path / "m.pt"
    status = cli.main(["export-model", run_id[:6], "--root", str(tmp_path / "runs"), "--out", str(out),
                       "--repeats", "2", "--tune-batch", "8", "--batch-sizes", "1", "4"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "speed-up" in printed and "channels removed" in printed and f"wrote {out}" in printed
    _assert_equal_outputs(model, mask, load_compact(out), (1, 28, 28))


@pytest.mark.parametrize("extra,message", [
    (["--dtype", "float8"], "unknown dtype 'float8'"),
    (["--formats", "coo"], "unknown layer format 'coo'"),
    (["--repeats", "0"], "--repeats must be an integer >= 1"),
    (["--out", "{tmp}"], "is a folder"),
    (["--out", "{tmp}/nowhere/m.pt"], "does not exist"),
    pytest.param(["--device", "cuda"], "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_export_model_refuses_bad_arguments_in_one_line_before_any_work(tmp_path, capsys, extra, message):
    from prunelab import cli

    run_id, _, _ = _finished_run(tmp_path / "runs")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    before = sorted(p.name for p in tmp_path.iterdir())
    status = cli.main(["export-model", run_id, "--root", str(tmp_path / "runs"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_export_model_of_a_dense_run_says_so(tmp_path, capsys, monkeypatch):
    from prunelab import cli

    run_id, _, _ = _finished_run(tmp_path / "runs", kind="dense")
    monkeypatch.chdir(tmp_path)
    status = cli.main(["export-model", run_id, "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "dense run" in err[0]
    assert not list(tmp_path.glob("*.compact.pt"))


class _TupleOut(nn.Module):
    """An MLP that returns (logits, features), as many research models do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        features = self.body(x)
        return self.head(features), features


def test_a_model_returning_a_tuple_exports_and_its_logits_are_checked():
    model = _TupleOut()
    mask = prunelab.prune(model, "magnitude", 0.9, scope="layer")
    net, _ = _quiet(compact, model, mask, (16,), repeats=1, formats=["dense", "csr"])
    x = _inputs((16,))
    want = _reference(model, mask, x)[0]
    with torch.inference_mode():
        got = net(x)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_a_saved_format_this_version_does_not_know_loads_dense_with_a_warning(tmp_path):
    model = models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), seed=0)
    mask = prunelab.prune(model, "magnitude", 0.98)
    net, report = _quiet(compact, model, mask, (1, 28, 28), repeats=1, formats=["csr"])
    path = save_compact(tmp_path / "m.compact.pt", net, report, (1, 28, 28))
    saved = torch.load(path, weights_only=False)
    saved["formats"] = {name: "blocked-ell" for name in saved["formats"]}
    torch.save(saved, path)
    with pytest.warns(CompactWarning, match="blocked-ell: not a format of this version"):
        loaded = load_compact(path)
    assert not any(isinstance(m, CsrLinear) for m in loaded.modules())
    _assert_equal_outputs(model, mask, loaded, (1, 28, 28))
