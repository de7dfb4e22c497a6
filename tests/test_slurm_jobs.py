"""The Slurm machinery without a cluster: a stop request saves the step and the run resumes bitwise, a job signalled
under submitit's local executor checkpoints, requeues and finishes with the bits of an uninterrupted run, jobs whose
dependency failed are skipped (local and Slurm sweeps), the login node's log says each state change and each of
submitit's lines once. The same on a real one-node cluster: tests/test_slurm.py."""

import json
import os
import pickle
import signal
import time
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from test_data import write_idx_set

from prunelab.cli import main
from prunelab.experiments import slurm, sweep
from prunelab.experiments.store import RunStore
from prunelab.training import TrainSettings
from prunelab.training.checkpoints import CheckpointFolder
from prunelab.training.loop import StopRequested, request_stop
from prunelab.training.trainer import train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=256, n_test=32, gz=True)
    return root


def same_runs(a, b) -> list[str]:
    """The run ids of two stores, after checking that each run has the same results, metrics and final weights."""
    sa, sb = RunStore(a), RunStore(b)
    ids = sorted(i for i, _, r in sa.runs() if r)
    assert ids == sorted(i for i, _, r in sb.runs() if r)
    for run_id in ids:
        ra, rb = sa.result(run_id), sb.result(run_id)
        for key in ("status", "test_accuracy", "test_loss", "steps", "sparsity"):
            assert ra.get(key) == rb.get(key), (run_id, key)
        assert (sa.folder(run_id) / "metrics.jsonl").read_text() == (sb.folder(run_id) / "metrics.jsonl").read_text()
        wa = CheckpointFolder(sa.folder(run_id) / "checkpoints").load_latest()["model"]
        wb = CheckpointFolder(sb.folder(run_id) / "checkpoints").load_latest()["model"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), run_id
    return ids


# ---- the trainer's stop request -------------------------------------------------------------------------

def test_a_stop_request_saves_that_step_and_the_resumed_training_is_bitwise_uninterrupted(tiny_dataset, tmp_path):
    from test_speed_options import convnet

    settings = TrainSettings(train="5ep", batch_size=16, lr=0.05, momentum=0.9)  # 8 steps an epoch

    def stop_at(step, model):
        if step == 11:  # mid-epoch: the epoch's own checkpoint is at step 8
            request_stop()

    with pytest.raises(StopRequested) as stopped:
        train(convnet(), tiny_dataset, settings, device="cpu", checkpoint_dir=tmp_path / "a", on_step=stop_at)
    assert stopped.value.step == 11  # asked by a hook of step 11, which the checkpoints come after
    assert CheckpointFolder(tmp_path / "a").load_latest()["step"] == 11
    resumed_model = convnet()
    resumed = train(resumed_model, tiny_dataset, settings, device="cpu", checkpoint_dir=tmp_path / "a")
    plain_model = convnet()
    plain = train(plain_model, tiny_dataset, settings, device="cpu", checkpoint_dir=tmp_path / "b")
    assert resumed.metrics == plain.metrics
    assert all(torch.equal(a, b) for a, b in zip(resumed_model.state_dict().values(),
                                                 plain_model.state_dict().values()))


def test_a_stop_request_is_not_honoured_at_the_last_step_nor_left_behind(tiny_dataset, tmp_path):
    from test_speed_options import convnet

    settings = TrainSettings(train="1ep", batch_size=16)
    result = train(convnet(), tiny_dataset, settings, device="cpu", checkpoint_dir=tmp_path,
                   on_step=lambda step, model: request_stop() if step == 8 else None)
    assert result.step == 8  # the last step: the training finishes
    request_stop(False)


# ---- a job signalled under submitit (its local executor) ---------------------------------------------------

def test_a_signalled_job_saves_its_step_requeues_and_finishes_bitwise(data_root, tmp_path):
    """USR2 (what Slurm sends ahead of a time limit or at a preemption) to a running job: the training stops after
    its step with a checkpoint, submitit requeues the job (its local executor restarts it), and the requeued job
    resumes: the run is bitwise that of an uninterrupted one."""
    submitit = pytest.importorskip("submitit")
    spec = tmp_path / "s.toml"
    spec.write_text('protocol = "train"\nseeds = [0]\n[model]\nmodel = "lenet5"\n[dataset]\ndataset = "mnist"\n'
                    '[training]\ntrain = "8ep"\nbatch_size = 32\n')  # 8 steps an epoch, 64 in all
    (job,) = sweep.load_spec(spec).jobs
    ctx = sweep.Context(str(tmp_path / "runs"), str(data_root), "cpu")
    runner = ctx.runner()
    job = sweep.make_plan(runner, [job]).phases[0][0]
    folder = RunStore(ctx.root).folder(sweep.job_id(runner, job))
    executor = submitit.AutoExecutor(folder=str(tmp_path / "jobs" / "%j"), cluster="local")
    executor.update_parameters(timeout_min=10)
    handle = executor.submit(slurm.ClusterJob(grace_s=60), job, ctx)
    deadline = time.monotonic() + 120
    while CheckpointFolder(folder / "checkpoints").latest_path.exists() is False:  # an epoch is done
        assert time.monotonic() < deadline and not handle.done(), handle.stderr()
        time.sleep(0.05)
    first = json.loads((folder / "provenance.json").read_text())["sessions"][0]
    os.kill(first["pid"], signal.SIGUSR2)  # as Slurm sends it (submitit's local executor does not pass it on)
    outcome = handle.result()
    assert outcome["status"] == "done", handle.stderr()
    sessions = json.loads((folder / "provenance.json").read_text())["sessions"]
    assert [s["outcome"] for s in sessions] == ["interrupted", "done"] and sessions[1]["pid"] != first["pid"]
    stopped = CheckpointFolder(folder / "checkpoints").load_step(64)  # the run's end, kept
    assert stopped is not None
    log = handle.stderr()
    assert "SIGUSR2" in log and "training stopped at step" in log and "requeueing" in log, log
    stopped_at = int(log.split("training stopped at step ")[1].split()[0])
    assert 8 <= stopped_at < 64
    reference = tmp_path / "reference"
    assert main(["sweep", str(spec), "--root", str(reference), "--data-root", str(data_root), "--device", "cpu",
                 "--no-progress", "--workers", "1"]) == 0
    assert same_runs(ctx.root, reference) == [folder.name]


# ---- dependencies ---------------------------------------------------------------------------------------

def write_spec(path, seeds="[0]"):
    path.write_text(f'protocol = "run"\nseeds = {seeds}\n[model]\nmodel = "lenet_300_100"\n[dataset]\n'
                    'dataset = "mnist"\n[training]\ntrain = "1ep"\nbatch_size = 64\n[pruning]\nmethod = "magnitude"\n'
                    'sparsity = [0.5, 0.9]\n')
    return path


def test_runs_whose_dense_replicate_failed_are_skipped_with_the_reason_and_run_on_a_rerun(data_root, tmp_path,
                                                                                         capsys, monkeypatch):
    from prunelab.experiments.runner import Runner

    spec = write_spec(tmp_path / "s.toml")
    args = ["sweep", str(spec), "--root", str(tmp_path / "runs"), "--data-root", str(data_root), "--device", "cpu",
            "--no-progress", "--workers", "1"]
    real = Runner._train_dense
    with monkeypatch.context() as m:
        m.setattr(Runner, "_train_dense", lambda self, run_id, rep: (_ for _ in ()).throw(OSError("disk quota")))
        assert main(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert "jobs done: 0, diverged: 0, already done: 0, skipped: 2, failed: 1" in out, out
    skipped = [line for line in out if line.startswith("  skipped ")]
    assert len(skipped) == 2
    for line in skipped:
        assert "its dense replicate" in line and "failed (OSError: disk quota); a rerun runs it once that is done" \
            in line, line
    (folder,) = (tmp_path / "runs").iterdir()  # the dense replicate's alone: no run was begun
    assert json.loads((folder / "result.json").read_text())["status"] == "failed"
    assert Runner._train_dense is real
    assert main(args) == 0
    assert "jobs done: 3, diverged: 0, already done: 0, skipped: 0, failed: 0" in capsys.readouterr().out


class FakeHandle:
    def __init__(self, outcome):
        self.outcome, self.job_id = outcome, "1"

    def done(self):
        return True

    def result(self):
        return self.outcome


class FakeExecutor:
    """submitit.AutoExecutor's stand-in: each dense job fails, each other job is done; the arrays are recorded."""

    arrays: list = []

    def __init__(self, folder, cluster=None, **kwargs):
        self.kwargs = kwargs

    def update_parameters(self, **params):
        self.params = params

    def map_array(self, fn, jobs, ctxs):
        FakeExecutor.arrays.append([job.kind for job in jobs])
        return [FakeHandle({"id": "d" if job.kind == "dense" else "r", "label": job.label(), "steps": 0,
                            **({"status": "failed", "error": "ValueError: boom"} if job.kind == "dense"
                               else {"status": "done"})}) for job in jobs]


def test_a_slurm_sweep_submits_no_job_whose_dense_replicate_failed(data_root, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=FakeExecutor))
    FakeExecutor.arrays = []
    spec = sweep.load_spec(write_spec(tmp_path / "s.toml", seeds="[0, 1]"))
    ctx = sweep.Context(str(tmp_path / "runs"), str(data_root), "cpu")
    plan = sweep.make_plan(ctx.runner(), spec.jobs)
    outcomes = []
    sweep.run_submitit(plan.phases, ctx, {"time_min": 5}, outcomes.append, needs=plan.needs, log=lambda s: None)
    assert FakeExecutor.arrays == [["dense", "dense"]]  # the runs were never submitted
    assert sorted(o["status"] for o in outcomes) == ["failed"] * 2 + ["skipped"] * 4
    assert all(o["reason"] == "its dense replicate d failed (ValueError: boom)" for o in outcomes
               if o["status"] == "skipped")


# ---- parameters ----------------------------------------------------------------------------------------

def test_slurm_parameters_signal_ahead_of_the_limit_requeue_and_ddp_tasks():
    with pytest.warns(UserWarning, match=r"time_min = 1 with a signal 30 s ahead of it: Slurm may send the signal up "
                      r"to 60 s early .*; a time_min of 2 or more is safe$"):
        p = slurm.slurm_parameters({"time_min": 1, "tasks_per_node": 2}, "cpu")
    assert p["slurm_signal_delay_s"] == 30 and p["tasks_per_node"] == 2 and p["max_timeouts"] == slurm.MAX_TIMEOUTS
    # the default delay leaves the signal's earliest moment (60 s before it is due) 30 s after the job's start
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [slurm.slurm_parameters({"time_min": t}, "cpu")["slurm_signal_delay_s"] for t in (2, 3, 240)] == \
            [120 - 60 - 30, 90, 90]
    with pytest.warns(UserWarning, match=r"a time_min of 3 or more, or a signal_delay_s of at most 30 s, is safe"):
        slurm.slurm_parameters({"time_min": 2, "signal_delay_s": 31}, "cpu")
    assert slurm.slurm_parameters({"signal_delay_s": 20, "max_timeouts": 0}, "cpu")["max_timeouts"] == 0
    with pytest.raises(ValueError, match="signal_delay_s = 60 is not shorter than the time limit"):
        slurm.slurm_parameters({"time_min": 1, "signal_delay_s": 60}, "cpu")
    with pytest.raises(ValueError, match="tasks_per_node must be >= 1"):
        slurm.slurm_parameters({"tasks_per_node": 0}, "cpu")
    with pytest.raises(ValueError, match=r"\[slurm\] tasks_per_node must be int"):
        slurm.check_table({"tasks_per_node": "2"}, "sweep s.toml")


# ---- the login node's log --------------------------------------------------------------------------------

def test_submitits_repeated_lines_are_said_once_and_on_stderr_only(monkeypatch):
    """submitit logs to stdout (from DEBUG) and to stderr (from WARNING), so each warning came twice, and its sacct
    warning comes at every poll: on the login node each line is said once, on stderr."""
    import io
    import logging
    import uuid

    pytest.importorskip("submitit")
    out, err = io.StringIO(), io.StringIO()
    to_out, to_err = logging.StreamHandler(out), logging.StreamHandler(err)
    to_out.setLevel(logging.DEBUG)
    to_err.setLevel(logging.WARNING)
    log = logging.getLogger("submitit")
    monkeypatch.setattr(log, "handlers", [to_err, to_out])  # as submitit's own configuration
    slurm.quiet_submitit_logs()
    slurm.quiet_submitit_logs()  # twice: still one filter each
    word = uuid.uuid4().hex.translate(str.maketrans("0123456789", "ghijklmnop"))  # a line no test said before
    for call in range(1, 4):
        log.warning(f"Call #{call} - Bypassing sacct error {word}, status may be inaccurate.")
    log.info(f"Starting {word}")
    assert err.getvalue().count("Bypassing sacct error") == 1, err.getvalue()
    assert "Bypassing" not in out.getvalue() and f"Starting {word}" in out.getvalue()


class FakeJobHandle:
    """A cluster job's handle: its id and the files submitit would write."""

    def __init__(self, folder, job_id):
        self.job_id = job_id
        self.paths = types.SimpleNamespace(result_pickle=folder / f"{job_id}_0_result.pkl",
                                           stderr=folder / f"{job_id}_0_log.err")

    def finish(self, outcome):
        self.paths.result_pickle.write_bytes(pickle.dumps(("success", outcome)))


def test_the_watch_says_each_state_change_once_and_fails_a_job_that_left_the_queue_without_a_result(
        tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setattr(slurm, "POLL_S", 0.0)
    monkeypatch.setattr(slurm, "SQUEUE_MIN_S", 0.0)
    monkeypatch.setattr(slurm, "CANCELLED_GRACE_S", 0.0)
    jobs = [sweep.Job("dense", None, step=i) for i in range(2)]
    for job in jobs:
        object.__setattr__(job, "label", lambda job=job: f"job {job.step}")
    a, b = FakeJobHandle(tmp_path, "7_0"), FakeJobHandle(tmp_path, "7_1")
    # squeue, poll after poll: both pending, both running (5 polls), a requeued, a running, b cancelled, a done
    polls = [{"7_0": "PENDING", "7_1": "PENDING"}] + [{"7_0": "RUNNING", "7_1": "RUNNING"}] * 5 + \
        [{"7_0": "PENDING", "7_1": "RUNNING"}, {"7_0": "RUNNING", "7_1": "CANCELLED"},
         {"7_0": "RUNNING", "7_1": "CANCELLED"}, {"7_0": "COMPLETED"}]
    calls = []

    def states(self):
        calls.append(1)
        if len(calls) == len(polls):
            a.finish({"id": "r0", "status": "done", "label": "job 0", "test_accuracy": 0.5})
        return polls[min(len(calls), len(polls)) - 1]

    monkeypatch.setattr(slurm.Queue, "states", states)
    lines = []
    watch = slurm.Watch(slurm=True, log=lines.append)
    outcomes = dict((job.step, outcome) for job, outcome in watch.wait(dict(zip(jobs, (a, b)))))
    assert lines[:4] == ["slurm job 7_0 RUNNING: job 0", "slurm job 7_1 RUNNING: job 1",
                         "slurm job 7_0 PENDING: job 0", "slurm job 7_0 RUNNING: job 0"], lines
    assert lines[4].startswith("slurm job 7_1 failed: job 1 (slurm job 7_1 ended without a result (CANCELLED")
    assert lines[5:] == ["slurm job 7_0 done: job 0 (test accuracy 0.5000)"]
    assert outcomes[0]["status"] == "done" and outcomes[1]["status"] == "failed"
    assert "a rerun resumes the run from its last checkpoint" in outcomes[1]["error"]


# ---- scripts/slurm/up.sh never destroys another Slurm's configuration -------------------------------------------

UP_SH = os.path.join(os.path.dirname(__file__), "..", "scripts", "slurm", "up.sh")


def run_up_sh(tmp_path, conf_text, key_bytes):
    """up.sh with a cluster that does not answer (a fake sinfo), its files in tmp_path; stops before any root step."""
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho 'sinfo: error: Unable to contact slurm controller' >&2\nexit 1\n")
    (bin_dir / "sinfo").chmod(0o755)
    conf, key = tmp_path / "slurm.conf", tmp_path / "munge.key"
    conf.write_text(conf_text)
    key.write_bytes(key_bytes)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_CONF": str(conf), "MUNGE_KEY": str(key)}
    proc = subprocess.run(["bash", UP_SH], capture_output=True, text=True, env=env, timeout=60)
    return proc, conf, key


def test_up_sh_refuses_to_overwrite_a_slurm_conf_it_did_not_write(tmp_path):
    real = "ClusterName=site\nSlurmctldHost=head\n"  # a real Slurm's configuration, its daemons down
    proc, conf, key = run_up_sh(tmp_path, real, b"k" * 128)
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"slurm/up.sh: refusing to overwrite {conf}: it exists and was not written by this "
                           "script"), line
    assert conf.read_text() == real and key.read_bytes() == b"k" * 128


def test_up_sh_never_replaces_an_existing_munge_key(tmp_path):
    proc, conf, key = run_up_sh(tmp_path, "# written by prunelab scripts/slurm/up.sh\nClusterName=prunelab\n", b"")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"slurm/up.sh: refusing to replace {key}: it exists but is empty"), line
    assert key.read_bytes() == b"" and conf.read_text().startswith("# written by prunelab")


# ---- a rerun on Slurm: adoption of the jobs still queued or running ---------------------------------------------

class FakeSlurmExecutor:
    """submitit's Slurm executor, without a cluster: each map_array gets ids 50_0, 50_1, ... (``during`` runs
    first: a signal in the middle of a submission)."""

    arrays: list = []
    during: Any = None
    cluster = "slurm"

    def __init__(self, folder, cluster=None, **kwargs):
        self.folder = Path(folder).parent

    def update_parameters(self, **params):
        self.params = params

    def map_array(self, fn, jobs, ctxs):
        FakeSlurmExecutor.arrays.append([job.kind for job in jobs])
        if FakeSlurmExecutor.during is not None:
            FakeSlurmExecutor.during()
        self.folder.mkdir(parents=True, exist_ok=True)
        return [FakeJobHandle(self.folder, f"50_{i}") for i in range(len(jobs))]


@pytest.fixture
def slurm_sweep(data_root, tmp_path, monkeypatch):
    """(plan, ctx, ledger): a sweep of 2 dense jobs + 4 runs submitted through FakeSlurmExecutor."""
    import sys

    submitit = pytest.importorskip("submitit")
    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=FakeSlurmExecutor,
                                                                       SlurmJob=submitit.SlurmJob))
    monkeypatch.setattr(FakeSlurmExecutor, "arrays", [])
    monkeypatch.setattr(FakeSlurmExecutor, "during", None)
    monkeypatch.setattr(slurm, "SQUEUE_MIN_S", 0.0)
    spec = sweep.load_spec(write_spec(tmp_path / "s.toml", seeds="[0, 1]"))
    ctx = sweep.Context(str(tmp_path / "runs"), str(data_root), "cpu")
    plan = sweep.make_plan(ctx.runner(), spec.jobs)
    return plan, ctx, slurm.Ledger(Path(ctx.root) / ".submitit")


def test_job_keys_are_the_run_ids_not_the_jobs_repr(slurm_sweep, monkeypatch):
    """A defaulted field added to a hyperparameter dataclass changes repr(job), not the run id: the key must not
    change, or a rerun misses the jobs still running and submits them again."""
    plan, ctx, _ = slurm_sweep
    runner = ctx.runner()
    jobs = [job for phase in plan.phases for job in phase]
    keys = [slurm.job_key(runner, job) for job in jobs]
    assert len(set(keys)) == len(jobs)
    assert all(sweep.job_id(runner, job) in key for job, key in zip(jobs, keys))
    monkeypatch.setattr(sweep.Job, "__repr__", lambda self: f"Job(..., new_field=0, {id(self)})")
    assert [slurm.job_key(runner, job) for job in jobs] == keys
    prefix = sweep.Job("prefix", jobs[0].rep, step=100)  # a prefix shares its dense run's id: its step tells it apart
    assert slurm.job_key(runner, prefix) not in keys and slurm.job_key(runner, prefix).endswith(":100")


def test_a_rerun_submits_nothing_while_squeue_does_not_answer(slurm_sweep, monkeypatch):
    plan, ctx, ledger = slurm_sweep
    runner = ctx.runner()
    ledger.record([{"key": slurm.job_key(runner, job), "job_id": f"40_{i}", "tasks": 1}
                   for i, job in enumerate(plan.phases[0])])

    def no_answer(self, warn=True):
        self.last_error = "slurm_load_jobs error: Unable to contact slurm controller"
        return None

    monkeypatch.setattr(slurm.Queue, "states", no_answer)
    lines = []
    with pytest.raises(ValueError) as refused:
        sweep.run_submitit(plan.phases, ctx, {"time_min": 5}, lambda o: None, needs=plan.needs, log=lines.append)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("squeue failed (slurm_load_jobs error: Unable to contact")
    assert "nothing was submitted" in message and "retry once squeue answers" in message
    assert FakeSlurmExecutor.arrays == [] and lines == []


def test_a_job_still_running_whose_handle_cannot_be_made_is_said_and_not_submitted_again(slurm_sweep, monkeypatch):
    import submitit

    plan, ctx, ledger = slurm_sweep
    runner = ctx.runner()
    dense = plan.phases[0]
    ledger.record([{"key": slurm.job_key(runner, job), "job_id": f"40_{i}", "tasks": 1}
                   for i, job in enumerate(dense)])
    monkeypatch.setattr(slurm.Queue, "states", lambda self, warn=True: {"40_0": "RUNNING", "40_1": "RUNNING"})
    real = submitit.SlurmJob

    def slurm_job(folder, job_id, tasks=(0,)):
        if job_id == "40_1":
            raise OSError("Permission denied: '.submitit/40_1'")
        return real(folder=folder, job_id=job_id, tasks=tasks)

    monkeypatch.setattr(slurm.Watch, "wait", lambda self, handles, adopted=(): iter(()))
    import sys
    monkeypatch.setattr(sys.modules["submitit"], "SlurmJob", slurm_job)
    lines, outcomes = [], []
    handles, held = slurm._adopt(dense, ledger, slurm.Watch(True, lines.append), str(tmp_folder(ctx)), runner,
                                 lines.append)
    assert list(handles) == [dense[0]] and list(held) == [dense[1]]
    reason = held[dense[1]]["reason"]
    assert held[dense[1]]["status"] == "skipped" and reason.startswith("slurm job 40_1 is still RUNNING but cannot "
                                                                       "be followed (OSError: Permission denied")
    assert lines[0] == f"prunelab: warning: {dense[1].label()}: {reason}" and "\n" not in lines[0]
    # the whole sweep: neither dense job is submitted again (the held one and its runs are skipped)
    sweep.run_submitit(plan.phases, ctx, {"time_min": 5}, outcomes.append, needs=plan.needs, log=lambda s: None)
    assert all("dense" not in kinds for kinds in FakeSlurmExecutor.arrays)
    assert sum(o["status"] == "skipped" for o in outcomes) == 3  # the held dense job and its 2 runs


def tmp_folder(ctx):
    return Path(ctx.root) / ".submitit" / "%j"


# ---- an interrupt during a submission --------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Python's Ctrl-C handler, whatever this process inherited: a shell's background job (CI started with `&`)
    starts with SIGINT ignored, and then no Ctrl-C reaches the code under test."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_submission_waits_until_the_ledger_has_the_jobs(slurm_sweep, monkeypatch, capsys):
    plan, ctx, ledger = slurm_sweep
    monkeypatch.setattr(FakeSlurmExecutor, "during", lambda: os.kill(os.getpid(), signal.SIGINT))
    monkeypatch.setattr(slurm.Queue, "states", lambda self, warn=True: {"50_0": "PENDING", "50_1": "PENDING"})
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_submitit(plan.phases, ctx, {"time_min": 5}, lambda o: None, needs=plan.needs, log=lambda s: None)
    assert signal.getsignal(signal.SIGINT) is handler
    runner = ctx.runner()
    noted = ledger.latest()
    assert {noted[slurm.job_key(runner, job)]["job_id"] for job in plan.phases[0]} == {"50_0", "50_1"}
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("prunelab: left 2 Slurm jobs queued or running (array 50;"), err


def test_a_second_ctrl_c_during_a_submission_acts_at_once_and_says_what_may_be_unnoted(slurm_sweep, monkeypatch,
                                                                                       capsys):
    plan, ctx, ledger = slurm_sweep

    def twice():
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)

    monkeypatch.setattr(FakeSlurmExecutor, "during", twice)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_submitit(plan.phases, ctx, {"time_min": 5}, lambda o: None, needs=plan.needs, log=lambda s: None)
    assert signal.getsignal(signal.SIGINT) is handler and ledger.latest() == {}
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("prunelab: interrupted while submitting jobs: some may have been "
                                               f"submitted and not noted in {ledger.path}"), err


# ---- the requeue after the grace runs in the main thread ----------------------------------------------------------

def test_the_grace_requeue_hands_off_to_the_main_thread(monkeypatch, capsys):
    """No training step within the grace after Slurm's signal: the watch thread must not run submitit's handler
    (its sys.exit would end that thread alone, its UncompletedJobError would be lost there); the handler runs in
    the main thread, out of the job's function, as it does after a stop at a step boundary."""
    import threading

    class Uncompleted(Exception):  # submitit's UncompletedJobError, past max_timeouts
        pass

    called = []

    def submitit_handler(signum, frame):
        called.append((signum, threading.current_thread() is threading.main_thread()))
        raise Uncompleted("Job not requeued because: timed-out too many times.")

    def loading_data(job, ctx):  # Slurm's signal arrives, and no training step ends for a long time
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(30)
        raise AssertionError("the hand-off did not come")

    monkeypatch.setattr(slurm, "_preempt_signal", lambda: signal.SIGUSR2)
    monkeypatch.setattr(slurm, "_task", lambda: (0, 1))
    monkeypatch.setattr(sweep, "execute", loading_data)
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    job = types.SimpleNamespace(label=lambda: "job 0")
    try:
        started = time.monotonic()
        with pytest.raises(Uncompleted):  # out of the job's function: submitit writes it as the job's result
            slurm.ClusterJob(grace_s=0.2)(job, None)
        assert time.monotonic() - started < 10
        assert called == [(signal.SIGUSR2, True)]
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # the guard uninstalled itself
        from prunelab.training.loop import stop_requested
        assert not stop_requested()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    err = capsys.readouterr().err
    assert "prunelab: no training step ended within 0.2 s of the signal; the last saved checkpoint is kept; " \
           "requeueing (job 0)" in err, err


def test_a_ctrl_c_that_killed_sbatch_is_an_interrupt_with_its_line_not_a_traceback(slurm_sweep, monkeypatch, capsys):
    plan, ctx, ledger = slurm_sweep

    def sbatch_killed():  # the terminal's SIGINT reaches sbatch too, and submitit says that sbatch failed
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        raise RuntimeError("sbatch: error: Batch job submission failed: Interrupted system call")

    monkeypatch.setattr(FakeSlurmExecutor, "during", sbatch_killed)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_submitit(plan.phases, ctx, {"time_min": 5}, lambda o: None, needs=plan.needs, log=lambda s: None)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("prunelab: interrupted while submitting jobs"), err
