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
