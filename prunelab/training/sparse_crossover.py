"""The density below which a masked linear layer trains faster sparse than dense, measured once per machine.

``RuntimeOptions.sparse_kernels = "auto"`` runs a layer sparse (:mod:`prunelab.training.sparse_kernels`) only
where that pays. Whether it pays depends on the layer's shape, the batch size, the device, the thread count
and the CPU's kernels, so the crossover is measured, not modelled: for each (shape, batch) the first time
it is asked for, one training step of the layer alone (forward, input gradient, weight gradient) is timed
dense and sparse at the densities of :data:`DENSITIES`, alternating the two; the crossover is the largest
density at which sparse is faster, as it is at every lower density measured (0 when it never is). The
figures are cached per machine (CPU instruction set or GPU name, torch version, thread count) in
``$XDG_CACHE_HOME/prunelab/sparse_crossover.json`` (``~/.cache/...``), which this prints::

    python -m prunelab.training.sparse_crossover            # the cached crossovers
    python -m prunelab.training.sparse_crossover --measure 300x784 100x300 --batch 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prunelab.io import atomic_write_text
from prunelab.training.sparse_products import KERNELS_VERSION, Structure, sparse_linear

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


def _key(shape: tuple[int, int], batch: int) -> str:
    return f"{shape[0]}x{shape[1]}, batch {batch}"


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


def crossover(shape: tuple[int, int], batch: int, device: torch.device | str = "cpu") -> float:
    """The crossover density of an ``out x in`` linear layer at ``batch`` on ``device`` (cached; measured when new)."""
    device = torch.device(device)
    where, key = machine(device), _key(shape, batch)
    if where not in _memo:
        _memo[where] = load().get(where, {})
    known = _memo[where].get(key)
    if known is None:
        known = measure(shape, batch, device)
        _memo[where][key] = known
        _store(where, key, known)
    return float(known["crossover"])


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


def _layer_step(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, sparse: tuple | None) -> float:
    t = time.perf_counter()
    if sparse is None:
        out = F.linear(x, weight, bias)
        leaves = (x, weight, bias)
    else:
        values, structure = sparse
        out = sparse_linear(x, values, bias, structure)
        leaves = (x, values, bias)
    torch.autograd.grad(out.sum(), leaves)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t


def measure(shape: tuple[int, int], batch: int, device: torch.device, rounds: int = 15) -> dict[str, Any]:
    """Time one layer step dense and sparse at each of :data:`DENSITIES` (``rounds`` alternating rounds, medians)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, shape[1], generator=g).to(device).requires_grad_()
    weight = torch.randn(shape, generator=g).to(device).requires_grad_()
    bias = torch.randn(shape[0], generator=g).to(device).requires_grad_()
    dense_times, ratios = [], {}
    for density in DENSITIES:
        keep = (torch.rand(shape, generator=g) < density).to(device)
        structure = Structure.of(keep)
        values = weight.detach().reshape(-1)[structure.flat].clone().requires_grad_()
        for _ in range(2):  # warm-up
            _layer_step(x, weight, bias, None)
            _layer_step(x, weight, bias, (values, structure))
        per_round = []
        for r in range(rounds):
            pair = [None, (values, structure)] if r % 2 == 0 else [(values, structure), None]
            t = {str(s is None): _layer_step(x, weight, bias, s) for s in pair}
            per_round.append(t["False"] / t["True"])
            dense_times.append(t["True"])
        ratios[density] = statistics.median(per_round)
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
                    help="measure these linear layer shapes now (and cache them)")
    ap.add_argument("--batch", type=int, default=128, help="batch size of the measurement (default 128)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the measurement (default 1)")
    ap.add_argument("--device", default="cpu", help="device of the measurement (default cpu)")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.threads < 1:
        ap.error("--batch and --threads take positive integers")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for shape in args.measure or ():
        where, key = machine(device), _key(shape, args.batch)
        entry = measure(shape, args.batch, device)
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
