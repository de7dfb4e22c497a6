"""Sweeps: grid expansion, planning, local workers, submitit's local executor, locks."""

import multiprocessing as mp
import os
import signal
import time
import types

import pytest
from test_data import write_idx_set

from prunelab.cli import main
from prunelab.experiments import sweep
from prunelab.experiments.store import RunStore


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=32, n_test=16, gz=True)
    return root


def write_spec(path, pruning, seeds="[0, 1]", training="", extra=""):
    path.write_text(f'protocol = "run"\nseeds = {seeds}\n[model]\nmodel = "lenet_300_100"\n'
                    f'[dataset]\ndataset = "mnist"\n[training]\ntrain = "1ep"\nbatch_size = 16\n{training}\n'
                    f'{pruning}\n{extra}')
    return path


def test_grid_expansion(tmp_path):
    spec = sweep.load_spec(write_spec(tmp_path / "s.toml", '[pruning]\nmethod = ["snip", "magnitude"]\n'
                                                           'sparsity = [0.5, 0.9]',
                                  training='milestones = [["1it"], []]'))
    # 2 methods x 2 sparsities x 2 milestone settings x 2 seeds, counted from the axes as built
    assert len(spec.jobs) == spec.size == 2 * 2 * 2 * 2 and spec.replicates == 2 * 2
    assert len({(job.rep, job.hp) for job in spec.jobs}) == len(spec.jobs)
    milestones = {job.rep.training.milestones for job in spec.jobs}
    assert milestones == {("1it",), ()}  # a list of lists is an axis of a tuple field


@pytest.mark.parametrize("pruning,seeds,training,words", [
    ('method = ["snip", "magnitude", "snip"]', "[0]", "", "[pruning] method lists 'snip' twice"),
    ("sparsity = [0.5, 0.9, 0.50]", "[0]", "", "[pruning] sparsity lists 0.5 twice"),
    ('method = "snip"', "[0, 1, 0]", "", "seeds lists 0 twice"),
    ('method = "snip"', "[0]", 'milestones = [["1it"], ["1it"]]', "[training] milestones lists ['1it'] twice"),
])
def test_a_value_listed_twice_in_an_axis_is_refused_in_one_line(tmp_path, capsys, pruning, seeds, training, words):
    spec = write_spec(tmp_path / "s.toml", f"[pruning]\n{pruning}", seeds=seeds, training=training)
    assert main(["sweep", str(spec), "--root", str(tmp_path / "runs"), "--dry-run"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert words in line and "each value of an axis runs once" in line, line


def test_a_huge_grid_is_counted_at_once_and_refused_before_any_job_is_built(tmp_path, capsys, monkeypatch):
    """1,000 seeds x 10 learning rates x 1,000 sparsities: ten million jobs, counted from the axes; building
    one job would fail here, so neither the count nor the refusal builds any."""
    seeds = "[" + ", ".join(map(str, range(1000))) + "]"
    spec = write_spec(tmp_path / "s.toml", "[pruning]\nsparsity = [" + ", ".join(str(i / 1000) for i in range(1000))
                      + "]", seeds=seeds, training="lr = [" + ", ".join(str(i / 100) for i in range(1, 11)) + "]")

    def no_jobs(*args, **kwargs):
        raise AssertionError("a job was built")

    monkeypatch.setattr(sweep, "Job", no_jobs)
    args = ["sweep", str(spec), "--root", str(tmp_path / "runs"), "--device", "cpu", "--no-progress"]
    for extra in (["--dry-run"], [], ["--dry-run", "--max-jobs", "9999999"]):
        assert main(args + extra) == 2
        out, err = capsys.readouterr()
        assert out.splitlines() == ["sweep " + str(spec) + ": 10,000,000 run jobs (1,000 seeds x 10 training.lr x "
                                    "1,000 pruning.sparsity) on 10,000 dense replicates: up to 3 phases (dense "
                                    "prefixes to step t, dense replicates, runs)"]
        (line,) = err.splitlines()
        assert "10,000,000 jobs" in line and "--max-jobs 10000000" in line, line
    assert not (tmp_path / "runs").exists()
    assert main(args + ["--max-jobs", "0"]) == 2
    assert "--max-jobs must be >= 1" in capsys.readouterr().err


def test_a_dry_run_lists_a_few_jobs_of_each_phase_and_counts_the_rest(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "LISTED_JOBS", 3)
    spec = write_spec(tmp_path / "s.toml", '[pruning]\nmethod = "magnitude"\nsparsity = [0.1, 0.2, 0.3, 0.4, 0.5]',
                      seeds="[0]")
    assert main(["sweep", str(spec), "--root", str(tmp_path / "runs"), "--data-root", str(data_root), "--device",
                 "cpu", "--dry-run", "--max-jobs", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(": 5 run jobs (5 pruning.sparsity) on 1 dense replicate: up to 3 phases (dense prefixes "
                           "to step t, dense replicates, runs)")
    runs = out[out.index("  runs:") + 1:]
    assert len(runs) == 4 and runs[-1] == "    ... and 2 more", runs


@pytest.mark.parametrize("text,message", [
    ('protocol = "runn"\n', "did you mean 'run'"),
    ('[pruning]\nmethd = "snip"\n', "did you mean 'method'"),
    ('[lottery]\nlevels = 2\n', "section for protocol 'run'"),
    ('[slurm]\npartitoin = "gpu"\n', "did you mean 'partition'"),
    ('[pruning]\nsparsity = ["high"]\n', "sparsity must be float"),
])
def test_bad_specs(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    top, tables = (text, "") if text.startswith("protocol") else ("", text)  # top-level keys precede tables
    path.write_text(f'seeds = [0]\n{top}[model]\nmodel = "lenet_300_100"\n[dataset]\ndataset = "mnist"\n{tables}')
    with pytest.raises(ValueError, match=message):
        sweep.load_spec(path)


def test_local_sweep_runs_skips_and_survives_failures(data_root, tmp_path, capsys):
    # Two replicates: lr 0.1 trains; lr 1e30 diverges, so its runs that prune the weights at step 1 fail
    # (there are no trained dense weights to go on from) and its runs at step 0 diverge in turn.
    spec = write_spec(tmp_path / "s.toml", '[pruning]\nmethod = ["magnitude", "snip"]\nsparsity = 0.5\n'
                                           'prune_at = ["0it", "1it"]\nbatch_per_class = 1', seeds="[0]",
                      training="lr = [0.1, 1e30]")
    args = ["sweep", str(spec), "--root", str(tmp_path / "runs"), "--data-root", str(data_root), "--device", "cpu",
            "--no-progress"]
    assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 run jobs" in out and "dense prefixes to step t" in out and not (tmp_path / "runs").exists()
    assert main(args + ["--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "failed: 2" in out and "diverged at step" in out
    store = RunStore(tmp_path / "runs")
    statuses = sorted(r["status"] for _, _, r in store.runs() if r)
    assert statuses.count("failed") == 2 and statuses.count("done") == 5  # 4 runs + a dense replicate
    assert statuses.count("diverged") == 3  # a dense replicate and its two runs at step 0
    failed_dirs = [store.folder(i) for i, _, r in store.runs() if r and r["status"] == "failed"]
    assert all((d / "error.txt").is_file() for d in failed_dirs)
    assert main(args + ["--workers", "2", "--dry-run"]) == 0
    assert "6 already done, 2 to do" in capsys.readouterr().out  # failures are retried, finished runs skipped


def test_runs_whose_dense_replicate_is_done_do_not_wait_for_another_seeds(data_root, tmp_path):
    # Seed 0's dense replicate is trained, its runs are not (their results removed after a sweep of seed 0);
    # seed 1 has everything to do. Seed 0's runs need nothing from seed 1's dense training: they share its
    # phase instead of waiting for it.
    spec = write_spec(tmp_path / "s.toml", '[pruning]\nmethod = "snip"\nsparsity = [0.5, 0.9]\nbatch_per_class = 1')
    assert main(["sweep", str(spec), "--set", "seeds=[0]", "--root", str(tmp_path / "runs"), "--data-root",
                 str(data_root), "--device", "cpu", "--no-progress", "--workers", "1"]) == 0
    runner = sweep.Context(str(tmp_path / "runs"), str(data_root), "cpu").runner()
    jobs = sweep.load_spec(spec).jobs
    for job in jobs:
        if job.rep.seed == 0:
            (runner.store.folder(sweep.job_id(runner, job)) / "result.json").unlink()
    plan = sweep.make_plan(runner, jobs)
    kinds = [sorted((job.kind, job.rep.seed) for job in phase) for phase in plan.phases]
    assert kinds == [[("dense", 1), ("run", 0), ("run", 0)], [("run", 1), ("run", 1)]], kinds


def test_a_job_the_dataset_cannot_serve_is_refused_before_any_work(data_root, tmp_path, capsys):
    spec = write_spec(tmp_path / "s.toml", '[pruning]\nmethod = "snip"\nbatch_per_class = [1, 1000]', seeds="[0]")
    code = main(["sweep", str(spec), "--root", str(tmp_path / "runs"), "--data-root", str(data_root), "--device",
                 "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "per_class=1000" in err, err
    assert not (tmp_path / "runs").exists()


def test_submitit_local_executor_runs_real_jobs(data_root, tmp_path):
    pytest.importorskip("submitit")
    spec = sweep.load_spec(write_spec(tmp_path / "s.toml", '[pruning]\nmethod = "magnitude"\nsparsity = [0.3, 0.6]',
                                      seeds="[0]", extra='[slurm]\npartition = "debug"\ntime_min = 5\n'))
    ctx = sweep.Context(str(tmp_path / "runs"), str(data_root), "cpu")
    plan = sweep.make_plan(ctx.runner(), spec.jobs)
    outcomes = []
    sweep.run_submitit(plan.phases, ctx, spec.slurm, outcomes.append, cluster="local")
    assert [o["status"] for o in outcomes] == ["done"] * 3
    assert sweep.make_plan(ctx.runner(), spec.jobs).todo == 0


def _hold_lock(root, run_id, ready):
    with RunStore(root).lock(run_id):
        ready.set()
        time.sleep(60)


def test_lock_excludes_other_processes_and_is_released_when_the_holder_dies(tmp_path):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), "abc", ready))
    holder.start()
    assert ready.wait(30)
    import fcntl

    with open(tmp_path / "abc" / ".lock", "a+") as f:
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again: the kernel released the dead holder's lock
        fcntl.flock(f, fcntl.LOCK_UN)
    with RunStore(tmp_path).lock("abc"), RunStore(tmp_path).lock("abc"):  # re-entrant in one process
        pass


def test_overrides_retarget_a_spec(tmp_path):
    path = write_spec(tmp_path / "s.toml", '[pruning]\nmethod = "snip"\nsparsity = 0.9', seeds="[0]")
    spec = sweep.load_spec(path, ["model.model=resnet20", "dataset.dataset=cifar10", "training.train=160ep",
                                  "pruning.sparsity=[0.5, 0.8]", "seeds=[1, 2]"])
    assert {(j.rep.model.model, j.rep.dataset.dataset, j.rep.training.train, j.hp.sparsity, j.rep.seed)
            for j in spec.jobs} == {("resnet20", "cifar10", "160ep", s, seed) for s in (0.5, 0.8) for seed in (1, 2)}
    # the CIFAR recipe of Appendix A.3 under the spec's overrides
    assert spec.jobs[0].rep.training.momentum == 0.9 and spec.jobs[0].rep.training.batch_size == 16
    with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
        sweep.load_spec(path, ["nonsense"])


# ---- devices ----------------------------------------------------------------------------------------

def fake_gpus(monkeypatch, n):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_local_workers_one_per_gpu_each_on_its_own(monkeypatch):
    fake_gpus(monkeypatch, 4)
    assert sweep.default_workers("auto") == sweep.default_workers("cuda") == 4
    assert sweep.worker_devices("auto", 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert sweep.worker_devices("cuda", 6) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert sweep.worker_devices("cuda:2", 2) == ["cuda:2", "cuda:2"]  # one GPU named: all on it
    assert sweep.worker_devices("cpu", 2) == ["cpu", "cpu"]
    fake_gpus(monkeypatch, 0)
    assert sweep.default_workers("auto") == len(os.sched_getaffinity(0))  # CPU sweeps as before
    assert sweep.worker_devices("auto", 3) == ["auto"] * 3


def test_a_worker_runs_its_jobs_on_the_device_it_was_given(monkeypatch, tmp_path):
    import queue

    import torch

    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(sweep, "_WORKER_DEVICE", None)
    slots = queue.Queue()
    slots.put("cuda:1")
    monkeypatch.setattr(sweep, "_step_sink", None)
    sweep._init_worker(torch.get_num_threads(), devices=slots)
    seen = []
    stand_in = types.SimpleNamespace(steps_executed=0)  # no dense_id: the job fails after the device is seen
    monkeypatch.setattr(sweep.Context, "runner", lambda self, progress=False: seen.append(self.device) or stand_in)
    from prunelab.experiments.hparams import DataHparams, ModelHparams
    from prunelab.experiments.runner import Replicate
    from prunelab.training import TrainSettings

    job = sweep.Job("dense", Replicate(ModelHparams(), DataHparams(), TrainSettings()))
    outcome = sweep.execute(job, sweep.Context(str(tmp_path), device="auto"))
    assert seen == ["cuda:1"] and outcome["status"] == "failed"


class FakeExecutor:
    """Stands in for submitit.AutoExecutor: records the parameters, runs nothing."""

    made: list = []

    def __init__(self, folder, cluster=None, **kwargs):
        self.params = {}
        FakeExecutor.made.append(self)

    def update_parameters(self, **params):
        self.params.update(params)

    def map_array(self, fn, jobs, ctxs):
        class Done:
            def result(self):
                return {"id": "x", "status": "done", "label": "fake"}

        return [Done() for _ in jobs]


@pytest.fixture
def fake_submitit(monkeypatch):
    import sys
    import types

    FakeExecutor.made = []
    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=FakeExecutor))
    return FakeExecutor


@pytest.mark.parametrize("extra,flags,gpus", [
    ("[slurm]\ngpus_per_node = 2\n", [], 2),  # the spec says so
    ("", ["--gpus-per-node", "4"], 4),  # the command says so
    ("[slurm]\ngpus_per_node = 2\n", ["--gpus-per-node", "1"], 1),  # the command wins
])
def test_slurm_jobs_ask_for_the_gpus_the_spec_or_command_names(data_root, tmp_path, fake_submitit, extra, flags,
                                                              gpus):
    spec = write_spec(tmp_path / "s.toml", '[pruning]\nmethod = "magnitude"\nsparsity = 0.5', seeds="[0]",
                      extra=extra)
    # --device cuda is planned on this CPU-only machine: the jobs run on the cluster's GPU nodes
    assert main(["sweep", str(spec), "--executor", "slurm", "--device", "cuda", "--root", str(tmp_path / "runs"),
                 "--data-root", str(data_root), "--no-progress", *flags]) == 0
    assert [e.params["gpus_per_node"] for e in fake_submitit.made] == [gpus]


def test_a_gpu_sweep_with_no_gpus_per_node_is_refused_and_auto_warns(data_root, tmp_path, fake_submitit, capsys):
    spec = write_spec(tmp_path / "s.toml", '[pruning]\nmethod = "magnitude"\nsparsity = 0.5', seeds="[0]")
    args = ["sweep", str(spec), "--executor", "slurm", "--root", str(tmp_path / "runs"), "--data-root",
            str(data_root), "--no-progress"]
    assert main(args + ["--device", "cuda"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "device cuda needs GPUs on the Slurm nodes" in line and "gpus_per_node" in line
    assert not fake_submitit.made and not (tmp_path / "runs").exists()
    assert main(args + ["--device", "auto", "--dry-run"]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("prunelab: warning: the Slurm jobs ask for no GPU") and "run on the nodes' CPUs" in line


def test_a_job_run_in_process_gives_the_caller_its_thread_count_back(monkeypatch, tmp_path):
    """A one-worker sweep runs its jobs in the calling process, with the worker's thread count; the caller's
    own count (one thread in this suite, which compares bits) is put back afterwards."""
    import torch

    from prunelab.experiments.hparams import DataHparams, ModelHparams
    from prunelab.experiments.runner import Replicate
    from prunelab.training import TrainSettings

    seen = []
    stand_in = types.SimpleNamespace(steps_executed=0)
    monkeypatch.setattr(sweep.Context, "runner",
                        lambda self, progress=False: seen.append(torch.get_num_threads()) or stand_in)
    before = torch.get_num_threads()
    job = sweep.Job("dense", Replicate(ModelHparams(), DataHparams(), TrainSettings()))
    sweep.execute(job, sweep.Context(str(tmp_path), device="cpu", threads=before + 1))
    assert seen == [before + 1] and torch.get_num_threads() == before
