"""The density below which a masked linear layer trains faster sparse than dense, measured once per machine.

``RuntimeOptions.sparse_kernels = "auto"`` runs a layer sparse (:mod:`prunelab.training.sparse_kernels`) only
where that pays. Whether it pays depends on the layer's shape, the batch size, the device, the thread count
and the CPU's kernels, so the crossover is measured, not modelled: for each (shape, batch) the first time
it is asked for, one training step of the layer alone (forward, input gradient, weight gradient) is timed
dense and sparse at the densities of :data:`DENSITIES`, alternating the two; the crossover is the largest
density at which sparse is faster, as it is at every lower density measured (0 when it never is). A layer next
to a sparse one in an ``nn.Sequential`` (a ReLU or nothing between them) joins that layer's chain, one autograd node
for both, so what it costs there is less than alone: its crossover *in a chain* is measured as the same step behind a
sparse feeding layer, the two as one chain against the feeder alone then the layer dense. The
figures are cached per machine (CPU instruction set or GPU name, torch version, thread count) in
``$XDG_CACHE_HOME/prunelab/sparse_crossover.json`` (``~/.cache/...``); processes that ask for one crossover at once
(a sweep's workers) measure it once, the first under the cache's lock while the others wait. This prints them::

    python -m prunelab.training.sparse_crossover            # the cached crossovers
    python -m prunelab.training.sparse_crossover --measure 300x784 100x300 --batch 128
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prunelab.io import atomic_write_text
from prunelab.timing import device_sync, paired
from prunelab.training.sparse_products import KERNELS_VERSION, Structure, sparse_chain, sparse_linear

#: Densities at which a layer's sparse step is timed against its dense one, from the highest.
DENSITIES = (0.5, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01)
ENV_VAR = "PRUNELAB_SPARSE_CROSSOVER"  # another cache file (tests, a shared machine)

_memo: dict[str, dict[str, Any]] = {}


def cache_path() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "") or Path.home() / ".cache"
    return Path(cache).expanduser() / "prunelab" / "sparse_crossover.json"


def machine(device: torch.device) -> str:
    """What the timings hold for: the device (GPU name, or the CPU's vector instruction set), torch, threads, and the
    kernels' generation (a crossover measured with older kernels is measured again)."""
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"cpu {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
    return f"{what}, torch {torch.__version__}, kernels v{KERNELS_VERSION}"


FEEDER = (64, 0.05)  # in-chain measurement: the feeding layer's inputs and density (its outputs: the layer's inputs)


def _key(shape: tuple[int, int], batch: int, chained: bool = False) -> str:
    return f"{shape[0]}x{shape[1]}, batch {batch}" + (", in a chain" if chained else "")


def load() -> dict[str, dict[str, Any]]:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        import warnings

        warnings.warn(f"{path}: unreadable sparse-kernel crossover cache, measured again", UserWarning, stacklevel=2)
        return {}
    return data if isinstance(data, dict) else {}


def crossover(shape: tuple[int, int], batch: int, device: torch.device | str = "cpu", chained: bool = False) -> float:
    """The crossover density of an ``out x in`` linear layer at ``batch`` on ``device``, alone or (``chained``) in a
    chain behind a sparse layer (cached; measured when new)."""
    device = torch.device(device)
    where, key = machine(device), _key(shape, batch, chained)
    if where not in _memo:
        _memo[where] = load().get(where, {})
    known = _memo[where].get(key)
    if known is None:
        with _cache_lock():  # one process measures; the others (a sweep's workers) wait, then read its figure
            known = load().get(where, {}).get(key)
            if known is None:
                known = measure(shape, batch, device, chained=chained)
                _store(where, key, known)
        _memo[where][key] = known
    return float(known["crossover"])


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """An exclusive ``flock`` on the cache's lock file (``sparse_crossover.json.lock``) while the block runs, so
    that processes asking for the same crossover at once measure it once and no one's write drops another's
    entry; without a writable cache folder, no lock (and no cache: :func:`_store` says so)."""
    cache = cache_path()
    path = cache.with_name(cache.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")  # noqa: SIM115 - held for the block
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or by the kernel if the process dies
        yield


def _store(where: str, key: str, entry: dict[str, Any]) -> None:
    data = load()
    data.setdefault(where, {})[key] = entry
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError as e:
        import warnings

        warnings.warn(f"sparse-kernel crossover not cached ({e}); measured again next time", UserWarning,
                      stacklevel=3)


def measure(shape: tuple[int, int], batch: int, device: torch.device, rounds: int = 15,
            chained: bool = False) -> dict[str, Any]:
    """Time one layer step (forward, input and weight gradients) dense and sparse at each of :data:`DENSITIES`
    (``rounds`` alternating rounds, medians); ``chained``: behind a sparse feeding layer (:data:`FEEDER`), the two
    as one chain against the feeder alone then the layer dense."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(shape, generator=g).to(device).requires_grad_()
    bias = torch.randn(shape[0], generator=g).to(device).requires_grad_()
    if chained:
        width, density = FEEDER
        x = torch.randn(batch, width, generator=g).to(device)
        feed_keep = (torch.rand((shape[1], width), generator=g) < density).to(device)
        feed = Structure.of(feed_keep)
        feed_values = torch.randn(feed.nnz, generator=g).to(device).requires_grad_()
        feed_bias = torch.randn(shape[1], generator=g).to(device).requires_grad_()
    else:
        x = torch.randn(batch, shape[1], generator=g).to(device).requires_grad_()

    def contenders(values: torch.Tensor, structure: Structure) -> dict[bool, tuple]:
        """dense? -> (forward, the leaves whose gradients the step computes)."""
        if not chained:
            return {True: (lambda: F.linear(x, weight, bias), (x, weight, bias)),
                    False: (lambda: sparse_linear(x, values, bias, structure), (x, values, bias))}
        return {True: (lambda: F.linear(torch.relu(sparse_linear(x, feed_values, feed_bias, feed)), weight, bias),
                       (feed_values, feed_bias, weight, bias)),
                False: (lambda: sparse_chain(x, [(feed_values, feed_bias), (values, bias)], [feed, structure], [True]),
                        (feed_values, feed_bias, values, bias))}

    dense_times, ratios = [], {}
    for density in DENSITIES:
        keep = (torch.rand(shape, generator=g) < density).to(device)
        structure = Structure.of(keep)
        values = weight.detach().reshape(-1)[structure.flat].clone().requires_grad_()
        steps = contenders(values, structure)
        dense, sparse = paired([lambda f=f, leaves=leaves: torch.autograd.grad(f().sum(), leaves)
                                for f, leaves in (steps[True], steps[False])], rounds, warmup=2,
                               sync=device_sync(device))
        ratios[density] = statistics.median(s.wall / d.wall for s, d in zip(sparse, dense))
        dense_times.extend(d.wall for d in dense)
    cross = 0.0
    for density in sorted(ratios):
        if ratios[density] >= 1.0:
            break
        cross = density
    return {"crossover": cross, "dense_ms": round(1000 * statistics.median(dense_times), 4),
            "sparse_over_dense": {str(d): round(r, 3) for d, r in ratios.items()}, "measured_at": time.time()}


def _shape(text: str) -> tuple[int, int]:
    try:
        out, inp = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a layer shape is OUTxIN (e.g. 300x784), got {text!r}") from None
    if out < 1 or inp < 1:
        raise argparse.ArgumentTypeError(f"a layer shape needs positive sizes, got {text!r}")
    return out, inp


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m prunelab.training.sparse_crossover",
                                 description="Print (or measure) the crossover densities of sparse kernels.")
    ap.add_argument("--measure", nargs="+", type=_shape, metavar="OUTxIN",
                    help="measure these linear layer shapes now, alone and in a chain (and cache them)")
    ap.add_argument("--batch", type=int, default=128, help="batch size of the measurement (default 128)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the measurement (default 1)")
    ap.add_argument("--device", default="cpu", help="device of the measurement (default cpu)")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.threads < 1:
        ap.error("--batch and --threads take positive integers")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for shape in args.measure or ():
        for chained in (False, True):
            where, key = machine(device), _key(shape, args.batch, chained)
            entry = measure(shape, args.batch, device, chained=chained)
            _memo.setdefault(where, {})[key] = entry
            _store(where, key, entry)
    data = load()
    print(f"sparse-kernel crossovers ({cache_path()}): a layer runs sparse under --sparse-kernels auto at densities "
          "up to its crossover")
    if not data:
        print("  none measured yet")
    for where, entries in sorted(data.items()):
        print(where)
        for key, e in sorted(entries.items()):
            ratios = " ".join(f"{float(d):g}:{r:.2f}" for d, r in e["sparse_over_dense"].items())
            print(f"  {key:24} crossover {e['crossover']:<5g} dense step {e['dense_ms']:.3f} ms; "
                  f"sparse/dense time by density {ratios}")


if __name__ == "__main__":
    main()
