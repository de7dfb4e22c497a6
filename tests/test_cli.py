import json
import subprocess
import sys

import pytest
from test_data import write_idx_set

from prunelab.cli import main


@pytest.fixture
def mnist_root(tmp_path):
    write_idx_set(tmp_path / "data" / "MNIST" / "raw", n_train=40, n_test=20, gz=True)
    return tmp_path / "data"


def run_cli(*argv):
    return main([str(a) for a in argv])


def test_train_writes_a_run_and_caches_it(mnist_root, tmp_path, capsys):
    args = ["train", "--model", "lenet_300_100", "--dataset", "mnist", "--data-root", mnist_root, "--train", "2ep",
            "--batch-size", "10", "--root", tmp_path / "runs", "--no-progress", "--device", "cpu"]
    assert run_cli(*args) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    hparams = json.loads((run_dir / "hparams.json").read_text())
    assert result["status"] == "done" and result["steps"] == 8
    assert hparams["training"]["train"] == "2ep" and hparams["training"]["batch_size"] == 10
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [4, 8]
    assert metrics[-1]["test_accuracy"] == result["test_accuracy"]
    assert (run_dir / "checkpoints" / "latest.pt").is_file()
    stored = (run_dir / "result.json").read_text()
    assert run_cli(*args) == 0  # cached: the stored result, nothing retrained or rewritten
    assert (run_dir / "result.json").read_text() == stored
    assert run_dir.name in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "lenet_300_10"], "did you mean 'lenet_300_100'"),
        (["--dataset", "mnsit"], "did you mean 'mnist'"),
        (["--train", "4 epochs"], "malformed duration"),
        (["--lr", "-0.1"], "learning rate must be > 0"),
        (["--batch-size", "0"], "batch size must be >= 1"),
        (["--optimizer", "adamm"], "did you mean 'adam'"),
        (["--lr", "abc"], "invalid float value"),
    ],
)
def test_user_errors_are_one_line_exit_2_and_write_nothing(mnist_root, tmp_path, capsys, argv, message):
    base = {"--model": "lenet_300_100", "--dataset": "mnist", "--train": "1ep"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    flat = [x for kv in base.items() for x in kv]
    code = run_cli("train", *flat, "--data-root", mnist_root, "--root", tmp_path / "runs", "--no-progress")
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("prunelab")
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_is_one_line(tmp_path, capsys):
    code = run_cli("train", "--model", "lenet_300_100", "--dataset", "cifar10", "--data-root", tmp_path,
                   "--root", tmp_path / "runs")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cifar" in err.lower()


def test_console_entry_point_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "prunelab.cli", "train", "--model", "nope", "--dataset", "mnist"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_run_lottery_ls_show_and_config(mnist_root, tmp_path, capsys):
    common = ["--model", "lenet_300_100", "--dataset", "mnist", "--data-root", mnist_root, "--train", "1ep",
              "--batch-size", "10", "--root", tmp_path / "runs", "--no-progress", "--device", "cpu"]
    assert run_cli("run", *common, "--method", "magnitude", "--sparsity", "0.5", "--ablation", "shuffle") == 0
    assert run_cli("lottery", *common, "--levels", "2", "--rate", "0.3", "--rewind-to", "finetune") == 0
    out = capsys.readouterr().out
    assert "level" in out
    assert run_cli("ls", "--root", tmp_path / "runs") == 0
    listing = capsys.readouterr().out
    assert "magnitude@0it+shuffle" in listing and "unstructured L2 rewind finetune" in listing
    assert listing.count("done") == 4  # dense, the pruned run, two lottery levels
    run_id = listing.splitlines()[2].split()[0]
    assert run_cli("show", run_id[:6], "--root", tmp_path / "runs") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["result"]["status"] == "done"
    config = tmp_path / "c.toml"
    config.write_text('[model]\nmodel = "lenet_300_100"\n[dataset]\ndataset = "mnist"\n[training]\ntrain = "1ep"\n'
                      'batch_size = 10\n[pruning]\nmethod = "magnitude"\nsparsity = 0.5\nablation = "shuffle"\n')
    # same run as above through the config: cached, so the same id is printed
    assert run_cli("run", "--config", config, "--data-root", mnist_root, "--root", tmp_path / "runs",
                   "--no-progress", "--device", "cpu") == 0
    first = [line for line in out.splitlines() if line.startswith("run ")][0]
    assert first in capsys.readouterr().out


def test_run_user_errors(mnist_root, tmp_path, capsys):
    common = ["--model", "lenet_300_100", "--dataset", "mnist", "--data-root", mnist_root, "--root", tmp_path / "r",
              "--batch-size", "10"]
    for extra, message in [
        (["--sparsity", "1.2"], "sparsity must be a number in [0, 1)"),
        (["--method", "snipp"], "did you mean 'snip'"),
        (["--iterations", "0"], "iterations must be an integer >= 1"),
        (["--prune-at", "500ep"], "beyond the training length"),
        (["--ablation", "inverse"], "did you mean 'invert'"),
    ]:
        assert run_cli("run", *common, *extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
        assert not (tmp_path / "r").exists(), extra  # nothing written to the store
    assert run_cli("show", "nope", "--root", tmp_path / "r") == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_a_diverging_run_is_recorded_and_exits_nonzero(mnist_root, tmp_path, capsys):
    args = ["run", "--model", "lenet_300_100", "--dataset", "mnist", "--data-root", mnist_root, "--train", "1ep",
            "--batch-size", "10", "--root", tmp_path / "runs", "--no-progress", "--device", "cpu",
            "--method", "magnitude", "--sparsity", "0.5", "--lr", "1e30"]
    assert run_cli(*args) == 1
    err = capsys.readouterr().err
    assert "diverged at step" in err and "Traceback" not in err
    results = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/result.json")]
    assert sorted(r["status"] for r in results) == ["diverged", "diverged"]  # the dense run and the pruned one
    assert all(r["step"] >= 1 for r in results)
    assert run_cli(*args) == 1  # recorded: not trained again
