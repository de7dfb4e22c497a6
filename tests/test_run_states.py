"""Run states in ``ls`` (running, interrupted, failed), ``show``/``analyze`` of a run folder, and provenance."""

import datetime
import json
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_data import write_idx_set

import prunelab
from prunelab.cli import main
from prunelab.experiments.store import RunStore


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=32, n_test=16, gz=True)
    return root


def cli_args(data_root, root, method="magnitude"):
    return ["run", "--model", "lenet_300_100", "--dataset", "mnist", "--method", method, "--sparsity", "0.5",
            "--train", "1ep", "--batch-size", "16", "--data-root", str(data_root), "--root", str(root),
            "--no-progress", "--device", "cpu"]


def git_state():
    """The checkout's commit and dirtiness, asked of git here (None outside a checkout)."""
    checkout = str(Path(prunelab.__file__).parent.parent)
    head = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None
    status = subprocess.run(["git", "-C", checkout, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True).stdout
    return {"commit": head.stdout.strip(), "dirty": status.strip() != ""}


@pytest.fixture(scope="module")
def store_root(data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("store") / "runs"
    git = git_state()  # just before the runs, so that no edit of the tree can come in between
    assert main(cli_args(data_root, root)) == 0
    return root, git


def ls_states(root, capsys) -> dict[str, str]:
    capsys.readouterr()
    assert main(["ls", "--root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    return {line.split()[0]: line.split()[-2] for line in lines}  # status, then accuracy


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds the run's lock, as a worker computing it would."""
    code = ("import fcntl, sys, time\nf = open(sys.argv[1], 'a+')\nfcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder / ".lock")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_ls_tells_running_interrupted_and_failed_runs_apart(store_root, tmp_path, capsys):
    store_root, _ = store_root
    root = tmp_path / "runs"
    shutil.copytree(store_root, root)
    store = RunStore(root)
    dense, pruned = sorted(store.ids(), key=lambda i: store.hparams(i)["kind"])
    assert ls_states(root, capsys) == {dense: "done", pruned: "done"}
    (root / pruned / "result.json").unlink()
    assert ls_states(root, capsys)[pruned] == "interrupted"  # no result, nobody holds its lock
    holder = hold_lock(root / pruned)
    try:
        assert ls_states(root, capsys)[pruned] == "running"
    finally:
        holder.kill()
        holder.wait()
    assert ls_states(root, capsys)[pruned] == "interrupted"  # the kernel released the dead holder's lock
    assert store.record_failure(pruned, ValueError("boom"))
    assert ls_states(root, capsys)[pruned] == "failed"
    holder = hold_lock(root / pruned)
    try:
        assert ls_states(root, capsys)[pruned] == "running"  # a failed run being retried
    finally:
        holder.kill()
        holder.wait()
    assert ls_states(root, capsys)[dense] == "done"


def test_show_and_analyze_take_a_run_folder_of_any_store(store_root, tmp_path, capsys, monkeypatch):
    store_root, _ = store_root
    monkeypatch.chdir(tmp_path)  # the default --root ./runs does not exist here
    store = RunStore(store_root)
    pruned = next(i for i in store.ids() if store.hparams(i)["kind"] == "prune")
    capsys.readouterr()
    assert main(["show", str(store_root / pruned)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == pruned and shown["folder"] == str(store_root.resolve() / pruned)
    assert shown["hparams"] == store.hparams(pruned) and shown["result"]["status"] == "done"
    assert main(["analyze", str(store_root / pruned)]) == 0
    assert f"run {pruned}" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "nowhere")]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_every_run_records_where_it_came_from(store_root, capsys):
    store_root, git = store_root
    store = RunStore(store_root)
    for run_id in store.ids():
        hp = json.loads((store_root / run_id / "hparams.json").read_text())
        assert set(hp) <= {"id", "kind", "model", "dataset", "training", "seed", "pruning"}  # not in the hash
        (session,) = store.provenance(run_id)["sessions"]
        assert session["prunelab"] == prunelab.__version__ and session["torch"] == torch.__version__
        assert session["python"] == platform.python_version() and session["host"] == socket.gethostname()
        assert session["command"] == sys.argv and session["device"] == "cpu"
        assert session["threads"] == torch.get_num_threads() and session["outcome"] == "done"
        assert session["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
        if Path("/proc/cpuinfo").is_file():  # the model as the kernel names it, read another way here
            names = {line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")}
            assert session["cpu"]["model"] in names
        start, end = (datetime.datetime.fromisoformat(session[k]) for k in ("started_at", "ended_at"))
        assert start <= end and start.tzinfo is not None
        assert session["git"] == git
        capsys.readouterr()
        assert main(["show", run_id, "--root", str(store_root)]) == 0
        assert json.loads(capsys.readouterr().out)["provenance"]["sessions"] == [session]


def test_a_rerun_of_a_finished_run_adds_no_session(data_root, store_root, tmp_path):
    store_root, _ = store_root
    root = tmp_path / "runs"
    shutil.copytree(store_root, root)
    before = {i: RunStore(root).provenance(i) for i in RunStore(root).ids()}
    assert main(cli_args(data_root, root)) == 0
    assert {i: RunStore(root).provenance(i) for i in RunStore(root).ids()} == before


def test_a_failed_run_that_succeeds_on_retry_keeps_no_old_error(tmp_path):
    store = RunStore(tmp_path / "runs")
    run_id = "0123456789abcdef"
    store.folder(run_id).mkdir(parents=True)
    assert store.record_failure(run_id, ValueError("boom"))
    assert (store.folder(run_id) / "error.txt").is_file()
    assert store.result(run_id) is None  # failed: retried
    store.finish(run_id, {"status": "done", "test_accuracy": 0.5})
    assert store.result(run_id)["status"] == "done"
    assert not (store.folder(run_id) / "error.txt").exists()
