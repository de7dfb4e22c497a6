"""Where a run came from: versions, git commit, command line, host, CPU, device, threads, start and end times.

Kept in ``<run>/provenance.json``, outside ``hparams.json``, so it never changes a run's hash. A run
may be computed in several sessions (interrupted, then resumed elsewhere): each session that computed
part of a run appends one record, and closes it with its end time and outcome when it releases the
run's lock, so a record without an end is a session that was killed.
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def now() -> str:
    """The current time in UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def _process() -> dict[str, Any]:
    """What does not change within a process (the git call is made once)."""
    import torch

    import prunelab

    return {
        "prunelab": prunelab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git": git_state(Path(prunelab.__file__).resolve().parent.parent),
        "command": list(sys.argv),
        "host": socket.gethostname(),
        "cpu": cpu_record(),
    }


def cpu_record() -> dict[str, Any]:
    """The CPU's model and the vector instruction set torch's kernels use on it (``AVX2``, ``AVX512``...).

    Float results are bitwise reproducible for the same code, thread count and kernels: oneDNN and ATen pick
    their kernels by instruction set, so a rerun on another CPU type may differ in the last bits and, through
    training, in the final accuracy by as much as another seed would."""
    import torch

    model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability()}


def git_state(checkout: Path) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` when prunelab runs from a git checkout, else None."""
    git = shutil.which("git")
    if git is None or not (checkout / ".git").exists():
        return None
    try:
        def call(*args: str) -> str:
            return subprocess.run([git, "-C", str(checkout), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout

        commit = call("rev-parse", "HEAD").strip()
        dirty = bool(call("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def device_record(device: str) -> dict[str, Any]:
    """The device a session computes on: ``type``, ``name`` (the GPU's model), ``index`` and ``count`` (of
    that kind on the machine), and the CUDA and cuDNN versions torch was built with (None without CUDA)."""
    import torch

    from prunelab.training import resolve_device

    resolved = resolve_device(device)
    record: dict[str, Any] = {"type": resolved.type, "name": str(resolved), "index": resolved.index, "count": 1,
                              "cuda": torch.version.cuda, "cudnn": None}
    if resolved.type == "cuda":
        index = resolved.index if resolved.index is not None else torch.cuda.current_device()
        record.update(name=torch.cuda.get_device_name(index), index=index, count=torch.cuda.device_count(),
                      cudnn=torch.backends.cudnn.version())
    return record


def session(device: str, runtime=None) -> dict[str, Any]:
    """The record of one computing session of a run on ``device`` (as the runner was given it), with the
    run-time options it ran under (:class:`prunelab.training.runtime.RuntimeOptions`) and the torch thread
    counts it computes with: ``threads`` (intra-op: how CPU float sums are split, so part of what fixes a
    CPU run's bits, with ``cpu.capability``) and ``interop_threads`` (recorded, never changed by prunelab)."""
    import torch

    from prunelab.training import resolve_device

    record = {**_process(), "device": str(resolve_device(device)), "device_info": device_record(device),
              "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
              "pid": os.getpid()}
    if runtime is not None:
        record["runtime"] = runtime.record()
    return record
