"""Sweeps on a Slurm cluster, through submitit: jobs that requeue at their time limit, a login-node command that
can be interrupted, and a log worth reading.

**In the job** (:class:`ClusterJob`, what each array task runs). Slurm is asked to send ``SIGUSR2``
``signal_delay_s`` seconds before the time limit (submitit's ``--signal``; Slurm may send it up to a minute earlier,
and a preemption sends it too). The job then asks the training to stop after its current step
(:func:`prunelab.training.loop.request_stop`): the step's checkpoint is written, the training raises
:class:`~prunelab.training.loop.StopRequested`, and the job hands over to submitit, which calls
:meth:`ClusterJob.checkpoint` (the same job again), requeues it with ``scontrol requeue`` and exits. The requeued
job resumes the run from that checkpoint, bitwise (CPU, same thread count). Should the training not reach a step
boundary within half the signal delay (a long evaluation, a job still loading its data), the job requeues anyway,
from its last epoch's checkpoint. A job requeues at most ``max_timeouts`` times at its time limit (preemptions do
not count); past that it fails, its checkpoint kept. A job of several tasks (``tasks_per_node``) is one DDP run:
``srun`` starts the tasks, each joins the process group (gloo on the CPU, NCCL on GPUs) from Slurm's variables, and
rank 0 alone checkpoints and requeues.

**On the login node** (:func:`run_submitit`). Each phase is one job array; a job whose dense replicate (or
dense training to step t) failed is not submitted (:class:`prunelab.experiments.sweep.Dependencies`). The
command follows its jobs with ``squeue`` (one call for all of them, every 2 s at first, at most every
:data:`SQUEUE_MAX_S`), never with ``sacct``, which clusters without accounting refuse, and prints one line per
job state change (``RUNNING``, ``PENDING`` again after a requeue) and one per outcome. submitit's own log
lines are said once each (:func:`quiet_submitit_logs`). Every submitted job is noted in
``<root>/.submitit/jobs.jsonl``: interrupted (Ctrl-C, a closed login session), the command leaves its jobs
queued and running, and a rerun skips the finished runs, **waits for the jobs still queued or running**
(found through that file and ``squeue``; keyed by run id, :func:`job_key`) and submits only the others. A rerun
that cannot ask ``squeue`` submits nothing (it could run a job twice) and says so in one line. An interrupt
while jobs are being submitted waits until the file notes them (:class:`_DeferredInterrupts`).
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunelab.experiments.runner import Runner
    from prunelab.experiments.sweep import Context, Job

SLURM_KEYS = {"partition": str, "time_min": int, "gpus_per_node": int, "cpus_per_task": int, "mem_gb": int,
              "array_parallelism": int, "nodes": int, "account": str, "qos": str, "tasks_per_node": int,
              "signal_delay_s": int, "max_timeouts": int}
TIME_MIN = 60  # the time limit of a job when the spec gives none
SIGNAL_DELAY_S = 90  # seconds ahead of the time limit that Slurm signals a job, by default (shorter limits: less)
# Slurm checks time limits periodically, so it may send the signal up to this much earlier than asked (sbatch(1),
# --signal); and a job needs about this long (Python, torch, submitit) before it can catch the signal at all:
# a signal that comes sooner kills it, and the job ends FAILED.
EARLY_SIGNAL_S, JOB_START_S = 60, 30
MAX_TIMEOUTS = 10  # how often a job requeues at its time limit before it fails
JOB_NAME = "prunelab"
SQUEUE_MIN_S, SQUEUE_MAX_S = 2.0, 30.0  # squeue every 2 s after a change, doubling to this while nothing changes
POLL_S = 1.0  # result files of running jobs looked at this often
# A job that ended gets this long for its result file to appear (a slow shared file system): a job COMPLETED or no
# longer listed had one for sure; a cancelled, failed or killed one has one only if it ended just then.
RESULT_GRACE_S, CANCELLED_GRACE_S = 15.0, 3.0
LEDGER = "jobs.jsonl"  # in <root>/.submitit: one line per submitted job, for a rerun to find them
# Slurm states after which a job runs no more (a requeued job goes back to PENDING instead)
FINAL_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"}


# ---- parameters ---------------------------------------------------------------------------------------

def check_table(table: dict[str, Any], where: str) -> None:
    """The ``[slurm]`` table of a spec: known keys of the right types (a misspelt key is named)."""
    from prunelab.registry import unknown_name_message

    for key, value in table.items():
        if key not in SLURM_KEYS:
            raise ValueError(f"{where}: " + unknown_name_message("key in [slurm]", key, list(SLURM_KEYS)))
        if not isinstance(value, SLURM_KEYS[key]) or isinstance(value, bool):
            raise ValueError(f"{where}: [slurm] {key} must be {SLURM_KEYS[key].__name__}")


def slurm_parameters(slurm: dict[str, Any], device: str) -> dict[str, Any]:
    """submitit's parameters for the ``[slurm]`` table of a spec (with the command's overrides merged in), and
    ``max_timeouts`` (submitit takes it when the executor is made).

    A sweep on device ``cuda`` (or ``cuda:N``) with no GPUs per node is refused with a one-line error; one on
    ``auto`` gets a one-line warning that its jobs will run on the nodes' CPUs. A signal delay that is not
    shorter than the time limit (every job would stop at once) is refused; one that Slurm may send within
    :data:`JOB_START_S` of a job's start (it sends it up to :data:`EARLY_SIGNAL_S` early), which kills the job before
    it can catch the signal, gets a one-line warning. The default delay is :data:`SIGNAL_DELAY_S`, shortened for
    limits under 3 minutes to one that leaves that start-up room (a one-minute limit: half of it, and the warning).
    """
    import warnings

    gpus = slurm.get("gpus_per_node", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ValueError(f"gpus_per_node must be a non-negative integer, got {gpus!r}")
    if gpus == 0 and device.split(":")[0] == "cuda":
        raise ValueError(f"device {device} needs GPUs on the Slurm nodes, but the jobs would ask for none: set "
                         "[slurm] gpus_per_node = N in the spec or give --gpus-per-node N")
    for key in ("time_min", "tasks_per_node", "cpus_per_task", "nodes", "signal_delay_s", "max_timeouts"):
        if key in slurm and slurm[key] < (0 if key == "max_timeouts" else 1):
            raise ValueError(f"[slurm] {key} must be >= {0 if key == 'max_timeouts' else 1}, got {slurm[key]}")
    time_min = slurm.get("time_min", TIME_MIN)
    room = time_min * 60 - EARLY_SIGNAL_S - JOB_START_S  # the longest delay whose signal never comes too early
    delay = slurm.get("signal_delay_s", min(SIGNAL_DELAY_S, room) if room >= 10 else time_min * 60 // 2)
    if delay >= time_min * 60:
        raise ValueError(f"[slurm] signal_delay_s = {delay} is not shorter than the time limit (time_min = {time_min}"
                         f" is {time_min * 60} s): every job would be told to stop as it starts; give a delay of at "
                         f"most {max(room, time_min * 60 // 2)} s")
    if delay > room:
        safe_min = -(-(delay + EARLY_SIGNAL_S + JOB_START_S) // 60)
        fix = f"a time_min of {safe_min} or more" + (f", or a signal_delay_s of at most {room} s," if room >= 1 else "")
        warnings.warn(f"[slurm] time_min = {time_min} with a signal {delay} s ahead of it: Slurm may send the signal "
                      f"up to {EARLY_SIGNAL_S} s early (sbatch --signal), within {JOB_START_S} s of a job's start, "
                      f"before the job can catch it, and such a job fails (a rerun resumes it); {fix} is safe",
                      UserWarning, stacklevel=2)
    if gpus == 0 and device == "auto":
        warnings.warn("the Slurm jobs ask for no GPU ([slurm] gpus_per_node = 0), so they run on the nodes' CPUs; "
                      "set gpus_per_node in the spec or give --gpus-per-node N for GPUs", UserWarning, stacklevel=2)
    params: dict[str, Any] = {"timeout_min": time_min, "gpus_per_node": gpus,
                              "cpus_per_task": slurm.get("cpus_per_task", 1), "nodes": slurm.get("nodes", 1),
                              "tasks_per_node": slurm.get("tasks_per_node", 1), "slurm_signal_delay_s": delay,
                              "max_timeouts": slurm.get("max_timeouts", MAX_TIMEOUTS)}
    if "mem_gb" in slurm:
        params["mem_gb"] = slurm["mem_gb"]
    for key, name in (("partition", "slurm_partition"), ("array_parallelism", "slurm_array_parallelism"),
                      ("account", "slurm_account"), ("qos", "slurm_qos")):
        if key in slurm:
            params[name] = slurm[key]
    return params


# ---- in the job -----------------------------------------------------------------------------------------

def _job_log(message: str) -> None:
    """A line in the job's own log (submitit's ``*_log.err``)."""
    print(f"prunelab: {message}", file=sys.stderr, flush=True)


class ClusterJob:
    """What each cluster job runs: one sweep job (:func:`prunelab.experiments.sweep.execute`), checkpointable for
    submitit (it has :meth:`checkpoint`). ``grace_s``: how long after Slurm's signal the training has to reach a
    step boundary before the job requeues from its last epoch's checkpoint."""

    def __init__(self, grace_s: float = SIGNAL_DELAY_S / 2):
        self.grace_s = grace_s

    def __call__(self, job: Job, ctx: Context) -> dict[str, Any]:
        from prunelab.experiments import sweep
        from prunelab.training.loop import StopRequested, request_stop

        rank, tasks = _task()
        run_ctx = _join_process_group(ctx) if tasks > 1 else ctx
        guard = _SignalGuard(rank, self.grace_s)
        guard.install()
        try:
            return sweep.execute(job, run_ctx)
        except (StopRequested, GraceOver) as e:  # raised in this (the main) thread, outside sweep.execute
            _job_log(f"{e}; requeueing ({job.label()})")
            guard.requeue()  # submitit saves this job's next submission, requeues it and exits
            raise
        finally:
            guard.uninstall()
            request_stop(False)
            if tasks > 1:
                _leave_process_group()

    def checkpoint(self, job: Job, ctx: Context):
        """The job to run after the requeue: the same one, which resumes its run from the checkpoints."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, job, ctx)


def _task() -> tuple[int, int]:
    """(global rank, number of tasks) of this process in its cluster job."""
    import submitit

    env = submitit.JobEnvironment()
    return env.global_rank, env.num_tasks


def _join_process_group(ctx: Context) -> Context:
    """Join the job's DDP process group (``srun`` set the ranks; submitit names the master) and return ``ctx`` on
    this rank's device: ``cuda:<local rank>`` with NCCL on GPUs, else the CPU with gloo."""
    from submitit.helpers import TorchDistributedEnvironment

    from prunelab.training import distributed

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return dataclasses.replace(ctx, device=distributed.init_from_env(ctx.device))


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _preempt_signal() -> signal.Signals:
    from submitit.core.job_environment import JobEnvironment

    return JobEnvironment._usr_sig()


class GraceOver(KeyboardInterrupt):
    """Raised in the job's main thread when the training did not reach a step boundary within the grace after
    Slurm's signal: a KeyboardInterrupt, so that it passes through every ``except Exception`` (``sweep.execute``
    must not record the run as failed) up to :meth:`ClusterJob.__call__`, which requeues."""


class _SignalGuard:
    """Slurm's signal (USR2) turned into a stop request to the training, then submitit's own handler (checkpoint
    and requeue) called once the training has stopped, or once ``grace_s`` seconds have passed.

    submitit's handler must run in the main thread: it ends the job with ``sys.exit`` (which in another thread
    ends that thread alone) or, once ``max_timeouts`` is used up, raises ``UncompletedJobError``, which submitit
    turns into the job's result file only when it comes out of the job's function. So the watch thread
    (a ``threading.Timer``) does not call it: it sends the same signal to the main thread
    (``signal.pthread_kill``) with :attr:`handoff` set, and the handler, now in the main thread, raises
    :class:`GraceOver` there; :class:`ClusterJob` catches it outside the training and calls :meth:`requeue`.
    (A main thread inside one long C call sees the signal when that call returns.)"""

    def __init__(self, rank: int, grace_s: float):
        self.rank, self.grace_s = rank, grace_s
        self.signum: int | None = None
        self.previous: Any = None
        self.timer: threading.Timer | None = None
        self.handoff = False  # set by the watch thread: the next signal is its hand-off to the main thread
        self._requeued = self._closed = False
        self._lock = threading.Lock()

    def install(self) -> None:
        self.sig = _preempt_signal()
        self.previous = signal.getsignal(self.sig)
        signal.signal(self.sig, self.handle)

    def uninstall(self) -> None:
        with self._lock:
            self._closed = True  # a hand-off not yet sent is not sent
        if self.timer is not None:
            self.timer.cancel()
        signal.signal(self.sig, self.previous if self.previous is not None else signal.SIG_DFL)

    def handle(self, signum: int, frame=None) -> None:
        from prunelab.training.loop import request_stop

        if self.rank != 0:  # rank 0 checkpoints and requeues; Slurm then ends every task
            return
        if self.handoff:  # the watch thread's signal: the grace is over; requeue from the main thread
            with self._lock:
                if self._requeued or self._closed:
                    return
            raise GraceOver(f"no training step ended within {self.grace_s:g} s of the signal; the last saved "
                            "checkpoint is kept")
        if self.signum is None:
            _job_log(f"{signal.Signals(signum).name}: time limit or preemption ahead; stopping after the current "
                     "training step to save a checkpoint and requeue")
        self.signum = signum
        request_stop()
        if self.timer is None:
            self.timer = threading.Timer(self.grace_s, self._late)
            self.timer.daemon = True
            self.timer.start()

    def _late(self) -> None:
        """In the watch thread: hand the requeue to the main thread (never run submitit's handler here)."""
        with self._lock:
            if self._requeued or self._closed:
                return
            self.handoff = True
        signal.pthread_kill(threading.main_thread().ident, self.sig)

    def requeue(self) -> None:
        """submitit's handler, in the main thread: the next submission saved (:meth:`ClusterJob.checkpoint`),
        ``scontrol requeue``, exit (SystemExit), or ``UncompletedJobError`` past ``max_timeouts``. Once,
        whichever of the training's stop and the grace's end comes first."""
        with self._lock:
            if self._requeued:
                return
            self._requeued = True
        if self.timer is not None:
            self.timer.cancel()
        if callable(self.previous) and self.signum is not None:
            self.previous(self.signum, None)


# ---- on the login node: logs ------------------------------------------------------------------------------

class _OnceFilter(logging.Filter):
    """Passes each message once (numbers aside: "Call #12 - Bypassing sacct error" is the same line each poll)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def quiet_submitit_logs() -> None:
    """submitit's log on the login node: each line once, and its warnings on stderr only (its configuration sends
    them to stdout as well)."""
    logger = logging.getLogger("submitit")
    if not any(isinstance(f, _OnceFilter) for f in logger.filters):
        logger.addFilter(_OnceFilter())
    if any(h.level >= logging.WARNING for h in logger.handlers):
        for handler in logger.handlers:
            if handler.level < logging.WARNING and not any(isinstance(f, _BelowWarning) for f in handler.filters):
                handler.addFilter(_BelowWarning())


def _print_line(text: str) -> None:
    print(text, flush=True)


# ---- on the login node: the queue ---------------------------------------------------------------------------

class Queue:
    """This user's prunelab jobs as ``squeue`` lists them: job id (``123_4`` for an array task) -> state. One call
    for every job; a failure is said once per kind of error, and the states are then unknown (None)."""

    def __init__(self, log: Callable[[str], None] = _print_line):
        self.log = log
        self._warned: set[str] = set()
        self.last_error = ""  # what the last failed call said

    def states(self, warn: bool = True) -> dict[str, str] | None:
        """The states, or None when squeue fails (said once per kind of error unless ``warn`` is False)."""
        cmd = ["squeue", "--noheader", "--array", "--user", getpass.getuser(), "--name", JOB_NAME, "--states", "all",
               "--format", "%i|%T"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError) as e:
            detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) and e.stderr else str(e)
            key = re.sub(r"\d+", "#", detail)
            self.last_error = " ".join(detail.split())
            if warn and key not in self._warned:
                self._warned.add(key)
                self.log(f"prunelab: warning: squeue failed ({' '.join(detail.split())}); job states unknown until "
                         "it answers")
            return None
        states = {}
        for line in out.splitlines():
            job_id, _, state = line.strip().partition("|")
            if job_id:
                states[job_id] = state.split()[0] if state.strip() else "UNKNOWN"
        return states


def job_key(runner: Runner, job: Job) -> str:
    """A stable name of a sweep job across runs of the command: its kind, its run id (stable by design: a
    hyperparameter added with its default keeps it) and, for a dense prefix, its step. Not the job's ``repr``, which
    a new defaulted field changes, so that a rerun would miss the jobs still running and submit them again."""
    from prunelab.experiments import sweep

    return f"{job.kind}:{sweep.job_id(runner, job)}" + ("" if job.step is None else f":{job.step}")


def _legacy_key(job: Job) -> str:
    """The key of ledgers written before :func:`job_key` (the job's repr, hashed): still matched, so that a rerun
    after the upgrade finds the jobs such a ledger names."""
    return hashlib.sha256(repr(job).encode()).hexdigest()[:20]


class Ledger:
    """``<root>/.submitit/jobs.jsonl``: one line per submitted job (its key, Slurm id and task count)."""

    def __init__(self, folder: Path):
        self.path = folder / LEDGER

    def record(self, entries: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
            f.flush()
            os.fsync(f.fileno())

    def latest(self) -> dict[str, dict[str, Any]]:
        """key -> the last job submitted for it."""
        out: dict[str, dict[str, Any]] = {}
        try:
            text = self.path.read_text()
        except OSError:
            return out
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                out[entry["key"]] = entry
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a crash: that job is resubmitted if it is still needed
        return out


def _task0(handle):
    return handle.task(0) if hasattr(handle, "task") else handle


def _read_result(handle, label: str, job_id: str | None) -> dict[str, Any]:
    """The outcome a finished cluster job wrote (rank 0's), or a failed outcome naming what went wrong."""
    from submitit.core.utils import pickle_load

    path = _task0(handle).paths.result_pickle
    try:
        status, value = pickle_load(path)
    except Exception as e:  # noqa: BLE001 - a damaged result file is the job's failure, not the sweep's
        return {"id": None, "status": "failed", "label": label, "error": f"unreadable result {path}: {e}"}
    if status == "success":
        return value
    return {"id": None, "status": "failed", "label": label, "error": _cluster_error(str(value), job_id)}


def _cluster_error(trace: str, job_id: str | None) -> str:
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no error text"
    if "timed-out too many times" in trace:
        return (f"slurm job {job_id} reached its time limit more often than [slurm] max_timeouts allows; its "
                "checkpoint is kept, and a rerun (or a larger max_timeouts or time_min) resumes it")
    return f"slurm job {job_id}: {last}"


@dataclasses.dataclass
class _Tracked:
    job: Job
    handle: Any
    label: str
    state: str | None = None  # the last Slurm state seen
    gone_at: float | None = None  # when squeue first showed it ended (or no longer listed it)

    @property
    def job_id(self) -> str:
        return str(getattr(self.handle, "job_id", "?"))


class Watch:
    """Waits for cluster jobs: their states through :class:`Queue` (Slurm), else submitit's own ``done()``
    (its local executor in tests); one line per state change and per outcome."""

    def __init__(self, slurm: bool, log: Callable[[str], None] = _print_line):
        self.slurm, self.log = slurm, log
        self.queue = Queue(log) if slurm else None
        self.waiting: dict[str, _Tracked] = {}  # Slurm id -> job, while the command waits for it

    def wait(self, handles: dict[Job, Any], adopted: set[Job] = frozenset()) -> Iterator[tuple[Job, dict]]:
        """(job, outcome) for each of ``handles`` as it ends, in the order they end."""
        pending = [_Tracked(job, h, job.label(), state="PENDING" if job not in adopted else None)
                   for job, h in handles.items()]
        self.waiting.update({t.job_id: t for t in pending})
        interval, next_query = SQUEUE_MIN_S, 0.0
        while pending:  # an interrupt leaves the jobs still pending in self.waiting, for the message that names them
            now = time.monotonic()
            query = self.slurm and now >= next_query
            changed = self._update_states(pending, now) if query else False
            for tracked in list(pending):
                outcome = self._outcome(tracked, now, all_files=query)
                if outcome is not None:
                    pending.remove(tracked)
                    self.waiting.pop(tracked.job_id, None)
                    self._say_outcome(tracked, outcome)
                    yield tracked.job, outcome
            if query:
                interval = SQUEUE_MIN_S if changed else min(interval * 2, SQUEUE_MAX_S)
                next_query = now + interval
            if pending:
                time.sleep(POLL_S)

    def _update_states(self, pending: list[_Tracked], now: float) -> bool:
        states = self.queue.states()
        if states is None:
            return False
        changed = False
        for tracked in pending:
            state = states.get(tracked.job_id)
            if state is None or state in FINAL_STATES:
                if tracked.gone_at is None:
                    tracked.gone_at = now
            else:
                tracked.gone_at = None
            if state is not None and state != tracked.state:
                if state not in FINAL_STATES:  # a final state is said with the outcome
                    self.log(f"slurm job {tracked.job_id} {state}: {tracked.label}")
                tracked.state, changed = state, True
        return changed

    def _outcome(self, tracked: _Tracked, now: float, all_files: bool) -> dict[str, Any] | None:
        handle = tracked.handle
        if not self.slurm:
            if hasattr(handle, "done") and not handle.done():
                return None
            try:
                return _task0(handle).result()
            except Exception as e:  # noqa: BLE001 - the cluster job itself died
                return {"id": None, "status": "failed", "label": tracked.label, "error": f"{type(e).__name__}: {e}"}
        # pending jobs have no result: their files are looked at only when squeue was asked (every few seconds)
        if not all_files and tracked.state in (None, "PENDING", "CONFIGURING"):
            return None
        if _task0(handle).paths.result_pickle.exists():
            return _read_result(handle, tracked.label, tracked.job_id)
        grace = RESULT_GRACE_S if tracked.state in (None, "COMPLETED") or tracked.state not in FINAL_STATES \
            else CANCELLED_GRACE_S
        if tracked.gone_at is not None and now - tracked.gone_at >= grace:
            how = tracked.state if tracked.state in FINAL_STATES else "no longer in the queue"
            return {"id": None, "status": "failed", "label": tracked.label,
                    "error": f"slurm job {tracked.job_id} ended without a result ({how}: cancelled, killed or its node "
                             f"failed; its log: {_task0(handle).paths.stderr}); a rerun resumes the run from its "
                             "last checkpoint"}
        return None

    def _say_outcome(self, tracked: _Tracked, outcome: dict[str, Any]) -> None:
        status = outcome.get("status", "?")
        detail = ""
        if outcome.get("test_accuracy") is not None:
            detail = f" (test accuracy {outcome['test_accuracy']:.4f})"
        elif status == "failed":
            detail = f" ({outcome.get('error', '')})"
        self.log(f"slurm job {tracked.job_id} {status}: {tracked.label}{detail}")


# ---- on the login node: the sweep ---------------------------------------------------------------------------

def run_submitit(phases: list[list[Job]], ctx: Context, slurm: dict[str, Any], on_done: Callable[[dict], None],
                 cluster: str | None = "slurm", on_steps: Callable[[int], None] | None = None,
                 needs: dict[Job, tuple[Job, ...]] | None = None, log: Callable[[str], None] | None = None) -> None:
    """The phases as job arrays through submitit, one array per phase, each submitted once the previous one has
    ended (``cluster="local"`` runs them as local processes, the same submission path, in tests). A job whose
    dependency (``needs``, :attr:`prunelab.experiments.sweep.Plan.needs`) failed is not submitted: ``on_done`` gets
    it as skipped, with the reason. ``on_steps(n)`` is told of a job's training steps when it ends (cluster jobs
    have no channel back while they run). ``log`` gets the one-line state changes (default: stdout)."""
    from prunelab.experiments import sweep

    log = log or _print_line
    params = slurm_parameters(slurm, ctx.device)
    max_timeouts = params.pop("max_timeouts")
    try:
        import submitit
    except ModuleNotFoundError:
        raise ValueError("the slurm executor needs submitit: pip install 'prunelab[slurm]'") from None
    quiet_submitit_logs()
    folder = Path(ctx.root) / ".submitit"
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster, slurm_max_num_timeout=max_timeouts)
    executor.update_parameters(name=JOB_NAME, **params)
    on_slurm = getattr(executor, "cluster", None) == "slurm"
    watch = Watch(on_slurm, log)
    ledger = Ledger(folder) if on_slurm else None
    run = ClusterJob(grace_s=params["slurm_signal_delay_s"] / 2)
    runner = ctx.runner()
    deps = sweep.Dependencies(needs)
    try:
        for phase in phases:
            jobs = deps.runnable(phase, on_done)
            if not jobs:
                continue
            handles, held = _adopt(jobs, ledger, watch, str(folder / "%j"), runner, log) if ledger is not None \
                else ({}, {})
            for job, outcome in held.items():  # still queued or running, but not followed: not submitted again
                deps.record(job, outcome)
                on_done(outcome)
            adopted = set(handles)
            fresh = [job for job in jobs if job not in handles and job not in held]
            if fresh:
                tasks = params.get("tasks_per_node", 1) * params.get("nodes", 1)
                # Ctrl-C, SIGTERM or SIGHUP while sbatch runs would leave jobs submitted and not in the ledger: they
                # wait until the ledger has them (and the watch knows them, for the line that names them).
                with _DeferredInterrupts() as deferred:
                    try:
                        submitted = executor.map_array(run, fresh, [ctx] * len(fresh))
                    except BaseException as e:
                        # a second signal, or the held one also killed sbatch (submitit then says sbatch failed)
                        if isinstance(e, KeyboardInterrupt) or deferred.pending is not None:
                            _say_unnoted(ledger)
                            deferred.release()  # the held signal acts now (KeyboardInterrupt, Terminated)
                        raise
                    if ledger is not None:
                        ledger.record([{"key": job_key(runner, job), "job_id": str(h.job_id), "tasks": tasks}
                                       for job, h in zip(fresh, submitted)])
                    handles.update(zip(fresh, submitted))
                    for job, h in zip(fresh, submitted):
                        tracked = _Tracked(job, h, job.label())
                        watch.waiting[tracked.job_id] = tracked
                    deferred.release()  # a signal that came meanwhile acts now
                ids = sorted({str(getattr(h, "job_id", "?")).split("_")[0] for h in submitted})
                log(f"slurm: submitted {len(fresh)} job{'s' if len(fresh) > 1 else ''} "
                    f"({_phase_words(fresh)}) as {'array' if len(fresh) > 1 else 'job'} {', '.join(ids)}")
            for job, outcome in watch.wait(handles, adopted):
                deps.record(job, outcome)
                if on_steps is not None:
                    on_steps(outcome.get("steps", 0))
                on_done(outcome)
    except KeyboardInterrupt:
        _say_left(watch)
        raise


def _say_left(watch: Watch) -> None:
    """After an interrupt: one line naming the jobs left in the queue (they go on) and what a rerun does."""
    left = list(watch.waiting)
    states = watch.queue.states() if watch.queue is not None and left else None
    if states is not None:  # a job cancelled or ended since the last look is not left running
        left = [i for i in left if states.get(i) is not None and states[i] not in FINAL_STATES]
    if not left:
        return
    arrays = sorted({i.split("_")[0] for i in left})
    print(f"prunelab: left {len(left)} Slurm job{'s' if len(left) > 1 else ''} queued or running "
          f"({'arrays' if len(arrays) > 1 else 'array'} {', '.join(arrays)}; scancel them to stop them); rerunning "
          "the same command waits for them and submits only what is neither finished nor queued", file=sys.stderr,
          flush=True)


def _phase_words(jobs: list[Job]) -> str:
    names = {"dense": "dense replicates", "prefix": "dense prefixes to step t"}
    return " + ".join(dict.fromkeys(names.get(job.kind, "runs") for job in jobs))


class _DeferredInterrupts:
    """SIGINT, SIGTERM and SIGHUP held back (noted, not acted on) in the main thread until :meth:`release` (or the
    end of the ``with``), then acted on as they would have been. A second signal meanwhile acts at once: the user
    insists. Used around a submission, so that its jobs are in the ledger before an interrupt ends the command.

    What it cannot cover: a Ctrl-C also reaches ``sbatch`` itself (the terminal signals the whole process group),
    and an ``sbatch`` killed after the controller took its job leaves that job submitted without an id to note;
    :func:`_say_unnoted` then says so in one line."""

    NAMES = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self):
        self.previous: dict[int, Any] = {}
        self.pending: int | None = None

    def __enter__(self) -> _DeferredInterrupts:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers belong to the main thread; nothing to hold back here
        for name in self.NAMES:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            previous = signal.getsignal(sig)
            if previous in (signal.SIG_IGN, None):
                continue  # ignored (nohup) or not set from Python: left as it is
            self.previous[sig] = previous
            signal.signal(sig, self._hold)
        return self

    def _hold(self, signum: int, frame=None) -> None:
        if self.pending is None:
            self.pending = signum
            return
        self.release()  # the second one: act now (the first is then acted on)

    def release(self) -> None:
        """Handlers back as they were; a signal held back acts now (in this thread, as it would have)."""
        previous, self.previous = self.previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        pending, self.pending = self.pending, None
        if pending is None or pending not in previous:
            return
        handler = previous[pending]
        if callable(handler):
            handler(pending, None)
        elif handler == signal.SIG_DFL:
            if pending == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), pending)  # the default action (the process ends)

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.release()
        else:  # leaving on an exception: handlers back, and that exception goes on
            self.pending = None
            self.release()


def _say_unnoted(ledger: Ledger | None) -> None:
    """After an interrupt during a submission: one line saying that jobs may be queued that no ledger names."""
    where = f" and not noted in {ledger.path}" if ledger is not None else ""
    print(f"prunelab: interrupted while submitting jobs: some may have been submitted{where}; `squeue --me "
          f"--name {JOB_NAME}` lists them (scancel the ones a rerun would submit again)", file=sys.stderr, flush=True)


def _adopt(jobs: list[Job], ledger: Ledger, watch: Watch, folder: str, runner: Runner,
           log: Callable[[str], None]) -> tuple[dict[Job, Any], dict[Job, dict[str, Any]]]:
    """Handles of the jobs an earlier run of the sweep submitted that are still queued or running, and the outcome
    (skipped, with the reason) of each such job whose handle cannot be made: it is not submitted again.

    With jobs in the ledger and no answer from squeue, the command stops (ValueError, one line): submitting would
    run again the jobs still running, on the same runs."""
    import submitit

    noted = ledger.latest()
    candidates = {}
    for job in jobs:
        entry = noted.get(job_key(runner, job)) or noted.get(_legacy_key(job))
        if entry is not None:
            candidates[job] = entry
    if not candidates:
        return {}, {}
    states = None
    for attempt in range(3):  # a busy controller answers the second time
        if attempt:
            time.sleep(SQUEUE_MIN_S * attempt)
        states = watch.queue.states(warn=False)
        if states is not None:
            break
    if states is None:
        raise ValueError(f"squeue failed ({watch.queue.last_error or 'no answer'}), so whether the "
                         f"{len(candidates)} job(s) that {ledger.path} notes are still queued or running is unknown; "
                         "nothing was submitted (it could run them twice): retry once squeue answers")
    handles, held = {}, {}
    for job, entry in candidates.items():
        state = states.get(entry["job_id"])
        if state is not None and state not in FINAL_STATES:
            try:
                handles[job] = submitit.SlurmJob(folder=folder, job_id=entry["job_id"],
                                                 tasks=tuple(range(max(1, int(entry.get("tasks", 1))))))
            except Exception as e:  # noqa: BLE001 - said in one line; the job is not submitted again
                reason = (f"slurm job {entry['job_id']} is still {state} but cannot be followed "
                          f"({type(e).__name__}: {' '.join(str(e).split())}); not submitted again: wait for it "
                          "or scancel it")
                log(f"prunelab: warning: {job.label()}: {reason}")
                held[job] = {"id": None, "status": "skipped", "label": job.label(), "steps": 0, "reason": reason}
    if handles:
        log(f"slurm: waiting for {len(handles)} job{'s' if len(handles) > 1 else ''} that an earlier run of this "
            "sweep submitted (still queued or running)")
    return handles, held


def cluster_answers(timeout: float = 10.0) -> tuple[bool, str]:
    """Whether a Slurm cluster answers here (``sinfo`` lists a node that can run jobs), and what it said."""
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format", "%T"], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"sinfo: {e}"
    states = proc.stdout.split()
    if proc.returncode != 0:
        return False, f"sinfo: {' '.join(proc.stderr.split()) or f'exit status {proc.returncode}'}"
    if not any(s.rstrip("*~#!%$@^-") in ("idle", "mixed", "allocated", "completing") for s in states):
        return False, f"sinfo: no node up ({', '.join(states) or 'none'})"
    return True, "sinfo: " + ", ".join(states)

