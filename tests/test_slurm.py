"""Sweeps on a real Slurm cluster: the one-node cluster of scripts/slurm/up.sh (`.ci/run` brings it up when root).

Marked ``slurm``; skipped in one line when no cluster answers. A job past its time limit requeues and finishes
bitwise; a cancelled array task and an interrupted login command are taken over by a rerun, bitwise; a DDP job of
two tasks gives the single-process result. Slurm delays a requeued job by 2 minutes (its BeginTime); the tests lift
that delay (``scontrol update StartTime=now``) so that they last minutes, not tens of minutes. The same machinery
without a cluster: tests/test_slurm_jobs.py."""

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from test_data import write_idx_set
from test_slurm_jobs import same_runs

from prunelab.cli import main
from prunelab.experiments import slurm
from prunelab.experiments.store import RunStore
from prunelab.training.checkpoints import CheckpointFolder

ANSWERS, SAID = slurm.cluster_answers()
pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(not ANSWERS, reason=f"no Slurm cluster answers ({SAID}): run scripts/slurm/up.sh "
                                                     "as root")]


@pytest.fixture(scope="module", autouse=True)
def needs_submitit():
    pytest.importorskip("submitit")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """MNIST-shaped files: 4,096 training images (64 steps an epoch at batch 64) and 64 test images."""
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=4096, n_test=64, gz=True)
    write_idx_set(root / "small" / "MNIST" / "raw", n_train=64, n_test=32, gz=True)
    return root


def _ctrl_c_default() -> None:
    """In the sweep's process: Ctrl-C's default action, so that Python handles it, whatever this process inherited
    (a shell's background job, as CI may be, starts with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spec_file(path, protocol="train", seeds="[0]", training='train = "2ep"\nbatch_size = 64', model="lenet5",
              extra="", slurm_table="time_min = 10"):
    path.write_text(f'protocol = "{protocol}"\nseeds = {seeds}\n[model]\nmodel = "{model}"\n[dataset]\n'
                    f'dataset = "mnist"\n[training]\n{training}\n{extra}\n[slurm]\n{slurm_table}\n')
    return path


def sweep_cmd(spec, root, data_root, *extra):
    return [sys.executable, "-m", "prunelab", "sweep", str(spec), "--executor", "slurm", "--root", str(root),
            "--data-root", str(data_root), "--device", "cpu", "--no-progress", *extra]


def local_sweep(spec, root, data_root) -> int:
    return main(["sweep", str(spec), "--root", str(root), "--data-root", str(data_root), "--device", "cpu",
                 "--no-progress", "--workers", "1"])


@contextlib.contextmanager
def requeued_jobs_start_at_once():
    """Slurm holds a requeued job for 2 minutes (BeginTime); here it may start at once."""
    stop = threading.Event()

    def release():
        while not stop.wait(1.0):
            out = subprocess.run(["squeue", "--noheader", "--array", "--name", slurm.JOB_NAME, "--states", "PENDING",
                                  "--format", "%i|%r"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                job_id, _, reason = line.partition("|")
                if reason.strip() == "BeginTime":
                    subprocess.run(["scontrol", "update", f"JobId={job_id.strip()}", "StartTime=now"],
                                   capture_output=True)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Lines:
    """A command's output lines, read as they come."""

    def __init__(self, proc):
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern, timeout=180.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            assert self.proc.poll() is None or self.thread.is_alive(), "\n".join(self.lines)
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n" + "\n".join(self.lines))

    def text(self) -> str:
        self.thread.join(timeout=30)
        return "\n".join(self.lines)


def test_a_job_past_its_time_limit_saves_requeues_and_finishes_bitwise(data_root, tmp_path):
    """lenet5, 3,840 steps (a minute and a half of training on one idle thread, minutes on a loaded machine) under a
    one-minute limit, Slurm signalling 10 s ahead: slurmctld looks at time limits every 30 s and signals a job
    whose limit is less than the delay plus 30 s away, so the signal comes 20 to 50 s into each job: after it has
    started (a signal during Python's start-up kills it: the spec gets a one-line warning that a one-minute limit
    risks that), and before the training can end on any machine. The job stops after a step with a checkpoint and
    requeues, one or more times, and the run ends bitwise that of an uninterrupted one."""
    spec = spec_file(tmp_path / "s.toml", training='train = "60ep"\nbatch_size = 64',
                     slurm_table="time_min = 1\nsignal_delay_s = 10\nmax_timeouts = 30")
    root = tmp_path / "runs"
    with requeued_jobs_start_at_once():
        proc = subprocess.Popen(sweep_cmd(spec, root, data_root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            assert local_sweep(spec, tmp_path / "reference", data_root) == 0  # meanwhile, on the other CPU
            out = proc.communicate(timeout=480)[0]
        finally:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Slurm may send the signal up to 60 s early" in out
    assert re.search(r"slurm job \d+ RUNNING: lenet5/mnist seed 0: dense", out), out  # its requeues may fall
    # between two looks at the queue: the run's sessions say them
    assert "jobs done: 1, diverged: 0, already done: 0, skipped: 0, failed: 0" in out
    (run_id,) = same_runs(root, tmp_path / "reference")
    sessions = json.loads((root / run_id / "provenance.json").read_text())["sessions"]
    assert len(sessions) >= 2 and {s["outcome"] for s in sessions[:-1]} == {"interrupted"}
    assert sessions[-1]["outcome"] == "done"
    logs = "".join(p.read_text() for p in (root / ".submitit").glob("*/*_log.err"))
    assert "training stopped at step" in logs and "Job not requeued" not in logs


def test_a_cancelled_task_and_an_interrupted_sweep_are_taken_over_by_a_rerun_bitwise(data_root, tmp_path):
    """Two dense trainings as one array, side by side on the node's two CPUs: one task is cancelled (scancel) while
    it runs, then the login command is interrupted (Ctrl-C). The other task goes on; a rerun waits for it (it is
    still running), resubmits the cancelled one, which resumes from its checkpoint, and ends with the bits of a local
    sweep. (The first command's line on the cancelled task: tests/test_slurm_jobs.py, on a stand-in squeue.)"""
    # 12 epochs (768 steps, half a minute on an idle core): the cancel and the Ctrl-C come while both still train
    spec = spec_file(tmp_path / "s.toml", seeds="[0, 1]", training='train = "12ep"\nbatch_size = 64')
    root = tmp_path / "runs"
    proc = subprocess.Popen(sweep_cmd(spec, root, data_root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=_ctrl_c_default)
    try:
        lines = Lines(proc)
        array = lines.wait_for(r"slurm: submitted 2 jobs \(dense replicates\) as array (\d+)").group(1)
        deadline = time.monotonic() + 120
        while not any(CheckpointFolder(d / "checkpoints").latest_path.exists() for d in root.iterdir()):
            assert time.monotonic() < deadline, lines.text()
            time.sleep(0.2)
        subprocess.run(["scancel", f"{array}_0"], check=True)
        while slurm.Queue().states().get(f"{array}_0") not in (None, "CANCELLED"):  # its processes end (KillWait)
            assert time.monotonic() < deadline, lines.text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, lines.text()
        out = lines.text()
    finally:
        proc.kill()
    assert re.search(rf"prunelab: left 1 Slurm job queued or running \(array {array}; scancel", out), out
    queued = subprocess.run(["squeue", "--noheader", "--array", "--name", slurm.JOB_NAME, "--states", "RUNNING",
                             "--format", "%i"], capture_output=True, text=True).stdout.split()
    assert [i for i in queued if i.startswith(f"{array}_")] == [f"{array}_1"]  # still running after the Ctrl-C

    rerun = subprocess.Popen(sweep_cmd(spec, root, data_root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        assert local_sweep(spec, tmp_path / "reference", data_root) == 0  # meanwhile
        out = rerun.communicate(timeout=300)[0]
    finally:
        rerun.kill()
    assert rerun.returncode == 0, out
    waited = "slurm: waiting for 1 job that an earlier run of this sweep submitted (still queued or running)" in out
    assert waited or "plan: 1 already done" in out, out  # unless it ended while the rerun planned
    assert "slurm: submitted 1 job (dense replicates)" in out, out  # the cancelled one alone
    assert len(same_runs(root, tmp_path / "reference")) == 2
    sessions = [s for i in RunStore(root).ids()
                for s in json.loads((root / i / "provenance.json").read_text())["sessions"]]
    assert len(sessions) == 3 and sum("ended_at" not in s for s in sessions) == 1  # the cancelled task's: killed


def test_a_ddp_job_of_two_tasks_gives_the_single_process_result(data_root, tmp_path, capsys):
    """[slurm] tasks_per_node = 2: srun starts two ranks that train one dense network with DDP over gloo; its
    weights and accuracy are those of the single-process run to the tolerance of tests/test_distributed.py (which
    prunes with SNIP under DDP too)."""
    spec = spec_file(tmp_path / "s.toml", model="lenet_300_100",
                     training='train = "3ep"\nbatch_size = 16\nlr = 0.05\nmomentum = 0.9',
                     slurm_table="time_min = 5\ntasks_per_node = 2")
    small = data_root / "small"
    args = ["sweep", str(spec), "--executor", "slurm", "--root", str(tmp_path / "ddp"), "--data-root", str(small),
            "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "jobs done: 1" in out, out
    assert len(list((tmp_path / "ddp" / ".submitit").glob("*/*_1_result.pkl"))) == 1  # rank 1 ran too
    assert local_sweep(spec, tmp_path / "single", small) == 0
    ddp, single = RunStore(tmp_path / "ddp"), RunStore(tmp_path / "single")
    assert ddp.ids() == single.ids()
    for run_id in ddp.ids():
        a = CheckpointFolder(ddp.folder(run_id) / "checkpoints").load_latest()["model"]
        b = CheckpointFolder(single.folder(run_id) / "checkpoints").load_latest()["model"]
        for k in b:
            assert torch.allclose(a[k], b[k], atol=1e-5), (run_id, k)
        assert ddp.result(run_id)["test_accuracy"] == pytest.approx(single.result(run_id)["test_accuracy"],
                                                                    abs=1 / 32 + 1e-9)
