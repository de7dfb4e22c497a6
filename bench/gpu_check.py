"""Check prunelab on a GPU in a few minutes (``--cpu``: the same checks on the CPU, tiny, in seconds).

    bash bench/gpu_check.sh            # one modern GPU: under 8 minutes
    python bench/gpu_check.py --cpu    # what CI runs (tests/test_gpu_check.py)

Checks, each a row of the summary table printed at the end (the table that goes into the README):
the CUDA tests of the suite; masked training with every optimizer, with and without AMP (pruned weights
stay exactly 0); every criterion scored on the CPU and on the device from the same float64 weights;
host syncs per training step (``torch.cuda.set_sync_debug_mode`` on CUDA, ``prunelab.testing.DeviceGuard``
on the CPU); masked vs dense training-step time of ResNet-20 at CIFAR shape; SynFlow (100 iterations) on
VGG-16; a 1-epoch run on a synthetic CIFAR-10 folder through the ``prunelab`` command; a 2-process DDP
scoring run that must equal the single-process score; 2:4 layers through ``torch.sparse.to_sparse_semi_structured``
against dense ones at batch 1 and 128. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import prunelab  # noqa: E402
from prunelab import models  # noqa: E402
from prunelab.testing import DeviceGuard  # noqa: E402
from prunelab.training import TrainSettings, train  # noqa: E402

OPTIMIZERS = ("sgd", "adam", "adamw")


class Sizes:
    """Workload sizes: the real ones on a GPU, tiny ones with ``--cpu``."""

    def __init__(self, cpu: bool):
        self.cpu = cpu
        self.image = 8 if cpu else 32
        self.batch = 8 if cpu else 128
        self.timed_steps = 3 if cpu else 50
        self.synflow_iterations = 2 if cpu else 100
        self.cifar_per_file = 20 if cpu else 2000  # 5 files: 100 or 10,000 training images


def _data(sizes, n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, sizes.image, sizes.image, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.to(device), y.to(device)


def check_cuda_tests(sizes, device):
    if device.type != "cuda":
        return "skipped", "no CUDA device"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    return ("ok" if proc.returncode == 0 else "FAIL"), last


def check_masked_training(sizes, device):
    from conftest import make_learnable_images

    from prunelab import data

    ds = data.from_tensors(make_learnable_images(64, 4, 8, seed=0), make_learnable_images(32, 4, 8, seed=1),
                           augment="shift")
    results = []
    for opt in OPTIMIZERS:
        for amp in (False, True):
            model = models.create("resnet20", num_classes=4, input_shape=(1, 8, 8), seed=0)
            mask = prunelab.prune(model, "random", 0.8, seed=0)
            settings = TrainSettings(train="5it", batch_size=16, lr=0.01, momentum=0.9, optimizer=opt,
                                     weight_decay=1e-4)
            train(model, ds, settings, mask=mask, device=device, amp=amp)
            params = dict(model.named_parameters())
            revived = sum(int((params[n].detach().cpu()[~keep] != 0).sum()) for n, keep in mask.items())
            results.append((f"{opt}{'+amp' if amp else ''}", revived))
    bad = [name for name, revived in results if revived]
    detail = ", ".join(f"{n}: {r} revived" for n, r in results if r) or f"{len(results)} runs, 0 pruned weights revived"
    return ("FAIL" if bad else "ok"), detail


def check_criteria_agree(sizes, device):
    x, y = _data(sizes, 20, "cpu")
    worst, name_of_worst, refused = 0.0, "", []
    for method, spec in prunelab.methods().items():
        model = models.create("resnet20", num_classes=10, input_shape=(3, sizes.image, sizes.image), seed=0).double()
        kwargs = dict(batch=(x.double(), y), input_shape=(3, sizes.image, sizes.image), seed=0)
        if "sparsity" in spec.options:  # a criterion that sets layer budgets from the target (NPB)
            kwargs["sparsity"] = 0.9
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                on_cpu = prunelab.score(model, method, **kwargs)
            except ValueError as e:  # a criterion that takes chains of layers only (PHEW) refuses a ResNet: named
                if "residual" not in str(e) and "chain" not in str(e):
                    raise
                refused.append(method)
                continue
            on_dev = prunelab.score(model.to(device), method, **kwargs)
        for n, s in on_cpu.items():
            scale = float(s.abs().max()) or 1.0
            err = float((on_dev[n].detach().cpu() - s).abs().max()) / scale
            if err > worst:
                worst, name_of_worst = err, f"{method} {n}"
    ok = worst <= 1e-6
    return ("ok" if ok else "FAIL"), f"{len(prunelab.methods()) - len(refused)} criteria, largest relative " \
        f"difference {worst:.1e}{' (' + name_of_worst + ')' if worst else ''}" \
        + (f"; {', '.join(refused)} refuse ResNet-20" if refused else "")


def check_host_syncs(sizes, device):
    from conftest import make_learnable_images

    from prunelab import data

    ds = data.from_tensors(make_learnable_images(64, 4, 8, seed=0), make_learnable_images(32, 4, 8, seed=1),
                           augment="shift")

    def run(steps, dev):
        model = models.create("resnet20", num_classes=4, input_shape=(1, 8, 8), seed=0)
        mask = prunelab.prune(model, "random", 0.5, seed=0)
        train(model, ds, TrainSettings(train=f"{steps}it", batch_size=16, lr=0.01), mask=mask, device=dev,
              evaluate_at_end=False)

    if device.type == "cuda":
        counts = []
        for steps in (2, 2, 6):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    run(steps, device)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            counts.append(sum("synchroniz" in str(w.message) for w in caught))
        per_step = (counts[2] - counts[1]) / 4
        return "ok", f"{per_step:g} per step (torch.cuda.set_sync_debug_mode)"
    from prunelab.testing import host_syncs_per_step

    per_step, guard = host_syncs_per_step(lambda n: run(n, DeviceGuard.device), 2, 6)
    status = "ok" if not guard.mismatches else "FAIL"
    return status, f"{per_step:g} per step, {len(guard.mismatches)} device mismatches (DeviceGuard stand-in)"


def _step_time(model, x, y, steps, device):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def check_masked_step_time(sizes, device):
    x, y = _data(sizes, sizes.batch, device)
    times = {}
    for label in ("dense", "masked"):
        model = models.create("resnet20", num_classes=10, input_shape=(3, sizes.image, sizes.image), seed=0)
        if label == "masked":
            prunelab.prune(model, "random", 0.9, seed=0).apply(model)
        times[label] = _step_time(model.to(device), x, y, sizes.timed_steps, device)
    ratio = times["masked"] / times["dense"]
    return "ok", (f"ResNet-20, batch {sizes.batch} at {sizes.image}x{sizes.image}: dense {times['dense'] * 1e3:.1f} ms,"
                  f" 90% masked {times['masked'] * 1e3:.1f} ms ({ratio:.3f}x)")


def check_synflow_vgg16(sizes, device):
    side = max(sizes.image, 16)  # VGG-16's four poolings need 16x16 at least
    model = models.create("vgg16", num_classes=10, input_shape=(3, side, side), seed=0).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    mask = prunelab.prune(model, "synflow", 0.98, input_shape=(3, side, side),
                          iterations=sizes.synflow_iterations)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    ok = abs(mask.sparsity - 0.98) < 1e-3
    return ("ok" if ok else "FAIL"), (f"{sizes.synflow_iterations} iterations to sparsity {mask.sparsity:.4f} "
                                      f"in {seconds:.1f} s")


def check_cli_run(sizes, device):
    """``prunelab run`` in this process (``cli.main``), on CIFAR-10 files in torchvision's format whose
    checksums torchvision is told (they are not the real CIFAR-10's), exactly as the data tests do."""
    import contextlib
    import io

    import pytest
    import torchvision
    from test_data import write_cifar

    from prunelab import cli

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        written = write_cifar(root / "data", "cifar10", n_per_file=sizes.cifar_per_file, n_test=sizes.cifar_per_file)
        md5, cls = written["md5"], torchvision.datasets.CIFAR10
        argv = ["run", "--model", "resnet20", "--dataset", "cifar10", "--method", "snip", "--sparsity", "0.9",
                "--train", "1ep", "--batch-size", str(sizes.batch), "--data-root", str(root / "data"), "--root",
                str(root / "runs"), "--device", str(device), "--score-batch-size", "50", "--milestones"]
        out, err = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            mp.setattr(cls, "train_list", [[f, md5[f]] for f in written["train_files"]])
            mp.setattr(cls, "test_list", [[written["test_file"], md5[written["test_file"]]]])
            mp.setattr(cls, "meta", {**cls.meta, "md5": md5[written["meta"]]})
            status = cli.main(argv)
        seconds = time.perf_counter() - t0
    if status != 0:
        return "FAIL", (err.getvalue().strip().splitlines() or ["no output"])[-1][:150]
    images = 5 * sizes.cifar_per_file
    return "ok", f"prunelab run resnet20/cifar10 snip 90%, 1 epoch of {images} images: {seconds:.0f} s"


def check_ddp(sizes, device):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return "skipped", "torch.distributed with gloo is not available"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
               "2", "tests/ddp_score_worker.py", tmp]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            return "FAIL", (proc.stderr.strip().splitlines() or ["no output"])[-1][:150]
        from test_score_batching import DDP_CASES, ddp_case

        ranks = [torch.load(Path(tmp) / f"rank{r}.pt") for r in (0, 1)]
        worst = 0.0
        for key in DDP_CASES:
            model, batch, method, options = ddp_case(*key)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                single = prunelab.score(model, method, batch=batch, **options)
            for n, s in single.items():
                scale = float(s.abs().max()) or 1.0
                worst = max(worst, max(float((r[key][n] - s).abs().max()) / scale for r in ranks))
    ok = worst <= 1e-12
    return ("ok" if ok else "FAIL"), f"2 ranks (gloo), {len(DDP_CASES)} scores, largest relative difference {worst:.1e}"


def check_two_four_layers(sizes, device):
    """2:4 (N:M) layers from ``prune(..., pattern="2:4")`` exported through :mod:`prunelab.compact`: on CUDA they run
    through ``torch.sparse.to_sparse_semi_structured`` in float16, timed against the dense layers at batch 1 and 128
    (medians of alternating calls); on the CPU the same path runs with the 2:4 format refused for want of CUDA.
    The export's outputs must equal the masked network's (compact checks, float16 rounding on CUDA)."""
    from torch import nn

    from prunelab.compact import compact, latency

    cuda = device.type == "cuda"
    width = 4096 if cuda else 256
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, width))
    mask = prunelab.prune(model, "magnitude", 0.5, pattern="2:4")
    dtype = torch.float16 if cuda else torch.float32
    net, report = compact(model, mask, (width,), device=device, dtype=dtype, formats=["2:4"] if cuda else
                          ["dense", "2:4"], repeats=sizes.timed_steps)
    if cuda:
        ok = all(f == "2:4" for f in report.formats().values())
        how = "semi-structured" if ok else f"formats {report.formats()}"
    else:
        ok = all("CUDA" in c.refused.get("2:4", "") for c in report.layers)
        how = "2:4 refused without CUDA (dense timed)"
    dense = model.to(device, dtype).eval().requires_grad_(False)
    times = latency({"dense": dense, "2:4": net}, (width,), (1, 128), sizes.timed_steps, device, dtype)
    timing = "; ".join(f"batch {b}: dense {t['dense'].median * 1e3:.3f} ms, 2:4 {t['2:4'].median * 1e3:.3f} ms "
                       f"({t['dense'].median / t['2:4'].median:.2f}x)" for b, t in times.items())
    return ("ok" if ok else "FAIL"), (f"3 x Linear({width}, {width}) {str(dtype)[6:]}, {how}, max output difference "
                                      f"{report.max_abs_diff:.1e}: {timing}")


CHECKS = {
    "CUDA tests": check_cuda_tests,
    "masked training x optimizer x AMP": check_masked_training,
    "criteria CPU vs device": check_criteria_agree,
    "host syncs per step": check_host_syncs,
    "masked vs dense step": check_masked_step_time,
    "SynFlow on VGG-16": check_synflow_vgg16,
    "1-epoch CIFAR-10 run via CLI": check_cli_run,
    "2-process DDP scoring": check_ddp,
    "2:4 layers (semi-structured)": check_two_four_layers,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run every check on the CPU with tiny sizes")
    parser.add_argument("--only", nargs="*", default=None, help=f"run only these checks (of: {', '.join(CHECKS)})")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --cpu for the CPU form", file=sys.stderr)
        return 2
    unknown = sorted(set(args.only or []) - set(CHECKS))
    if unknown:
        print(f"gpu_check: unknown check(s) {unknown}; the checks are: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(1 if args.cpu else torch.get_num_threads())
    device = torch.device("cpu" if args.cpu else "cuda")
    sizes = Sizes(args.cpu)
    rows = []
    start = time.perf_counter()
    for name, check in CHECKS.items():
        if args.only is not None and name not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            status, detail = check(sizes, device)
        except Exception as e:  # a check that crashes is a failed check, and the others still run
            traceback.print_exc()
            status, detail = "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        rows.append((name, status, f"{time.perf_counter() - t0:.1f}", detail))
        print(f"[{status}] {name}: {detail}", file=sys.stderr, flush=True)
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (tiny sizes)"
    print(f"\n### gpu_check on {where}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s\n")
    print("| check | status | s | result |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 1 if any(status == "FAIL" for _, status, _, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
