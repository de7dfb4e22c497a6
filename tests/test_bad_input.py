"""The catalogue of bad inputs: one line on stderr, exit status 2, an unchanged file tree."""

import errno
import os

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


def tree(folder):
    """Every path under ``folder`` with its size and modification time: what a refused command must not change."""
    return {str(p.relative_to(folder)): (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in folder.rglob("*")}


def refused(capsys, monkeypatch, tmp_path, argv, fragment):
    """``argv`` run from inside ``tmp_path``: one line naming the problem, status 2, nothing written anywhere."""
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    one_line_error(capsys, main(argv), fragment)
    assert tree(tmp_path) == before


NO_CUDA = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")


@pytest.mark.parametrize("extra,fragment", [
    (["--model", "resnt20"], "did you mean 'resnet20'"),
    (["--dataset", "cifar11"], "did you mean 'cifar10'"),
    (["--method", "grsap"], "did you mean 'grasp'"),
    (["--ablation", "reinitialize"], "did you mean 'reinit'"),
    (["--sparsity", "-0.1"], "sparsity"),
    (["--sparsity", "1"], "sparsity"),
    (["--train", "40 epochs"], "malformed duration"),
    (["--prune-at", "2ep"], "beyond the training length"),
    (["--iterations", "-3"], "iterations must be an integer >= 1"),
    (["--lr", "0"], "learning rate must be > 0"),
    (["--batch-size", "-5"], "batch size must be >= 1"),
    (["--init", "kaiming"], "did you mean"),
    (["--ablation", "reinit", "--reinit-init", "xavier_norml"], "did you mean 'xavier_normal'"),
    (["--reinit-init", "xavier_normal"], "needs ablation 'reinit' (got none)"),
    (["--config", "missing.toml"], "config file not found"),
    # nonsense numbers: refused before a folder is made or a step trained
    (["--lr", "inf"], "lr must be a finite number"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--weight-decay", "nan"], "weight decay must be a finite number"),
    (["--weight-decay", "inf"], "weight decay must be a finite number"),
    (["--momentum", "nan"], "momentum must be a finite number"),
    (["--gamma", "nan"], "gamma must be a finite number"),
    (["--warmup", "5ep"], "warmup 5ep (20 it) is past the end of training 1ep (4 it)"),
    (["--milestones", "1ep", "3ep"], "milestone 3ep (12 it) is past the end of training"),
    (["--train", "100000000ep"], "more than the 100,000,000"),
    (["--method", "synflow", "--iterations", "100000000000000000000"], "iterations must be <= 10,000"),
    (["--method", "snip", "--batch-per-class", "100000"], "fewer than per_class=100000"),
    (["--batch-size", "100000"], "batch size 100000 is larger than the 40 training examples"),
    (["--seed", "100000000000000000000000"], "--seed must be an integer in [0, 2**62]"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**62]"),
    (["--data-seed", "100000000000000000000000"], "data seed must be an integer in [0, 2**62]"),
    # devices
    (["--device", "foo"], "unknown device 'foo'"),
    pytest.param(["--device", "cuda"], "CUDA is not available", marks=NO_CUDA),
    pytest.param(["--device", "cuda:3"], "CUDA is not available", marks=NO_CUDA),
])
def test_bad_run_inputs(data_root, tmp_path, capsys, monkeypatch, extra, fragment):
    refused(capsys, monkeypatch, tmp_path, base(data_root, tmp_path / "runs") + extra, fragment)
    assert not (tmp_path / "runs").exists()


def test_a_bad_input_never_touches_an_existing_store(data_root, tmp_path, capsys, monkeypatch):
    assert main(base(data_root, tmp_path / "runs") + ["--method", "magnitude"]) == 0
    refused(capsys, monkeypatch, tmp_path, base(data_root, tmp_path / "runs") + ["--method", "snip",
                                                                                  "--batch-per-class", "5"],
            "fewer than per_class=5")


@pytest.mark.parametrize("extra,fragment", [
    (["--levels", "1000"], "levels must be at most 100"),
    (["--rewind-to", "5ep"], "beyond the training length"),
    (["--rate", "nan"], "rate must be a number in (0, 1)"),
    (["--lr", "inf"], "lr must be a finite number"),
])
def test_bad_lottery_inputs(data_root, tmp_path, capsys, monkeypatch, extra, fragment):
    argv = ["lottery", *base(data_root, tmp_path / "runs")[1:], *extra]
    refused(capsys, monkeypatch, tmp_path, argv, fragment)


@pytest.mark.parametrize("root,fragment", [
    (lambda tmp: tmp / ("x" * 300), "is longer than the 255 bytes"),
    (lambda tmp: tmp.joinpath(*["d" * 200] * 20), "too long: its run files would pass the 4096-byte path limit"),
])
def test_a_run_root_too_long_for_the_file_system(data_root, tmp_path, capsys, monkeypatch, root, fragment):
    refused(capsys, monkeypatch, tmp_path, base(data_root, root(tmp_path)), fragment)


SPEC = 'seeds = {seeds}\n[model]\nmodel = "lenet_300_100"\n[dataset]\ndataset = "mnist"\n[training]\ntrain = "1ep"\n' \
       'batch_size = 10\n[pruning]\nmethod = {method}\nsparsity = {sparsity}\n'


@pytest.mark.parametrize("values,extra,fragment", [
    (dict(sparsity="[]"), [], "[pruning] sparsity is an empty list"),
    (dict(method="[]"), [], "[pruning] method is an empty list"),
    (dict(seeds="[]"), [], "seeds is an empty list"),
    ({}, ["--set", "training.lr=[]"], "[training] lr is an empty list"),
    (dict(seeds="[0, 100000000000000000000]"), [], "seed must be an integer in [0, 2**62]"),
    ({}, ["--set", "training.lr=inf"], "lr must be a finite number"),
    ({}, ["--set", "training.milestones=['2ep']"], "milestone 2ep (8 it) is past the end of training"),
    ({}, ["--device", "foo"], "unknown device 'foo'"),
    ({}, ["--root", "x" * 300], "is longer than the 255 bytes"),
])
def test_bad_sweeps(data_root, tmp_path, capsys, monkeypatch, values, extra, fragment):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(**{"seeds": "[0]", "method": '"magnitude"', "sparsity": "0.5", **values}))
    argv = ["sweep", str(spec), "--root", str(tmp_path / "runs"), "--data-root", str(data_root), "--no-progress",
            *extra]
    refused(capsys, monkeypatch, tmp_path, argv, fragment)


def test_binary_garbage_as_a_config_names_the_file(data_root, tmp_path, capsys, monkeypatch):
    (tmp_path / "c.toml").write_bytes(b"\xff\xfe\x00garbage")
    refused(capsys, monkeypatch, tmp_path, base(data_root, tmp_path / "runs") + ["--config", "c.toml"],
            "config c.toml is not UTF-8 text")


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


def test_a_full_disk_names_the_file_it_was_writing(data_root, tmp_path, capsys, monkeypatch):
    """The kernel's ENOSPC comes from write or fsync, which name no file: the message must."""
    real = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and "result.json" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(prunelab.io.os, "fsync", full)
    code = main(base(data_root, tmp_path / "runs") + ["--method", "magnitude"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "No space left on device" in err and "/result.json" in err, err
    assert not list((tmp_path / "runs").rglob(".*.tmp"))


def test_an_unreadable_run_file_names_the_file(data_root, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    assert main(base(data_root, tmp_path / "runs") + ["--method", "magnitude"]) == 0
    hp = next((tmp_path / "runs").glob("*/hparams.json"))
    hp.chmod(0)
    assert main(["ls", "--root", str(tmp_path / "runs")]) == 1
    assert str(hp) in capsys.readouterr().err


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
