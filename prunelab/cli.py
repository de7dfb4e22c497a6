"""The ``prunelab`` command. User errors print one line on stderr and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from prunelab.experiments.hparams import add_dataclass_flags, dataclass_from_flags, run_hash
from prunelab.training.settings import TrainSettings

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake of the user's, reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise UserError(f"{self.prog}: {message}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="dataset folder (else $PRUNELAB_DATA, else the user cache)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="mixed precision")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunelab", description="Neural-network pruning research, at initialization and after.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a dense network (Appendix A.3 recipe unless overridden)")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, default=0, help="initialization and data-order seed of the replicate")
    p.add_argument("--root", default="runs", help="run store folder (default ./runs)")
    _add_common(p)
    add_dataclass_flags(p, TrainSettings, group="training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="LeNet-300-100 on Fashion-MNIST, dense vs 90%% random sparse, a few epochs")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sparsity", type=float, default=0.9)
    _add_common(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, PermissionError) as e:
        print(f"prunelab: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("prunelab: interrupted; finished work is kept and an unfinished run resumes when rerun", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    return " ".join(text.split())


# ---- commands -----------------------------------------------------------------------------------

def _dataset_and_model(args, seed: int):
    from prunelab import data, models

    ds = data.load(args.dataset, data_root=args.data_root)
    model = models.create(args.model, num_classes=ds.num_classes, input_shape=ds.input_shape, seed=seed)
    return ds, model


def cmd_train(args) -> int:
    from prunelab.io import atomic_write_json
    from prunelab.training import recipe, train

    settings = dataclass_from_flags(TrainSettings, args, base=recipe(args.model, args.dataset))
    ds, model = _dataset_and_model(args, args.seed)
    hparams = {"model": args.model, "dataset": args.dataset, "seed": args.seed, "training": settings}
    run_dir = Path(args.root) / run_hash("train", **hparams)
    result_path = run_dir / "result.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        print(f"already done: {run_dir}")
        _print_table([["run", "test accuracy", "wall time (s)"], [run_dir.name, f"{result['test_accuracy']:.4f}",
                                                                   f"{result['wall_time']:.1f}"]])
        return 0
    atomic_write_json(run_dir / "hparams.json", {**hparams, "training": settings.__dict__, "kind": "train"})
    t0 = time.time()
    res = train(
        model, ds, settings, seed=args.seed, device=args.device, amp=args.amp, progress=args.progress,
        checkpoint_dir=run_dir / "checkpoints", metrics_path=run_dir / "metrics.jsonl",
    )
    result = {
        "status": "done", "test_accuracy": res.test_accuracy, "test_loss": res.test_loss,
        "steps": res.step, "wall_time": res.wall_time, "finished_at": time.time(), "started_at": t0,
    }
    atomic_write_json(result_path, result)
    _print_table([["run", "test accuracy", "test loss", "wall time (s)"],
                  [run_dir.name, f"{res.test_accuracy:.4f}", f"{res.test_loss:.4f}", f"{res.wall_time:.1f}"]])
    return 0


def cmd_demo(args) -> int:
    import prunelab
    from prunelab import data, models
    from prunelab.training import TrainSettings, train

    if not 0 <= args.sparsity < 1:
        raise UserError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    ds = data.load("fashion_mnist", data_root=args.data_root)
    settings = TrainSettings(train=f"{args.epochs}ep")
    rows = [["network", "mask", "weights kept", "sparsity", "test accuracy", "time (s)"]]
    for label, sparsity in (("dense", 0.0), (f"random {args.sparsity:.0%}", args.sparsity)):
        model = models.create("lenet_300_100", num_classes=ds.num_classes, input_shape=ds.input_shape, seed=0)
        mask = prunelab.Mask.ones(model) if sparsity == 0 else prunelab.prune(model, "random", sparsity, seed=0)
        print(f"training LeNet-300-100 on Fashion-MNIST, {label}, {args.epochs} epochs", file=sys.stderr)
        res = train(model, ds, settings, seed=0, mask=mask, device=args.device, amp=args.amp, progress=args.progress)
        rows.append(["lenet_300_100", label, f"{mask.num_kept:,} / {mask.num_total:,}", f"{mask.sparsity:.4f}",
                     f"{res.test_accuracy:.4f}", f"{res.wall_time:.1f}"])
    _print_table(rows)
    return 0


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    sys.exit(main())
