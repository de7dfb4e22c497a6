"""The catalogue of bad inputs: one line on stderr, exit status 2, nothing written to the run store."""

import errno

import pytest
from test_data import write_idx_set

import prunelab
import prunelab.io
from prunelab import Mask, models
from prunelab.cli import main


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=40, n_test=20, gz=True)
    return root


def base(data_root, root):
    return ["run", "--model", "lenet_300_100", "--dataset", "mnist", "--train", "1ep", "--batch-size", "10",
            "--data-root", str(data_root), "--root", str(root), "--no-progress", "--device", "cpu"]


def one_line_error(capsys, code, fragment):
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("prunelab") and err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err, err


@pytest.mark.parametrize("extra,fragment", [
    (["--model", "resnt20"], "did you mean 'resnet20'"),
    (["--dataset", "cifar11"], "did you mean 'cifar10'"),
    (["--method", "grsap"], "did you mean 'grasp'"),
    (["--ablation", "reinitialize"], "did you mean 'reinit'"),
    (["--sparsity", "-0.1"], "sparsity"),
    (["--sparsity", "1"], "sparsity"),
    (["--train", "40 epochs"], "malformed duration"),
    (["--prune-at", "2ep"], "beyond the training length"),
    (["--iterations", "-3"], "iterations must be >= 1"),
    (["--lr", "0"], "learning rate must be > 0"),
    (["--batch-size", "-5"], "batch size must be >= 1"),
    (["--init", "kaiming"], "did you mean"),
    (["--config", "missing.toml"], "config file not found"),
])
def test_bad_run_inputs(data_root, tmp_path, capsys, extra, fragment):
    code = main(base(data_root, tmp_path / "runs") + extra)
    one_line_error(capsys, code, fragment)
    assert not (tmp_path / "runs").exists()


def test_unknown_executor_and_dataset_missing_offline(data_root, tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('[model]\nmodel = "lenet_300_100"\n[dataset]\ndataset = "mnist"\n')
    one_line_error(capsys, main(["sweep", str(spec), "--executor", "slurn"]), "did you mean 'slurm'")
    code = main(["train", "--model", "resnet20", "--dataset", "cifar100", "--data-root", str(tmp_path / "empty"),
                 "--root", str(tmp_path / "runs")])
    one_line_error(capsys, code, "cifar")
    assert not (tmp_path / "runs").exists()


def test_bad_toml_config(data_root, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[training]\nlearning_rate = 0.1\n')
    one_line_error(capsys, main(base(data_root, tmp_path / "runs") + ["--config", str(cfg)]), "unknown key")
    cfg.write_text('[training]\nbatch_size = "big"\n')
    one_line_error(capsys, main(base(data_root, tmp_path / "runs") + ["--config", str(cfg)]), "batch_size must be int")
    assert not (tmp_path / "runs").exists()


def test_run_root_not_writable(data_root, tmp_path, capsys, monkeypatch):
    from pathlib import Path

    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "runs")):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    one_line_error(capsys, main(base(data_root, tmp_path / "runs") + ["--method", "magnitude"]), "not writable")


def test_disk_full_leaves_no_half_written_file(data_root, tmp_path, capsys, monkeypatch):
    real = prunelab.io.atomic_write

    def full_disk(path, write):
        if str(path).endswith(".pt"):
            def partial(f):
                f.write(b"x" * 10)
                raise OSError(errno.ENOSPC, "No space left on device", str(path))

            return real(path, partial)
        return real(path, write)

    monkeypatch.setattr(prunelab.io, "atomic_write", full_disk)
    one_line_error(capsys, main(base(data_root, tmp_path / "runs") + ["--method", "magnitude"]),
                   "No space left on device")
    assert not list((tmp_path / "runs").rglob("*.pt")) and not list((tmp_path / "runs").rglob(".*.tmp"))
    assert not list((tmp_path / "runs").rglob("result.json"))


def test_api_errors_are_precise():
    model = models.create("lenet_300_100", input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="needs inputs of at least"):
        models.create("lenet5", input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="sparsity"):
        prunelab.prune(model, "magnitude", 1.5)
    with pytest.raises(ValueError, match="did you mean 'snip'"):
        prunelab.prune(model, "snipp", 0.5)
    other = models.create("lenet5", input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="mask does not fit"):
        Mask.ones(other).apply(model)


def test_mask_of_another_architecture_and_corrupt_mask_file(tmp_path):
    model = models.create("lenet_300_100", input_shape=(1, 28, 28))
    wide = models.create("lenet_300_100", input_shape=(1, 32, 32))
    Mask.ones(wide).save(tmp_path / "wide.pt")
    with pytest.raises(ValueError, match="shape"):
        Mask.load(tmp_path / "wide.pt").apply(model)
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 50)
    with pytest.raises(ValueError, match="corrupted"):
        Mask.load(tmp_path / "bad.pt")
