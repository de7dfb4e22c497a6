"""Sweeps: a TOML spec of value lists becomes a grid of runs, deduplicated through the run store.

(Above the house's 600 lines, knowingly: a sweep is one pipeline, spec -> plan -> executors, whose parts share
``Job``, ``Context`` and the globals a worker process sets, which tests patch here; the reading of specs is the
piece to move into a module of its own when it next grows.)

Spec (see ``repro/`` for real ones)::

    protocol = "run"            # any registered protocol: train | run | lottery | gradual | set | rigl
    seeds = [0, 1, 2]
    [model]
    model = "lenet_300_100"
    [dataset]
    dataset = "fashion_mnist"
    [training]
    train = "40ep"
    [pruning]
    method = ["snip", "grasp", "synflow"]   # a list is an axis of the grid
    sparsity = [0.8, 0.9, 0.98]
    [slurm]                                  # only for --executor slurm
    partition = "gpu"
    time_min = 240
    gpus_per_node = 1

The plan has up to three phases, each waiting for the previous one: the dense weights at each intermediate
pruning/rewinding step t (one training prefix each), the rest of the dense replicates (shared by every
run of a seed), then the runs themselves; a run whose dense replicate is already there joins the first
phase. Finished runs are skipped; a failing run is recorded in its folder and never stops the sweep; a run
whose dense replicate (or dense training to step t) failed is not run but reported as skipped, with the reason
(:class:`Dependencies`); two workers never run the same run at once (run locks, see RunStore.lock).

Devices: a local sweep on a machine with GPUs (device ``auto`` or ``cuda``) runs one worker process per
GPU by default, each pinned to its own ``cuda:i``; on the CPU, one per core. On Slurm, each job gets
``gpus_per_node`` GPUs (the spec's ``[slurm]``, or ``--gpus-per-node``); a sweep on device ``cuda``
with none is refused, one on ``auto`` with none runs on the nodes' CPUs, with a warning. The Slurm machinery
(jobs that requeue at their time limit, DDP jobs, the login node's log) is :mod:`prunelab.experiments.slurm`.

A grid is counted from its axes before any job is built (:attr:`Spec.size`); one of more than
:data:`MAX_JOBS` jobs is refused (``--max-jobs`` raises the limit), and a value listed twice in an axis is
refused. Local worker processes die with the sweep that started them (:mod:`prunelab.experiments.workers`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prunelab.experiments import runfiles
from prunelab.experiments.hparams import (
    DataHparams,
    ModelHparams,
    check_section,
    grid_values,
    nondefault_fields,
    read_toml,
    section_fields,
)
from prunelab.experiments.protocols import PROTOCOLS, get_protocol
from prunelab.experiments.slurm import check_table, run_submitit, slurm_parameters  # noqa: F401 - the sweep's API
from prunelab.experiments.store import RunStore
from prunelab.experiments.workers import die_with_parent
from prunelab.registry import check_name, unknown_name_message

if TYPE_CHECKING:  # torch comes with these: imported where a job is built or run, so counting a grid needs none
    from prunelab.experiments.runner import Replicate, Runner
    from prunelab.training.runtime import RuntimeOptions

EXECUTORS = ["local", "slurm"]


@dataclass(frozen=True)
class Job:
    """One unit of work: a dense replicate, the dense weights at step t, or a protocol run."""

    kind: str  # "dense", "prefix", or the name of a registered protocol
    rep: Replicate
    hp: Any = None  # the protocol's hyperparameters
    step: int | None = None  # for prefix jobs: the step t

    @property
    def protocol(self):
        return get_protocol("train" if self.kind in ("dense", "prefix") else self.kind)

    def label(self) -> str:
        if self.kind == "prefix":
            what = f"dense to step {self.step}"
        elif self.hp is None:
            what = "dense"
        else:
            what = self.protocol.describe({self.protocol.section: dataclasses.asdict(self.hp)})
        # the model's other settings where a sweep changes them (Lee et al. 2019, §5.5: the initialization)
        options = ", ".join(f"{k}={v}" for k, v in nondefault_fields(self.rep.model).items() if k != "model")
        model = f"{self.rep.model.model}[{options}]" if options else self.rep.model.model
        return f"{model}/{self.rep.dataset.dataset} seed {self.rep.seed}: {what}"


def _default_runtime() -> RuntimeOptions:
    from prunelab.training.runtime import RuntimeOptions

    return RuntimeOptions()


@dataclass(frozen=True)
class Context:
    """What a worker needs to rebuild a Runner (picklable, sent to processes and cluster jobs)."""

    root: str
    data_root: str | None = None
    device: str = "auto"
    threads: int | None = None
    runtime: RuntimeOptions = field(default_factory=_default_runtime)
    log: tuple[str, ...] = ()  # experiment trackers, as --log names them

    def runner(self, progress: bool = False) -> Runner:
        from prunelab.experiments.runner import Runner

        return Runner(RunStore(self.root), data_root=self.data_root, device=self.device, progress=progress,
                      runtime=self.runtime, log=self.log)


MAX_JOBS = 100_000  # a sweep above this many jobs is refused unless --max-jobs raises it (see check_size)
LISTED_JOBS = 20  # a dry run lists this many jobs of each phase, then counts the rest


def _check_seed(seed, what: str) -> int:
    from prunelab.training.settings import check_seed

    return check_seed(seed, what)


@dataclass
class Spec:
    """A parsed, checked spec. Its jobs are built on demand (:meth:`iter_jobs` streams them, :attr:`jobs`
    keeps them): a grid is counted from its axes (:attr:`size`) before any job exists, so a spec of ten
    million jobs is refused in a blink instead of filling the memory."""

    protocol: str
    tables: dict[str, dict[str, Any]]
    seeds: list[int]
    slurm: dict[str, Any] = field(default_factory=dict)
    path: str = "spec"

    def axes(self) -> list[tuple[str, int]]:
        """``(name, number of values)`` of each axis of more than one value, seeds first."""
        out = [("seeds", len(self.seeds))] if len(self.seeds) > 1 else []
        for section in self._sections():
            hints = section_fields(section)
            for key, value in self.tables.get(section, {}).items():
                n = len(grid_values(value, hints[key]))
                if n > 1:
                    out.append((f"{section}.{key}", n))
        return out

    @property
    def size(self) -> int:
        """The number of jobs: the product of the axis sizes (the grid is never built to count it)."""
        return math.prod(n for _, n in self.axes())

    @property
    def replicates(self) -> int:
        """The number of dense replicates the jobs share: the product of the axes outside the protocol's table."""
        section = get_protocol(self.protocol).section
        return math.prod(n for name, n in self.axes() if section is None or not name.startswith(f"{section}."))

    def summary(self) -> str:
        """One line: the jobs and phases, from the axis sizes alone."""
        axes = " x ".join(f"{n:,} {name}" for name, n in self.axes()) or "no axis"
        if get_protocol(self.protocol).section is None:
            return f"{self.size:,} {self.protocol} jobs ({axes}): 1 phase (dense replicates)"
        replicates = f"{self.replicates:,} dense replicate" + ("s" if self.replicates > 1 else "")
        return (f"{self.size:,} {self.protocol} jobs ({axes}) on {replicates}: up to 3 phases (dense prefixes to "
                "step t, dense replicates, runs)")

    def iter_jobs(self) -> Iterator[Job]:
        """The grid of jobs, in a stable order, one at a time (see :func:`expand`)."""
        return expand(self.protocol, self.tables, self.seeds, where=f"sweep {self.path}")

    @functools.cached_property
    def jobs(self) -> list[Job]:
        return list(self.iter_jobs())

    def _sections(self) -> list[str]:
        section = get_protocol(self.protocol).section
        return ["model", "dataset", "training", *([section] if section else [])]


def check_size(spec: Spec, max_jobs: int = MAX_JOBS) -> None:
    """Refuse, in one line, a sweep of more than ``max_jobs`` jobs: a grid that large is most often a typo
    (an axis meant as a range), and planning it would validate every job and hold them all in memory."""
    if spec.size > max_jobs:
        raise ValueError(f"sweep {spec.path}: {spec.size:,} jobs ({' x '.join(f'{n:,} {a}' for a, n in spec.axes())}) "
                         f"is more than the {max_jobs:,} a sweep may have; shorten an axis, or give --max-jobs "
                         f"{spec.size} to run them all")


# ---- reading and expanding a spec ---------------------------------------------------------------

def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``["model.model=resnet20", "pruning.sparsity=[0.9, 0.99]", "seeds=[0,1]"]`` applied to a spec.

    Values are TOML (a bare word is taken as a string), so the same spec runs on another network or
    dataset without editing it.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects SECTION.KEY=VALUE or KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        *section, name = key.strip().split(".")
        if len(section) > 1:
            raise ValueError(f"--set key {key!r} has more than one dot")
        table = raw.setdefault(section[0], {}) if section else raw
        if not isinstance(table, dict):
            raise ValueError(f"--set key {key!r}: {section[0]!r} is not a table")
        table[name] = value
    return raw


def load_spec(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Spec:
    raw = apply_overrides(read_toml(path), overrides)
    protocol = raw.pop("protocol", "run")
    if not isinstance(protocol, str):
        raise ValueError(f"sweep {path}: protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    protocol = check_name("sweep protocol", protocol, list(PROTOCOLS))
    seeds = raw.pop("seeds", raw.pop("seed", 0))
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not seeds:
        raise ValueError(f"sweep {path}: seeds is an empty list; the grid would have no jobs")
    for s in seeds:
        _check_seed(s, f"sweep {path}: each seed")
    slurm = raw.pop("slurm", {})
    if not isinstance(slurm, dict):
        raise ValueError(f"sweep {path}: [slurm] must be a table")
    check_table(slurm, f"sweep {path}")
    allowed = {"model", "dataset", "training", get_protocol(protocol).section} - {None}
    for section, values in raw.items():
        if section not in allowed:
            raise ValueError(f"sweep {path}: " + unknown_name_message(
                f"section for protocol {protocol!r}", section, [*sorted(allowed), "seeds", "slurm", "protocol"]))
        check_section(path, section, values, grid=True)
    if "model" not in raw.get("model", {}) or "dataset" not in raw.get("dataset", {}):
        raise ValueError(f"sweep {path}: [model] model and [dataset] dataset are required")
    _refuse_repeats(f"sweep {path}: seeds", seeds)
    for section, values in raw.items():
        hints = section_fields(section)
        for key, value in values.items():
            _refuse_repeats(f"sweep {path}: [{section}] {key}", grid_values(value, hints[key]))
    return Spec(protocol, raw, seeds, slurm, str(path))


def _refuse_repeats(axis: str, values: list[Any]) -> None:
    """A value listed twice in an axis would run the same jobs twice over, or (deduplicated) fewer than the
    axes promise; it is most often a typo for another value, so it is refused, naming it."""
    seen = set()
    for value in values:
        key = _frozen(value)
        if key in seen:
            raise ValueError(f"{axis} lists {value!r} twice; each value of an axis runs once, so remove the "
                             "repeat (or correct it to the value meant)")
        seen.add(key)


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _axes(section: str, values: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every combination of one table's values, one at a time."""
    hints = section_fields(section)
    keys = list(values)
    choices = [grid_values(values[k], hints[k]) for k in keys]
    for combo in itertools.product(*choices):
        yield {k: _frozen(v) for k, v in zip(keys, combo)}


def expand(protocol: str, tables: dict[str, dict[str, Any]], seeds: Iterable[int], where: str = "sweep") -> \
        Iterator[Job]:
    """The grid of jobs, in a stable order, built one at a time. Two distinct values of an axis that make the
    same job (two spellings of one setting) make it once, with a one-line warning naming it."""
    from prunelab.experiments.runner import Replicate
    from prunelab.training import recipe

    section = get_protocol(protocol).section
    seeds = list(seeds)
    seen: set[tuple] = set()
    for m, d, t, p in itertools.product(
        _axes("model", tables.get("model", {})), _axes("dataset", tables.get("dataset", {})),
        _axes("training", tables.get("training", {})),
        _axes(section, tables.get(section, {})) if section else [{}],
    ):
        model, dataset = ModelHparams(**m), DataHparams(**d)
        training = recipe(model.model, dataset.dataset).replace(**t)
        hp = get_protocol(protocol).hparams(**p) if section else None
        for seed in seeds:
            job = Job(protocol, Replicate(model, dataset, training, seed), hp)
            if (job.rep, job.hp) in seen:
                warnings.warn(f"{where}: two values of its axes make the same job ({job.label()}); it runs once",
                              UserWarning, stacklevel=2)
                continue
            seen.add((job.rep, job.hp))
            yield job


# ---- planning -------------------------------------------------------------------------------------

@dataclass
class Plan:
    phases: list[list[Job]]  # prefixes, dense replicates, runs — what is left to do
    skipped: list[Job]  # finished before the sweep started
    steps: int  # estimated training steps left
    # the jobs of earlier phases that each run waits for: its dense replicate, its dense training to step t
    needs: dict[Job, tuple[Job, ...]] = field(default_factory=dict)

    @property
    def todo(self) -> int:
        return sum(len(p) for p in self.phases)


class Dependencies:
    """What a job waits for (:attr:`Plan.needs`) and which of those failed. A job whose dense replicate or dense
    training to step t failed (or was itself skipped) is not run: it could only fail the same way, or run on
    nothing. Its outcome is ``skipped``, with the reason in one line; a rerun of the sweep plans it again and runs
    it once its dependency is done. Both executors use it, between phases."""

    def __init__(self, needs: dict[Job, tuple[Job, ...]] | None = None):
        self.needs = needs or {}
        self.failed: dict[Job, dict[str, Any]] = {}

    def record(self, job: Job, outcome: dict[str, Any]) -> None:
        if outcome.get("status") in ("failed", "skipped"):
            self.failed[job] = outcome

    def runnable(self, phase: list[Job], on_done: Callable[[dict], None]) -> list[Job]:
        """The jobs of ``phase`` that can run; each of the others goes to ``on_done`` as skipped."""
        out = []
        for job in phase:
            dep = next((d for d in self.needs.get(job, ()) if d in self.failed), None)
            if dep is None:
                out.append(job)
                continue
            outcome = {"id": None, "status": "skipped", "label": job.label(), "steps": 0,
                       "reason": _skip_reason(dep, self.failed[dep])}
            self.failed[job] = outcome
            on_done(outcome)
        return out


def _skip_reason(dep: Job, outcome: dict[str, Any]) -> str:
    what = "dense replicate" if dep.kind == "dense" else f"dense training to step {dep.step}"
    why = outcome.get("error") or outcome.get("reason") or "failed"
    why = " ".join(str(why).split())
    why = why if len(why) <= 160 else why[:157] + "..."
    verb = "was skipped" if outcome.get("status") == "skipped" else "failed"
    return f"its {what}{' ' + outcome['id'] if outcome.get('id') else ''} {verb} ({why})"


def job_id(runner: Runner, job: Job) -> str:
    if job.kind in ("dense", "prefix"):
        return runner.dense_id(job.rep)
    return job.protocol.run_id(runner, job.rep, job.hp)


def check_job(runner: Runner, job: Job) -> None:
    """Every check of a job that needs its dataset, as the protocol itself makes it before any work."""
    if job.kind in ("dense", "prefix"):
        runner.check(job.rep)
    else:
        job.protocol.check(runner, job.rep, job.hp)


def make_plan(runner: Runner, jobs: Iterable[Job]) -> Plan:
    """Phases of what is left, with the training steps it will take (validates every job first). ``jobs`` may
    be a stream (:meth:`Spec.iter_jobs`): each is looked at once."""
    from prunelab.training.checkpoints import CheckpointFolder

    dense: dict[Replicate, Job] = {}
    prefixes: dict[tuple[Replicate, int], Job] = {}
    runs, ready, skipped, steps = [], [], [], 0
    needs: dict[Job, tuple[Job, ...]] = {}
    for job in jobs:
        job = dataclasses.replace(job, rep=runner.fitted(job.rep))  # a short training scales the recipe's schedule
        check_job(runner, job)
        total = runner.total_steps(job.rep)
        t = None if job.hp is None else job.protocol.dense_step(runner, job.rep, job.hp)
        if runner.store.result(job_id(runner, job)) is not None:
            skipped.append(job)
            continue
        dense_done = runner.store.result(runner.dense_id(job.rep)) is not None
        if not dense_done and job.rep not in dense:
            dense[job.rep] = Job("dense", job.rep)
            steps += total
        needs_prefix = False
        if t is not None:
            ck = CheckpointFolder(runner.store.folder(runner.dense_id(job.rep)) / runfiles.CHECKPOINTS)
            needs_prefix = t not in ck.kept_steps()
            if (job.rep, t) not in prefixes and needs_prefix:
                prefixes[(job.rep, t)] = Job("prefix", job.rep, step=t)
                steps += t if dense_done else 0  # otherwise these steps are part of the dense training
        if job.hp is not None:
            steps += job.protocol.steps_left(runner, job.rep, job.hp)
            (ready if dense_done and not needs_prefix else runs).append(job)
            waits = ([prefixes[(job.rep, t)]] if needs_prefix else []) + ([dense[job.rep]] if not dense_done else [])
            if waits:
                needs[job] = tuple(waits)
    # Prefixes first, in ascending step, so each dense training resumes from the largest one instead of
    # training 0..t again; then the rest of each dense training; then the runs. Runs whose dense replicate
    # (and weights at step t) are already there wait for nothing: they join the first phase, after its own
    # jobs, so no worker idles while another replicate's dense training runs alone.
    ordered = [prefixes[key] for key in sorted(prefixes, key=lambda k: k[1])]
    phases = [p for p in (ordered, list(dense.values()), runs) if p]
    if ready and phases:
        phases[0] = phases[0] + ready
    elif ready:
        phases = [ready]
    return Plan(phases, skipped, steps, needs)


# ---- executing ------------------------------------------------------------------------------------

# Where a job reports the training steps it takes while it runs: the sweep's progress bar (one process),
# or a batching sender to it (worker processes, set by _init_worker); None: nobody is told (a cluster job).
_step_sink: Callable[[int], None] | None = None
STEP_REPORT_INTERVAL = 1.0  # seconds: a worker sends its step count at most this often (and when a job ends)


class _StepSender:
    """Counts a worker's training steps and puts the count on the sweep's queue at most once a second, so
    that the per-step cost is an addition, not an inter-process message."""

    def __init__(self, queue):
        self.queue, self.count, self.sent_at = queue, 0, time.monotonic()

    def __call__(self, n: int) -> None:
        self.count += n
        if time.monotonic() - self.sent_at >= STEP_REPORT_INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self.count:
            self.queue.put(self.count)
            self.count = 0
        self.sent_at = time.monotonic()


def execute(job: Job, ctx: Context) -> dict[str, Any]:
    """Run one job; never raises (a failure is recorded in the run's folder and returned). The outcome's
    ``steps`` are the training steps the job took. The job runs with ``ctx.threads`` torch threads; the
    calling process gets its own count back afterwards (a one-worker sweep runs its jobs in-process)."""
    ctx = _pinned(ctx)
    with _torch_threads(ctx.threads or ctx.runtime.threads_for(ctx.device)):  # a Slurm job: as the CLI
        return _execute(job, ctx)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _execute(job: Job, ctx: Context) -> dict[str, Any]:
    runner = ctx.runner()
    runner.step_listener = _step_sink
    run_id = None
    try:
        run_id = job_id(runner, job)
        if job.kind == "prefix":
            runner.weights_at(job.rep, job.step)
            return {"id": run_id, "status": "done", "label": job.label(), "steps": runner.steps_executed}
        result = job.protocol.run(runner, job.rep, job.hp)[-1]
        return {"id": run_id, "status": result["status"], "label": job.label(),
                "test_accuracy": result.get("test_accuracy"), "steps": runner.steps_executed}
    except Exception as e:  # noqa: BLE001 - a sweep goes on; the error is kept with the run
        if run_id is not None and job.kind != "prefix":  # a prefix belongs to the (maybe finished) dense run
            try:
                runner.store.record_failure(run_id, e)
            except OSError:
                pass
        return {"id": run_id, "status": "failed", "label": job.label(), "error": f"{type(e).__name__}: {e}",
                "steps": runner.steps_executed}
    finally:
        if isinstance(_step_sink, _StepSender):
            _step_sink.flush()  # every step of this job is on the queue before its outcome is


def _gpus_for(device: str) -> int:
    """How many GPUs a sweep on ``device`` spreads over: all of them for ``auto`` and ``cuda``, none for
    another device (``cpu``, or ``cuda:N``: everything on that one)."""
    import torch

    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


def default_workers(device: str = "cpu") -> int:
    """One worker per GPU when the sweep runs on GPUs, else one per CPU core."""
    from prunelab.training.runtime import available_cpus

    return _gpus_for(device) or available_cpus()


def worker_devices(device: str, workers: int) -> list[str]:
    """The device of each of ``workers`` local worker processes: ``cuda:0, cuda:1, ...`` in turn over the
    GPUs when the sweep runs on GPUs, else ``device`` for all."""
    gpus = _gpus_for(device)
    return [f"cuda:{i % gpus}" for i in range(workers)] if gpus else [device] * workers


_WORKER_DEVICE: str | None = None  # the device this worker process was pinned to (set by _init_worker)


def _init_worker(threads: int, steps=None, devices=None, parent_pid: int | None = None) -> None:
    """Set up one local worker process: first its death with the sweep ``parent_pid`` (see
    :mod:`prunelab.experiments.workers`), then its torch threads, the CLI's warning lines, the queue ``steps``
    its training steps are reported on, and its own device from the queue ``devices`` (one entry per worker)."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    import torch

    from prunelab.io import warning_line

    global _WORKER_DEVICE, _step_sink
    _step_sink = _StepSender(steps) if steps is not None else None
    torch.set_num_threads(threads)
    warnings.formatwarning = lambda message, *args, **kwargs: warning_line(message) + "\n"  # as the CLI's lines
    if devices is not None:
        _WORKER_DEVICE = devices.get()
        if _WORKER_DEVICE.startswith("cuda:"):
            torch.cuda.set_device(torch.device(_WORKER_DEVICE))


def _pinned(ctx: Context) -> Context:
    """``ctx`` on this worker's own device, when it was given one."""
    return ctx if _WORKER_DEVICE is None else dataclasses.replace(ctx, device=_WORKER_DEVICE)


def run_local(phases: list[list[Job]], ctx: Context, workers: int, on_done: Callable[[dict], None],
              on_steps: Callable[[int], None] | None = None, needs: dict[Job, tuple[Job, ...]] | None = None) -> None:
    """N worker processes on this machine, each on its own GPU when there are GPUs (see
    :func:`worker_devices`); each limits its torch threads so workers do not fight over cores.
    ``on_steps(n)`` is told of the training steps as the workers take them (through a queue, about once a
    second per worker). A job whose dependency (``needs``, :attr:`Plan.needs`) failed is skipped
    (:class:`Dependencies`)."""
    global _step_sink
    import multiprocessing as mp

    threads = ctx.runtime.threads_for(ctx.device, workers)  # the CLI's rule too (runtime.default_threads)
    ctx = dataclasses.replace(ctx, threads=threads)
    deps = Dependencies(needs)
    if workers == 1:
        _step_sink = on_steps
        try:
            for phase in phases:
                for job in deps.runnable(phase, on_done):
                    outcome = execute(job, ctx)
                    deps.record(job, outcome)
                    on_done(outcome)
        finally:
            _step_sink = None
        return
    context = mp.get_context("spawn")
    steps = context.Queue() if on_steps is not None else None
    reader = threading.Thread(target=_read_steps, args=(steps, on_steps), daemon=True) if steps else None
    if reader:
        reader.start()
    try:
        _run_pools(phases, ctx, workers, on_done, context, threads, steps, deps)
    finally:
        if reader:
            steps.put(None)  # after every worker has flushed: the reader passes on the rest, then stops
            reader.join()


def _read_steps(queue, on_steps: Callable[[int], None]) -> None:
    for n in iter(queue.get, None):
        on_steps(n)


def _run_pools(phases, ctx: Context, workers: int, on_done, context, threads: int, steps,
               deps: Dependencies) -> None:
    import concurrent.futures as cf

    def pool():
        devices = context.Queue()
        for d in worker_devices(ctx.device, workers):
            devices.put(d)
        return cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                      initargs=(threads, steps, devices, os.getpid()))

    for phase in phases:
        pending, retried = deps.runnable(phase, on_done), set()
        while pending:
            with pool() as executor:
                futures = {executor.submit(execute, job, ctx): job for job in pending}
                pending = []
                try:
                    for future in cf.as_completed(futures):
                        job = futures[future]
                        try:
                            outcome = future.result()
                        except cf.process.BrokenProcessPool as e:  # a worker died (OOM kill, segfault)
                            if job in retried:
                                outcome = {"id": None, "status": "failed", "label": job.label(),
                                           "error": f"worker process died twice: {e}"}
                                deps.record(job, outcome)
                                on_done(outcome)
                            else:
                                retried.add(job)
                                pending.append(job)  # once more, in a fresh pool
                        else:
                            deps.record(job, outcome)
                            on_done(outcome)
                except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the workers instead of waiting for them
                    _stop_workers(executor)
                    raise


def _stop_workers(executor) -> None:
    """SIGTERM to every worker process (their runs' locks die with them, so a rerun resumes those runs)."""
    for process in list(getattr(executor, "_processes", {}).values()):
        process.terminate()
    executor.shutdown(wait=False, cancel_futures=True)
