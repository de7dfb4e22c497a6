"""Run-time options: how a run is executed on its hardware, never part of its identity (hash).

What belongs here and what does not (``docs/guide.md``, "Speed options"):

* ``loader_workers``, ``channels_last``, ``cudnn_benchmark``, ``deterministic``: they change how fast a
  run goes, or which of several equally valid kernels computes a convolution; at most the last bits of
  the result differ, exactly as between two GPUs, two thread counts, or a CPU and a GPU, none of which
  enters a run's hash either.
* ``tf32`` is the borderline case: TensorFloat-32 rounds the *inputs* of float32 matrix products and
  convolutions to 10 bits of mantissa on Ampere and newer GPUs (and does nothing on CPUs and older
  GPUs). It stays a run-time option because it is a property of the hardware's arithmetic (torch
  already runs convolutions in TF32 by default on those GPUs), the difference it makes to a trained
  network is of the size of the run-to-run noise of GPU training, and a run's hash should name the
  experiment, not the machine. It is recorded in every session's provenance, so two results can be
  told apart afterwards.
* The mixed-precision mode (``TrainSettings.amp``) *is* part of the identity: bfloat16 and float16
  activations change the training itself (float16 needs loss scaling).
* ``sparse_kernels``: masked linear layers computed on their kept weights only
  (:mod:`prunelab.training.sparse_kernels`). The same training as the dense masked step, only the order of
  the sums in the products differs (the last bits, as between thread counts); checkpoints are the ordinary
  dense ones, so a run resumes in either mode.
* ``threads``: CPU float sums are split over torch's threads, so the thread count decides the last bits of a
  CPU run. It stays out of the hash (a run names the experiment, not the machine), but its default is one
  rule, :func:`default_threads`, that the CLI and every sweep worker follow, so a run gets the same bits
  whether it was launched alone or in a sweep of any number of workers; each session records its count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunelab.options import option
from prunelab.validate import check_int, check_name

if TYPE_CHECKING:  # torch is imported where it is used: the CLI's --help reads RuntimeOptions without it
    import torch
    from torch import nn

#: The most worker processes the automatic choice gives one training process for an image-folder dataset.
MAX_AUTO_LOADER_WORKERS = 8
#: ``--sparse-kernels``: the dense masked step; masked linear layers sparse where a measured crossover says it
#: pays; every masked linear layer sparse (:mod:`prunelab.training.sparse_kernels`).
SPARSE_KERNEL_MODES = ("off", "auto", "on")
#: cuBLAS needs a fixed workspace to be deterministic (torch's "Reproducibility" notes).
CUBLAS_WORKSPACE = ":4096:8"


def available_cpus() -> int:
    """CPUs this process may run on (the Slurm/cgroup allocation, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(device: str | torch.device = "cpu", workers: int = 1) -> int:
    """The torch threads of one run when the user gives no ``--threads``: the share of the CPUs that one worker
    of a default sweep gets, but never a share of fewer workers than ``workers`` run side by side.

    * On the CPU a default sweep runs one worker per CPU, so a run gets **one thread**, alone (the CLI, a
      one-worker sweep) or beside others (``--workers N`` for any N): CPU float sums depend on the thread
      count, and this keeps a run's bits independent of how it was launched. It is also what every CPU
      sweep of ``repro/`` ran with (two workers on two CPUs), so their runs keep their bits.
    * On CUDA a default sweep runs one worker per GPU, so a run gets the CPUs per GPU (fewer when more
      workers than GPUs share the machine, so that the CPUs are not oversubscribed); the CPU threads do not
      enter a GPU's arithmetic.
    """
    import torch

    from prunelab.training.devices import resolve_device

    if resolve_device(device).type != "cuda":
        return 1
    return max(1, available_cpus() // max(workers, torch.cuda.device_count(), 1))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` while the block runs, the caller's own after it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def auto_loader_workers(device: torch.device) -> int:
    """Worker processes for decoding an image-folder dataset: the CPUs of this process's share of the
    machine (its CPUs over the GPUs it has), at most :data:`MAX_AUTO_LOADER_WORKERS`, on CUDA; 0 on the
    CPU, whose cores already run the training."""
    import torch

    if device.type != "cuda":
        return 0
    gpus = max(1, torch.cuda.device_count())
    return max(1, min(MAX_AUTO_LOADER_WORKERS, available_cpus() // gpus))


@dataclass(frozen=True)
class RuntimeOptions:
    """How to execute a run; see the module docstring for why none of these is part of its hash."""

    loader_workers: int | None = option(None, help="processes decoding image-folder datasets (ImageNet, "
                                        "TinyImageNet); in-memory datasets need none",
                                        unset="min(8, CPUs per GPU) on CUDA, 0 on the CPU")
    channels_last: bool = option(False, help="NHWC memory format for convolutions (tensor cores prefer it)")
    cudnn_benchmark: bool = option(False, help="let cuDNN time its algorithms for each new input shape")
    tf32: bool | None = option(None, help="TF32 matrix products and convolutions on Ampere and newer GPUs",
                               unset="torch's defaults")
    deterministic: bool = option(False, help="deterministic kernels only: slower, bitwise repeatable on one GPU "
                                 "(docs/guide.md §7)")
    threads: int | None = option(None, help="torch threads of each run (CPU float sums, and so a CPU run's last "
                                 "bits, depend on it; docs/guide.md §4)",
                                 unset="1 on the CPU, the CPUs per GPU on CUDA: the same alone and in a sweep")
    sparse_kernels: str = option("off", help="masked linear layers compute on their kept weights only (CSR products, "
                                 "sampled weight gradients): the same training to float rounding, faster at high "
                                 "sparsity; auto: per layer where a crossover measured once per machine says it pays "
                                 "(docs/guide.md §7)", choices=lambda: SPARSE_KERNEL_MODES)

    def __post_init__(self) -> None:
        w = self.loader_workers
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 0):
            raise ValueError(f"loader workers must be a non-negative integer, got {w!r}")
        if self.threads is not None:
            check_int(self.threads, "--threads", 1, "torch threads per run")
        check_name("--sparse-kernels mode", self.sparse_kernels, SPARSE_KERNEL_MODES)
        if self.deterministic and self.cudnn_benchmark:
            raise ValueError("--deterministic and --cudnn-benchmark exclude each other: benchmarking picks "
                             "cuDNN algorithms by timing, which differ from run to run")

    def record(self) -> dict[str, object]:
        """The options as a provenance record."""
        return dataclasses.asdict(self)

    def threads_for(self, device: str | torch.device, workers: int = 1) -> int:
        """The torch threads of a run on ``device`` beside ``workers - 1`` others: ``threads`` when given, else
        :func:`default_threads`."""
        return self.threads if self.threads is not None else default_threads(device, workers)

    def workers_for(self, device: torch.device) -> int:
        return auto_loader_workers(device) if self.loader_workers is None else self.loader_workers

    def loader_options(self, dataset, device: torch.device, warn: bool = True) -> dict[str, int]:
        """The loader's ``num_workers`` for an image-folder dataset; an in-memory one has no use for workers
        (its batches are gathered on the device), and a count given for one is ignored with a warning."""
        if not getattr(dataset, "in_memory", True):
            return {"num_workers": self.workers_for(device)}
        if self.loader_workers and warn:
            warnings.warn(f"--loader-workers {self.loader_workers} ignored: {getattr(dataset, 'name', 'the dataset')} "
                          "is held in memory and batched on the device, with no worker processes", UserWarning,
                          stacklevel=3)
        return {}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` in channels-last memory format when asked (4-d weights only; others are unchanged)."""
        import torch

        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @contextlib.contextmanager
    def backends(self) -> Iterator[None]:
        """torch's global backend flags set as asked while the block runs, restored after it."""
        import torch

        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32,
                 torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        try:
            cudnn.benchmark = self.cudnn_benchmark or (saved[0] and not self.deterministic)
            if self.tf32 is not None:
                cudnn.allow_tf32 = matmul.allow_tf32 = self.tf32
            if self.deterministic:
                _set_cublas_workspace()
                cudnn.deterministic = True
                torch.use_deterministic_algorithms(True)
            yield
        finally:
            cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved[:4]
            torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def _set_cublas_workspace() -> None:
    """``CUBLAS_WORKSPACE_CONFIG``, which cuBLAS reads when its first handle is made: set here when the
    user has not set it, with a warning when CUDA is already in use (then it may come too late)."""
    import torch

    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (CUBLAS_WORKSPACE, ":16:8"):
        return
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        warnings.warn(f"--deterministic: CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} was set after CUDA started and "
                      "may not take effect; export it before starting prunelab", RuntimeWarning, stacklevel=3)
