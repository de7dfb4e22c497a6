"""Cost of pruning, as ratios to the bare passes it needs, measured side by side in one process.

1. SynFlow, 100 iterations, VGG-16 and ResNet-20 at CIFAR shape, against 100 float64 forward+backward
   passes of the same network at batch 1 (goal, issue 3: at most 1.5x).
2. SNIP and GraSP with 100 examples against the bare passes they need: one forward and backward for
   SNIP; for GraSP one forward, a backward that keeps its graph and the double backward giving Hg
   (goal: at most 1.3x). ``score`` and the full one-shot ``prune`` (score + global remove) are both shown.
3. Choosing a global mask from the scores of ResNet-50 (25.6M parameters, all of them scored; goal
   under 1 s), and the peak extra memory of choosing one from 200M float32 scores (goal: under 2x
   the scores' size). Memory is measured in a child process as the growth of its peak resident set
   while ``remove`` runs (a thread sampling /proc/self/statm every millisecond, and the growth of
   ``ru_maxrss``; the larger is reported): the scores are allocated and filled in place first, so
   the baseline is the scores themselves. tracemalloc would not see torch's allocations.
   The returned mask (bool, a quarter of float32 scores) is counted as extra memory.

Timed blocks alternate between the two sides of each ratio, and the fastest block of each side is
compared (the machine is shared; the minimum is the least disturbed measurement).

    python bench/pruning_speed.py [--reps 2] [--threads N] [--only synflow,data,select,memory] [--device cuda]

``--device``: where the networks, batches and scores live (timings wait for the device to finish);
the memory measurement is of the CPU's resident set and always runs there.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F

import prunelab
from prunelab import models
from prunelab.training.devices import device_arg

DEVICE = torch.device("cpu")  # --device


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def alternate(fns: dict, reps: int) -> dict[str, float]:
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            best[k] = min(best[k], timed(fn))
    return best


def prunable_weights(net):
    names = set(prunelab.prunable_parameters(net))
    return [p for n, p in net.named_parameters() if n in names]


def bench_synflow(name: str, sparsity: float, reps: int) -> None:
    model = models.create(name, num_classes=10, input_shape=(3, 32, 32), seed=0).to(DEVICE)
    net = copy.deepcopy(model).double().eval()
    ws = prunable_weights(net)
    x = torch.ones(1, 3, 32, 32, dtype=torch.float64, device=DEVICE)

    def bare():
        for _ in range(100):
            torch.autograd.grad(net(x).sum(), ws)

    def synflow():
        prunelab.prune(model, "synflow", sparsity, input_shape=(3, 32, 32), iterations=100)

    bare()  # warm-up
    t = alternate({"bare": bare, "synflow": synflow}, reps)
    print(
        f"synflow  {name:9s} sparsity {sparsity:<6g} 100 its {t['synflow']:7.2f} s | 100 f64 fwd+bwd "
        f"{t['bare']:7.2f} s | ratio {t['synflow'] / t['bare']:.2f} (goal <= 1.5)",
        flush=True,
    )


def bench_data(name: str, reps: int, sparsity: float = 0.9) -> None:
    model = models.create(name, num_classes=10, input_shape=(3, 32, 32), seed=0).to(DEVICE)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, 32, 32, generator=g).to(DEVICE)
    y = (torch.arange(100) % 10).to(DEVICE)  # ten examples per class, as Frankle et al. 2021, App. B.2 / C.2 use
    net = copy.deepcopy(model).train()
    ws = prunable_weights(net)

    def bare_snip():
        torch.autograd.grad(F.cross_entropy(net(x), y), ws)

    def bare_grasp():
        gs = torch.autograd.grad(F.cross_entropy(net(x) / 200.0, y), ws, create_graph=True)
        torch.autograd.grad(sum((g.detach() * g).sum() for g in gs), ws)

    bare = {"snip": bare_snip, "grasp": bare_grasp}
    for method in ("snip", "grasp"):
        bare[method]()  # warm-up
        t = alternate(
            {
                "bare": bare[method],
                "score": lambda m=method: prunelab.score(model, m, batch=(x, y)),
                "prune": lambda m=method: prunelab.prune(model, m, sparsity, batch=(x, y)),
            },
            reps,
        )
        print(
            f"{method:8s} {name:9s} 100 examples: bare {t['bare']:6.2f} s | score {t['score']:6.2f} s "
            f"(ratio {t['score'] / t['bare']:.2f}) | prune {t['prune']:6.2f} s (ratio "
            f"{t['prune'] / t['bare']:.2f}) (goal <= 1.3)",
            flush=True,
        )


def resnet50_scores() -> dict[str, torch.Tensor]:
    import torchvision

    with torch.device("meta"):
        net = torchvision.models.resnet50()
    g = torch.Generator().manual_seed(0)
    return {n: torch.rand(p.shape, generator=g).to(DEVICE) for n, p in net.named_parameters()}


def bench_select(reps: int) -> None:
    scores = resnet50_scores()
    n = sum(s.numel() for s in scores.values())
    mask = prunelab.remove(scores, sparsity=0.5)
    for label, kwargs in [
        ("dense mask, sparsity 0.9", {"sparsity": 0.9}),
        ("dense mask, sparsity 0.99, highest", {"sparsity": 0.99, "prune_highest": True}),
        ("half-pruned mask, sparsity 0.9", {"sparsity": 0.9, "mask": mask}),
        ("scope=layer, sparsity 0.9", {"sparsity": 0.9, "scope": "layer"}),
    ]:
        t = alternate({"remove": lambda kw=kwargs: prunelab.remove(scores, **kw)}, reps + 1)["remove"]
        print(f"select   resnet50-sized scores ({n / 1e6:.1f}M), {label:36s} {t:6.3f} s (goal < 1 s)", flush=True)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_child(n_millions: int) -> None:
    per = 25_000_000
    count = n_millions * 1_000_000 // per
    scores = {}
    for i in range(count):
        t = torch.empty(per)
        t.uniform_(generator=torch.Generator().manual_seed(i))  # in place: no temporary copy
        scores[f"layer{i}.weight"] = t
    # Two views of the peak: a thread sampling the resident set every millisecond, and the growth
    # of the kernel's high-water mark (zero if an earlier transient peak was higher).
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    thread = threading.Thread(target=sample)
    thread.start()
    t0 = time.perf_counter()
    mask = prunelab.remove(scores, sparsity=0.9)
    elapsed = time.perf_counter() - t0
    done.set()
    thread.join()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = sum(s.numel() * s.element_size() for s in scores.values())
    extra = max(peak[0] - base, after - before)
    print(
        json.dumps(
            {
                "scores_bytes": size,
                "peak_extra_bytes": extra,
                "sampled": peak[0] - base,
                "maxrss": after - before,
                "seconds": elapsed,
                "kept": mask.num_kept,
                "total": mask.num_total,
            }
        )
    )


def bench_memory(n_millions: int) -> None:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n_millions)], capture_output=True, text=True, check=True
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"memory   {r['total'] / 1e6:.0f}M float32 scores ({r['scores_bytes'] / 2**20:.0f} MiB): peak extra "
        f"{r['peak_extra_bytes'] / 2**20:.0f} MiB = {r['peak_extra_bytes'] / r['scores_bytes']:.2f}x the scores "
        f"(goal < 2x; the bool mask alone is 0.25x), remove took {r['seconds']:.2f} s",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2, help="alternating timed blocks per side")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--only", default="synflow,data,select,memory")
    ap.add_argument("--sparsities", default="0.9,0.99", help="SynFlow target sparsities")
    ap.add_argument("--memory-millions", type=int, default=200)
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child)
        return
    only = set(args.only.split(","))
    load = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, device {DEVICE}, {torch.get_num_threads()} threads, "
        f"load average {load:.1f} on {os.cpu_count()} cores"
    )
    if load > (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        print("note: the machine is busy; multi-threaded timings swing widely, --threads 1 gives steadier ratios")
    if "synflow" in only:
        for name in ("resnet20", "vgg16"):
            for s in (float(v) for v in args.sparsities.split(",")):
                bench_synflow(name, s, args.reps)
    if "data" in only:
        for name in ("resnet20", "vgg16"):
            bench_data(name, args.reps)
    if "select" in only:
        bench_select(args.reps)
    if "memory" in only:
        bench_memory(args.memory_millions)


if __name__ == "__main__":
    main()
