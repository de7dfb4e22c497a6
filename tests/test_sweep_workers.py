"""Local sweep workers die with their parent: kill -9 of `prunelab sweep --workers 2` while a worker computes
leaves no process of the sweep behind and no run locked, and a rerun finishes the sweep with the bits of an
uninterrupted one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_crash_safety import snapshot
from test_data import write_idx_set

from prunelab.cli import main
from prunelab.experiments import workers
from prunelab.experiments.store import RunStore

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=32, n_test=16, gz=True)
    return root


def sweep_args(tmp_path, data_root, root):
    spec = tmp_path / "s.toml"
    # two dense trainings side by side (one phase: one start of the workers), 80 steps each, long enough to
    # be caught running
    spec.write_text('protocol = "train"\nseeds = [0, 1]\n[model]\nmodel = "lenet_300_100"\n[dataset]\n'
                    'dataset = "mnist"\n[training]\ntrain = "20ep"\nbatch_size = 8\n')
    return ["sweep", str(spec), "--root", str(root), "--data-root", str(data_root), "--device", "cpu",
            "--no-progress", "--workers", "2"]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (its children, theirs, ...), from /proc."""
    out, todo = set(), [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except OSError:  # the task ended while we looked
                continue
            todo.extend(children - out)
            out |= children
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def locked_runs(root: Path) -> list[str]:
    store = RunStore(root)
    return [d.name for d in root.iterdir() if d.is_dir() and (d / ".lock").exists() and store.running(d.name)] \
        if root.is_dir() else []


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_killing_the_sweep_kills_its_workers_and_a_rerun_finishes_it_bitwise(data_root, tmp_path):
    reference = tmp_path / "reference"
    assert main(sweep_args(tmp_path, data_root, reference)) == 0

    root = tmp_path / "runs"
    left: set[int] = set()
    parent = subprocess.Popen([sys.executable, "-m", "prunelab", *sweep_args(tmp_path, data_root, root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # a worker is computing a run (it holds the run's lock) and has saved a checkpoint of it
        wait_for(lambda: any(list((root / r / "checkpoints").glob("*.pt")) for r in locked_runs(root)), 120,
                 "a worker holding a run's lock with a checkpoint saved")
        left = descendants(parent.pid)
        assert len(left) >= 2  # the two workers (and multiprocessing's resource tracker)
        parent.kill()
        assert parent.wait(10) == -signal.SIGKILL
        wait_for(lambda: not any(alive(p) for p in left), 5, f"the sweep's processes {sorted(left)} to end")
    finally:  # nothing of ours outlives a failed test
        for pid in [parent.pid, *left]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        parent.wait()
    assert not locked_runs(root)  # their locks went with them
    assert len([r for r, _, result in RunStore(root).runs() if result is not None]) < 2  # the sweep was cut short

    assert main(sweep_args(tmp_path, data_root, root)) == 0
    got, want = snapshot(root), snapshot(reference)
    assert got.keys() == want.keys() and len(want) == 2
    for run_id, w in want.items():
        g = got[run_id]
        assert g["result"] == w["result"] and g["metrics"] == w["metrics"] and g["mask"] == w["mask"], run_id
        assert all(torch.equal(g["weights"][k], w["weights"][k]) for k in w["weights"]), run_id


def test_a_worker_whose_parent_is_already_gone_ends_at_once(tmp_path):
    """The death signal is set after the worker started: a parent that died before sends none, so the worker
    looks once itself (here the 'parent' pid given is not its parent at all)."""
    code = ("import sys, time; from prunelab.experiments.workers import die_with_parent; "
            "die_with_parent(int(sys.argv[1])); time.sleep(30)")
    proc = subprocess.run([sys.executable, "-c", code, str(os.getpid() + 10**6)], timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_the_parent_watch_alone_ends_a_worker_whose_parent_died(tmp_path):
    """Where there is no death signal (not Linux), the watch thread does it: a grandchild whose parent is
    killed is gone within a few polls."""
    pidfile = tmp_path / "pid"
    code = ("import os, sys, time, subprocess; "
            "child = ['-c', 'import os, sys, time; from prunelab.experiments import workers; "
            "workers._set_death_signal = lambda: False; workers.die_with_parent(os.getppid()); "
            "open(sys.argv[1], \"w\").write(str(os.getpid())); time.sleep(30)', sys.argv[1]]; "
            "subprocess.Popen([sys.executable, *child]); time.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(pidfile)])
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60, "the worker to start")
        worker = int(pidfile.read_text())
        parent.kill()
        parent.wait()
        wait_for(lambda: not alive(worker), 5 * workers.PARENT_POLL + 2, "the orphaned worker to end")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
