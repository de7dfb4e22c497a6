"""``timm:NAME`` and ``torchvision:NAME``: those libraries' models built for prunelab's datasets."""

import json
import subprocess
import sys

import pytest
import torch
from test_data import write_idx_set

from prunelab import models
from prunelab.cli import main

timm = pytest.importorskip("timm")


@pytest.mark.parametrize("name", ["timm:resnet10t", "torchvision:resnet18"])
def test_a_library_model_takes_one_channel_28x28_and_gives_the_classes(name):
    model = models.create(name, num_classes=10, input_shape=(1, 28, 28), seed=0)
    assert model.eval()(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert not hasattr(model, "prunelab_init")  # the library's own initialization, pruned as it is


def test_same_seed_same_bits_and_another_seed_other_weights():
    a, b, c = (models.create("timm:resnet10t", input_shape=(1, 28, 28), seed=s) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.conv1[0].weight, c.conv1[0].weight)


def test_torchvision_stem_keeps_the_first_channels_of_its_own_init():
    torch.manual_seed(0)
    rgb = models.libraries.LIBRARIES.get("torchvision").build(
        __import__("torchvision"), "resnet18", 10, (3, 32, 32), {})
    torch.manual_seed(0)
    gray = models.libraries.LIBRARIES.get("torchvision").build(
        __import__("torchvision"), "resnet18", 10, (1, 32, 32), {})
    assert gray.conv1.in_channels == 1 and gray.conv1.kernel_size == rgb.conv1.kernel_size
    assert torch.equal(gray.conv1.weight, rgb.conv1.weight[:, :1])


def test_another_init_redraws_with_prunelab_initializers():
    model = models.create("timm:resnet10t", input_shape=(1, 28, 28), init="xavier_normal", seed=0)
    assert model.prunelab_init["init"] == "xavier_normal"


def test_fixed_image_size_models_are_built_for_the_data():
    vit = models.create("timm:deit_tiny_patch16_224", num_classes=10, input_shape=(3, 32, 32), seed=0)
    assert vit.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name,message", [
    ("timm:resnet10", "did you mean 'timm:resnet10t'"),
    ("torchvision:resnet181", "did you mean 'torchvision:resnet18'"),
    ("tim:resnet10t", "did you mean 'timm'"),
    ("timm:", "names no timm model"),
    ("torchvision:vit_b_16", "Input shape indivisible by patch size"),  # 28 px in 16 px patches
    ("timm:convnext_atto", "downsamples less"),  # stride 32 on 28 px
])
def test_user_errors_are_one_line(name, message):
    with pytest.raises(ValueError, match=message) as err:
        models.create(name, num_classes=10, input_shape=(1, 28, 28))
    assert "\n" not in str(err.value)


def test_unknown_option_is_one_line():
    with pytest.raises(ValueError, match="unexpected keyword argument 'bogus'"):
        models.create("timm:resnet10t", bogus=1)


def test_existing_names_still_resolve_without_a_library():
    code = ("import sys; from prunelab import models; models.create('lenet_300_100', input_shape=(1, 28, 28)); "
            "assert 'timm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_runs_a_timm_model_on_idx_data(tmp_path, capsys):
    write_idx_set(tmp_path / "data" / "MNIST" / "raw", n_train=40, n_test=20, gz=True)
    argv = ["train", "--model", "timm:resnet10t", "--dataset", "mnist", "--data-root", tmp_path / "data",
            "--train", "2it", "--milestones", "--batch-size", "10", "--root", tmp_path / "runs", "--no-progress",
            "--device", "cpu"]
    assert main([str(a) for a in argv]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "hparams.json").read_text())["model"]["model"] == "timm:resnet10t"
    assert json.loads((run_dir / "result.json").read_text())["steps"] == 2


def test_cli_refuses_an_unknown_library_model_in_one_line(tmp_path, capsys):
    write_idx_set(tmp_path / "data" / "MNIST" / "raw", n_train=40, n_test=20, gz=True)
    argv = ["train", "--model", "timm:resnet10", "--dataset", "mnist", "--data-root", tmp_path / "data",
            "--train", "2it", "--root", tmp_path / "runs", "--no-progress", "--device", "cpu"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'timm:resnet10t'" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_the_reinit_ablation_redraws_a_library_model_from_its_library():
    import prunelab
    from prunelab import ablations

    a = models.create("torchvision:resnet18", num_classes=10, input_shape=(1, 28, 28), seed=0)
    b = models.create("torchvision:resnet18", num_classes=10, input_shape=(1, 28, 28), seed=1)
    mask = prunelab.prune(a, "magnitude", 0.5).apply(a)
    ablations.reinitialize(a, seed=1, mask=mask)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        want = q.detach() * mask[n] if n in mask else q.detach()
        assert torch.equal(p.detach(), want), n
