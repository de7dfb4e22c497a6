"""``prunelab export-model RUN``: a run's trained pruned network, compacted for inference (:mod:`prunelab.compact`).

Reads the run's hyperparameters, mask and last checkpoint, rebuilds the network, removes its dead channels, gives
each linear layer its fastest format, checks that the outputs equal the masked network's, writes the export, and
prints the latency of the dense network and of the export at batch 1 and 128 (medians of alternating calls in
this process, with quartiles). Every check that a user can fail (run, files, device, dtype, formats, output path)
is made before any work, and nothing is written when one fails. The module imports no torch: ``--help`` stays
light (``tests/test_cli_startup.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DTYPES = ("float32", "float64", "bfloat16", "float16")
FORMAT_NAMES = ("dense", "csr", "2:4")  # prunelab.compact.LAYER_FORMATS, without importing torch (a test compares)


def register(subparsers) -> None:
    """Add ``export-model`` to ``subparsers``."""
    from prunelab.options import add_root_flag

    p = subparsers.add_parser(
        "export-model", help="a run's trained pruned network, compacted for inference (dead channels removed, "
                             "sparse linear layers in CSR or 2:4), with its latency against the dense network",
        description="Writes the trained pruned network of RUN in the form that runs fastest for inference and prints "
                    "the latency of the dense network and of the export at each --batch-sizes. Outputs are checked to "
                    "equal the masked network's to float rounding; nothing is written otherwise.")
    p.add_argument("run", help="run id, unique prefix, or run folder (a finished run with a mask)")
    add_root_flag(p)
    p.add_argument("--out", default=None, metavar="FILE", help="export file (default: ./<run id>.compact.pt)")
    p.add_argument("--device", default="cpu", help="device the export is tuned and timed on: cpu, cuda, cuda:1, auto "
                   "(default: cpu); 2:4 layers need CUDA and --dtype float16 or bfloat16")
    p.add_argument("--dtype", default="float32", help=f"one of: {', '.join(DTYPES)} (default: float32)")
    p.add_argument("--formats", nargs="+", default=None, metavar="FORMAT",
                   help=f"linear-layer formats to choose from, the fastest of them per layer: {', '.join(FORMAT_NAMES)}"
                        " (default: all)")
    p.add_argument("--tune-batch", type=int, default=128, metavar="INT",
                   help="batch size each layer's formats are timed at (default: 128)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 128], metavar="INT",
                   help="batch sizes of the latency table (default: 1 128)")
    p.add_argument("--repeats", type=int, default=30, metavar="INT", help="timed calls per measurement (default: 30)")
    p.add_argument("--threads", type=int, default=None, metavar="INT",
                   help="torch CPU threads while tuning and timing (default: the run rule, 1 on the CPU)")
    p.add_argument("--no-channels", dest="channels", action="store_false",
                   help="keep every channel (only change the formats of linear layers)")
    p.set_defaults(func=cmd_export_model)


def _check_args(args) -> Path:
    from prunelab.validate import check_int, check_name

    check_name("dtype", args.dtype, DTYPES)
    for f in args.formats or ():
        check_name("layer format", f, FORMAT_NAMES)
    check_int(args.tune_batch, "--tune-batch", 1, "the batch size formats are timed at")
    check_int(args.repeats, "--repeats", 1, "timed calls per measurement")
    if args.threads is not None:
        check_int(args.threads, "--threads", 1, "torch CPU threads")
    for b in args.batch_sizes:
        check_int(b, "--batch-sizes", 1, "a batch size")
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; give the export's file name, e.g. {out / 'model.compact.pt'}")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--out {out}: folder {out.parent} does not exist")
    return out


def load_run(ref: str, root: str) -> dict[str, Any]:
    """``{"run_id", "hparams", "model", "mask", "input_shape"}`` of a finished run: its network rebuilt from the
    hyperparameters with the weights of its last checkpoint, and its mask (not applied). One-line errors for a
    run that is dense, unfinished, or missing its mask or checkpoint."""
    from prunelab import data
    from prunelab.experiments import runfiles
    from prunelab.experiments.hparams import ModelHparams
    from prunelab.experiments.store import open_run
    from prunelab.masks import Mask
    from prunelab.training.checkpoints import CheckpointFolder, load_checkpoint

    store, run_id = open_run(ref, root)
    folder, hp = store.folder(run_id), store.hparams(run_id)
    result = store.result(run_id)
    if hp.get("kind") == "dense":
        raise ValueError(f"run {run_id} is a dense run: it has no mask to compact; give a run of a sparse protocol")
    if result is None or result.get("status") != "done":
        state = "unfinished" if result is None else result.get("status")
        raise ValueError(f"run {run_id} is {state}: export-model needs a finished run")
    if not (folder / runfiles.MASK).is_file():
        raise FileNotFoundError(f"run {run_id} has no {runfiles.MASK}: {folder}")
    latest = CheckpointFolder(folder / runfiles.CHECKPOINTS).latest_path
    if not latest.is_file():
        raise FileNotFoundError(f"run {run_id} has no trained weights ({latest} is missing)")
    info = data.info(hp["dataset"]["dataset"])
    model = ModelHparams(**hp["model"]).build(info["num_classes"], info["input_shape"])  # weights: the checkpoint's
    state = load_checkpoint(latest)
    model.load_state_dict(state["model"])
    mask = Mask.load(folder / runfiles.MASK)
    mask.check_compatible(model)
    return {"run_id": run_id, "hparams": hp, "model": model, "mask": mask, "input_shape": tuple(info["input_shape"])}


def cmd_export_model(args) -> int:
    out = _check_args(args)
    import torch

    from prunelab.training.devices import check_device, resolve_device

    device = resolve_device(check_device(args.device))

    from prunelab.compact import compact, latency, save_compact
    from prunelab.training.runtime import default_threads, torch_threads

    dtype = getattr(torch, args.dtype)
    run = load_run(args.run, args.root)
    out = out or Path(f"{run['run_id']}.compact.pt")
    threads = args.threads or default_threads(device)
    with torch_threads(threads):
        net, report = compact(run["model"], run["mask"], run["input_shape"], device=device, dtype=dtype,
                              formats=args.formats, tune_batch=args.tune_batch, repeats=args.repeats,
                              remove_channels=args.channels)
        save_compact(out, net, report, run["input_shape"], source={"run_id": run["run_id"], "dtype": args.dtype})
        dense = run["model"].to(device, dtype).eval().requires_grad_(False)
        times = latency({"dense": dense, "export": net}, run["input_shape"], args.batch_sizes, args.repeats, device,
                        dtype)
    _print_report(run, report, times, out, f"{device}, {threads} thread{'s' * (threads > 1)}", args.dtype)
    return 0


def _print_report(run, report, times, out, device, dtype) -> None:
    from prunelab.listing import print_table

    print(f"run {run['run_id']}: {run['hparams']['model']['model']}, mask sparsity {run['mask'].sparsity:.4f}")
    if report.channels:
        removed = sum(before - after for before, after in report.channels.values())
        print(f"channels removed: {removed} in {len(report.channels)} layers ("
              + ", ".join(f"{n} {b}->{a}" for n, (b, a) in list(report.channels.items())[:6])
              + (" ..." if len(report.channels) > 6 else "") + ")")
    else:
        print("channels removed: none (no channel that every reader ignores)")
    rows = [["linear layer", "shape", "density", "format", f"timed at batch {report.tune_batch}", "not taken"]]
    for c in report.layers:
        timed = ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in c.seconds.items()) or "-"
        refused = "; ".join(f"{k}: {v}" for k, v in c.refused.items()) or "-"
        rows.append([c.name, "x".join(map(str, c.shape)), f"{c.density:.4f}", c.format, timed,
                     refused if len(refused) <= 70 else refused[:67] + "..."])
    if len(rows) > 1:
        print_table(rows)
    print(f"parameters: {report.params_before:,} dense -> {report.params_after:,} stored ({report.nonzeros:,} nonzero);"
          f" largest output difference from the masked network {report.max_abs_diff:.2g} "
          f"(largest output {report.output_scale:.3g})")
    rows = [["batch", "dense (ms)", "export (ms)", "speed-up"]]
    for b, by in times.items():
        d, e = by["dense"], by["export"]
        rows.append([str(b), f"{d.median * 1e3:.3f} [{d.q1 * 1e3:.3f}, {d.q3 * 1e3:.3f}]",
                     f"{e.median * 1e3:.3f} [{e.q1 * 1e3:.3f}, {e.q3 * 1e3:.3f}]", f"{d.median / e.median:.2f}x"])
    print(f"latency on {device} in {dtype} (median [quartiles] of alternating calls):")
    print_table(rows)
    print(f"wrote {out} (load with prunelab.compact.load_compact)")

