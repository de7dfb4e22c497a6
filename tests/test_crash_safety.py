"""kill -9 at several points, then run again: the result is bitwise that of an uninterrupted run (CPU)."""

import json
import stat
import subprocess
import sys
import warnings

import pytest
import torch
from test_data import write_idx_set

from prunelab import Mask
from prunelab.cli import main
from prunelab.experiments.runner import SESSION_FIELDS
from prunelab.experiments.store import RunStore
from prunelab.training.checkpoints import CheckpointFolder

VOLATILE = {"wall_time", "finished_at", "started_at", *SESSION_FIELDS}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=64, n_test=32, gz=True)
    return root


def cli_args(data_root, root):
    # dense: 12 steps (4 per epoch), then the pruned network: 12 more
    return ["run", "--model", "lenet_300_100", "--dataset", "mnist", "--method", "snip", "--batch-per-class", "2",
            "--sparsity", "0.8", "--train", "3ep", "--batch-size", "16", "--momentum", "0.9", "--data-root",
            str(data_root), "--root", str(root), "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    assert main(cli_args(data_root, root)) == 0
    return root


def snapshot(root):
    store = RunStore(root)
    out = {}
    for run_id, _, result in store.runs():
        folder = store.folder(run_id)
        ck = CheckpointFolder(folder / "checkpoints")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no checkpoint may be left corrupt in a finished store
            final = ck.load_latest()["model"]
        mask = Mask.load(folder / "mask.pt") if (folder / "mask.pt").exists() else None
        out[run_id] = {
            "result": {k: v for k, v in result.items() if k not in VOLATILE},
            "metrics": (folder / "metrics.jsonl").read_text(),
            "weights": final,
            "mask": mask,
        }
    return out


@pytest.mark.parametrize("point,n", [
    ("train", 6),  # during the dense training
    ("train", 19),  # during the pruned network's training
    ("prune", 1),  # while pruning
    ("checkpoint", 2),  # while writing a checkpoint
    ("checkpoint", 7),  # (the pruned network's second; the dense run writes 5)
    ("background", 4),  # while the background thread writes the dense run's latest.pt of step 4
    ("background", 16),  # ... the pruned network's of step 4
    ("result", 1),  # while writing the dense run's result
    ("result", 2),  # while writing the pruned run's result
])
def test_kill_and_resume_is_bitwise_identical(data_root, reference, tmp_path, point, n):
    root = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "tests/crash_harness.py", point, str(n), "--", *cli_args(data_root, root)],
                          capture_output=True, text=True, timeout=120)  # one thread, as here (conftest)
    assert proc.returncode == -9, proc.stderr[-2000:]
    if point == "background":  # killed while a checkpoint was half written, by the training thread
        assert list(root.rglob(".*.pt.*.tmp"))
    assert main(cli_args(data_root, root)) == 0
    got, want = snapshot(root), snapshot(reference)
    assert got.keys() == want.keys()
    for run_id in want:
        g, w = got[run_id], want[run_id]
        assert g["result"] == w["result"], run_id
        assert g["metrics"] == w["metrics"], run_id
        assert g["mask"] == w["mask"], run_id
        assert all(torch.equal(g["weights"][k], w["weights"][k]) for k in w["weights"]), run_id
    assert not list(root.rglob(".*.tmp"))  # the half-written temporary files were cleared


@pytest.mark.parametrize("name,code,words,point,n,step", [
    ("TERM", 143, "terminated (SIGTERM)", "train", 19, 4),  # what Slurm and `timeout` send
    ("INT", 130, "interrupted", "train", 6, 4),  # Ctrl-C
])
def test_a_signal_stops_with_one_line_and_a_rerun_resumes(data_root, reference, tmp_path, name, code, words, point,
                                                           n, step):
    root = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "tests/crash_harness.py", point, str(n), name, "--",
                           *cli_args(data_root, root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr[-2000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"prunelab: {words}; finished runs are kept; run "), line
    assert f"saved its checkpoint at step {step}" in line and "rerunning the same command resumes" in line, line
    stopped = line.split("; run ")[1].split()[0]
    assert not list(root.rglob(".*.tmp"))
    session = RunStore(root).provenance(stopped)["sessions"][-1]
    assert session["outcome"] == "interrupted" and session["ended_at"] >= session["started_at"]
    assert main(cli_args(data_root, root)) == 0
    got, want = snapshot(root), snapshot(reference)
    for run_id in want:
        assert got[run_id]["result"] == want[run_id]["result"] and got[run_id]["metrics"] == want[run_id]["metrics"]
        assert all(torch.equal(got[run_id]["weights"][k], w) for k, w in want[run_id]["weights"].items())
    assert [s["outcome"] for s in RunStore(root).provenance(stopped)["sessions"]] == ["interrupted", "done"]


def test_corrupt_files_are_set_aside_and_recovered(data_root, reference, tmp_path, capsys):
    root = tmp_path / "runs"
    assert main(cli_args(data_root, root)) == 0
    store = RunStore(root)
    prune_id = next(i for i, hp, _ in store.runs() if hp["kind"] == "prune")
    folder = store.folder(prune_id)
    # the run is not finished (result gone), its mask and latest checkpoint are damaged
    (folder / "result.json").unlink()
    (folder / "mask.pt").write_bytes(b"garbage")
    latest = folder / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:100])
    capsys.readouterr()
    assert main(cli_args(data_root, root)) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prunelab: warning:")]
    assert len(warned) == 2, warned  # one line for each damaged file, naming it
    assert "mask.pt" in warned[0] and "set aside as mask.pt.corrupt" in warned[0]
    assert "latest.pt" in warned[1] and "set aside as latest.pt.corrupt" in warned[1]
    assert (folder / "mask.pt.corrupt").exists() and (folder / "checkpoints" / "latest.pt.corrupt").exists()
    want = snapshot(reference)[prune_id]
    got = snapshot(root)[prune_id]
    assert got["result"] == want["result"] and got["mask"] == want["mask"]


def test_corrupt_result_json_is_not_trusted(data_root, tmp_path):
    root = tmp_path / "runs"
    assert main(cli_args(data_root, root)) == 0
    store = RunStore(root)
    prune_id = next(i for i, hp, _ in store.runs() if hp["kind"] == "prune")
    good = json.loads((store.folder(prune_id) / "result.json").read_text())
    (store.folder(prune_id) / "result.json").write_text('{"status": "do')
    with pytest.warns(UserWarning, match="set aside"):
        assert store.result(prune_id) is None
    assert (store.folder(prune_id) / "result.json.corrupt").read_text() == '{"status": "do'
    assert main(cli_args(data_root, root)) == 0
    again = json.loads((store.folder(prune_id) / "result.json").read_text())
    assert {k: v for k, v in again.items() if k not in VOLATILE} == {k: v for k, v in good.items() if k not in VOLATILE}


def test_atomic_writes_get_the_permissions_of_plain_files(tmp_path):
    """A run store shared by a group must not end up owner-only: atomic writes go through a temporary
    file (created 0o600), so they must get what ``open()`` would have given under the umask."""
    from prunelab.io import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
