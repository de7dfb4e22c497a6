"""The ``prunelab`` command. User errors print one line on stderr and exit with status 2.

Light commands (``--version``, ``--help`` of every command, ``list``, ``ls``, ``show``, ``export``) never import
torch, which takes seconds: training, runs and registries are imported inside the commands that use them, the
flags of a command are built only when that command is the one given (:func:`build_parser`), and names and
descriptions of registries come from :mod:`prunelab.catalog`. ``tests/test_cli_startup.py`` keeps it so.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import signal
import sys
import threading
import warnings

from rich_argparse import RichHelpFormatter

from prunelab import catalog
from prunelab.demo import cmd_demo
from prunelab.experiments.hparams import (
    DataHparams,
    ModelHparams,
    add_dataclass_flags,
    add_switch_with_mode,
    config_toml,
    dataclass_from_flags,
    load_toml,
)
from prunelab.experiments.protocols import PROTOCOLS, Protocol
from prunelab.listing import LISTS, cmd_list, print_table
from prunelab.options import add_root_flag

EXIT_USER_ERROR = 2
EXIT_SKIPPED = 1  # a listing left out runs with damaged files (each named in a warning line)
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # 128 + the signal number, as shells report them


class UserError(Exception):
    """A mistake of the user's, reported as one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, ``timeout`` and ``kill`` send), raised where the program is, so that it is
    handled exactly as Ctrl-C: temporary files removed, locks released, the session's end recorded."""


def _raise_terminated(signum, frame):
    raise Terminated()


class _HelpFormatter(RichHelpFormatter):
    """rich-argparse's layout and colours (none when not on a terminal); help text taken literally, so that
    "[model]" is shown and not read as a style tag; group titles as written."""

    help_markup = False
    text_markup = False
    group_name_formatter = staticmethod(lambda title: title[:1].upper() + title[1:])


class _Parser(argparse.ArgumentParser):
    """Help laid out by :class:`_HelpFormatter`; errors as one line. Flags added by :meth:`add_flags` are built
    when the parser first parses or shows its help: a command's flags read the training settings and run-time
    options (modules that import torch), which no other command may pay for."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self._pending: list = []

    def add_flags(self, build) -> None:
        """``build(self)`` when this parser is first used (see :meth:`build_flags`)."""
        self._pending.append(build)

    def build_flags(self) -> _Parser:
        """Add the pending flags now."""
        while self._pending:
            self._pending.pop(0)(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        self.build_flags()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.build_flags()
        return super().format_usage()

    def format_help(self) -> str:
        self.build_flags()
        return super().format_help()

    def error(self, message: str):  # one line, not usage + message
        raise UserError(f"{self.prog}: {message}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="dataset folder (default: $PRUNELAB_DATA, else ~/.cache/prunelab/data)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars on a terminal, a line every few seconds otherwise (default: on)")
    from prunelab.training.runtime import RuntimeOptions

    add_dataclass_flags(p, RuntimeOptions, group="run-time options (not part of a run's identity; docs/guide.md §7)")


def _runtime(args):
    from prunelab.training.runtime import RuntimeOptions

    return dataclass_from_flags(RuntimeOptions, args)


def _add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", action="append", default=[], metavar="TRACKER",
                   help=f"also stream each run to an experiment tracker; one of: {', '.join(catalog.names('loggers'))} "
                        "(repeatable; run-time only: run ids do not change)")


def _add_experiment(p: argparse.ArgumentParser, protocol: Protocol) -> None:
    p.add_argument("--seed", type=int, default=None, metavar="INT",
                   help="replicate seed: initialization and data order (default: 0)")
    add_root_flag(p)
    sections = " ".join(f"[{s}]" for s in ("model", "dataset", "training", protocol.section) if s)
    p.add_argument("--config", default=None, metavar="TOML",
                   help=f"TOML file with {sections} and seed; flags override it, it overrides the recipe "
                        "(--print-config writes one)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings and run id as a TOML config, and exit without running or "
                        "writing anything")
    p.add_argument("--distributed", action="store_true",
                   help="one run on several GPUs/machines with DDP; launch with torchrun")
    from prunelab.training.settings import TrainSettings, recipe_default

    _add_common(p)
    _add_logging(p)
    add_dataclass_flags(p, ModelHparams, group="model", required=["model"])
    add_dataclass_flags(p, DataHparams, group="dataset", required=["dataset"])
    add_dataclass_flags(p, TrainSettings, group="training (default: the recipe of the model, Frankle et al. 2021, "
                        "App. A.3)", defaults=recipe_default)
    if protocol.hparams is not None:
        add_dataclass_flags(p, protocol.hparams, group=protocol.section)


def _executors() -> list[str]:
    return catalog.names("executors")


def _add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec (TOML); see repro/ for examples")
    add_root_flag(p)
    p.add_argument("--executor", default="local",
                   help=f"where jobs run: local worker processes or a Slurm cluster through submitit; one of: "
                        f"{', '.join(_executors())} (default: local)")
    p.add_argument("--workers", type=int, default=None, metavar="INT",
                   help="local worker processes (default: one per GPU, each on its own; without GPUs one per core)")
    p.add_argument("--gpus-per-node", type=int, default=None, metavar="INT",
                   help="GPUs each Slurm job asks for (default: the spec's [slurm] gpus_per_node, else 0)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    p.add_argument("--max-jobs", type=int, default=None, metavar="INT",
                   help="refuse a grid of more jobs than this, before any work (default: 100,000)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a value of the spec, e.g. --set model.model=resnet20 --set dataset.dataset=cifar10")
    _add_common(p)
    _add_logging(p)


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=3, metavar="INT", help="training epochs of each network (default: 3)")
    p.add_argument("--sparsity", type=float, default=0.9, metavar="FLOAT",
                   help="sparsity of the random mask, in [0, 1) (default: 0.9)")
    add_switch_with_mode(p, "--amp", "amp", "mixed precision: bf16 or fp16 (default: off)", default=False)
    _add_common(p)


def build_parser(lazy: bool = False) -> argparse.ArgumentParser:
    """The ``prunelab`` parser. ``lazy``: each command's flags are built only when that command parses or shows
    its help (what :func:`main` does, so that ``ls`` or ``--help`` never builds the flags of ``run``)."""
    parser = _Parser(prog="prunelab", description="Neural-network pruning research, at initialization and after.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    for name in PROTOCOLS:  # one command per registered protocol
        protocol = PROTOCOLS.get(name)
        p = sub.add_parser(name, help=protocol.help)
        p.add_flags(functools.partial(_add_experiment, protocol=protocol))
        p.set_defaults(func=cmd_protocol, protocol=protocol)

    p = sub.add_parser("sweep", help="run a grid of experiments from a TOML spec (locally or on Slurm)")
    p.add_flags(_add_sweep)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("ls", help="list the runs of a store")
    add_root_flag(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", help="one run's hyperparameters and result")
    p.add_argument("run", help="run id, unique prefix, or folder")
    add_root_flag(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("list", help="the registered methods, models, datasets or protocols, with their citations")
    p.add_argument("registry", nargs="?", help=f"which registry; one of: {', '.join(LISTS)} (none: this list)")
    p.set_defaults(func=cmd_list)

    from prunelab.reports.commands import register as register_report_commands

    register_report_commands(sub)  # report, analyze
    from prunelab.export_model import register as register_export_model

    register_export_model(sub)  # export-model: prunelab.compact, imported when the command runs

    p = sub.add_parser("demo", help="LeNet-300-100 on Fashion-MNIST, dense vs 90%% random sparse, a few epochs")
    p.add_flags(_add_demo)
    p.set_defaults(func=cmd_demo)  # prunelab.demo
    if not lazy:
        for command in sub.choices.values():
            command.build_flags()
    return parser


_NEGATIVE_DURATION = re.compile(r"^-\d+(ep|it)")  # "-3ep": argparse would take it for a flag


def _negative_values_attached(argv: list[str]) -> list[str]:
    """``--train -3ep`` as ``--train=-3ep``, so that a negative duration reaches the duration parser and its
    message instead of argparse's "expected one argument" (negative plain numbers argparse reads itself)."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_DURATION.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _negative_values_attached(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(lazy=True)
    skipped: list[str] = []
    with _signals_as_interrupts(), _warnings_as_lines(skipped):
        try:
            args = parser.parse_args(argv)
            status = int(args.func(args) or 0)
        except (UserError, ValueError, OSError) as e:  # OSError: missing files, no permission, disk full
            print(f"prunelab: error: {_one_line(e)}", file=sys.stderr)
            return EXIT_USER_ERROR
        except _diverged() as e:  # a run that was not recorded as diverged (e.g. a dense prefix): not a user error
            print(f"prunelab: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as e:
            how, code = ("terminated (SIGTERM)", EXIT_SIGTERM) if isinstance(e, Terminated) else ("interrupted",
                                                                                              EXIT_SIGINT)
            print(f"prunelab: {how}; {_what_was_saved(e)}", file=sys.stderr)
            return code
    if skipped and status == 0:
        print(f"prunelab: {len(skipped)} run(s) skipped because of damaged files (named above)", file=sys.stderr)
        return EXIT_SKIPPED
    return status


class _NeverRaised(Exception):
    """What :func:`_diverged` names while no run can have diverged."""


def _diverged() -> type[Exception]:
    """:class:`prunelab.training.Diverged` once the training loop is imported (only then can a run diverge), else
    an exception nothing raises: catching it must not import torch into the light commands."""
    loop = sys.modules.get("prunelab.training.loop")
    return loop.Diverged if loop is not None else _NeverRaised


@contextlib.contextmanager
def _signals_as_interrupts():
    """SIGTERM raises :class:`Terminated` while a command runs (only the main thread can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _warnings_as_lines(skipped: list[str]):
    """Warnings as single lines on stderr (``prunelab: warning: ...``); runs skipped by a listing counted."""
    from prunelab.experiments.store import SkippedRunWarning
    from prunelab.io import DamagedFileWarning, warning_line

    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = warning_line(message)
        if text in shown:  # e.g. a report reads the store for its run table and for its layer table
            return
        shown.add(text)
        if issubclass(category, SkippedRunWarning):
            skipped.append(text)
        print(text, file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", DamagedFileWarning)  # one line for every damaged file, every time
        warnings.showwarning = show
        yield


def _what_was_saved(e: KeyboardInterrupt) -> str:
    """What a rerun starts from: the last checkpoint of the run in progress (the lock noted which). Only
    reads: a damaged checkpoint is left for the rerun to set aside, with its warning."""
    from prunelab.experiments import runfiles
    from prunelab.training.checkpoints import CheckpointFolder, load_checkpoint

    folder = getattr(e, "prunelab_run", None)
    if folder is None:
        return "finished runs are kept, and runs in progress resume from their last checkpoint when the same " \
               "command is rerun"
    ck = CheckpointFolder(folder / runfiles.CHECKPOINTS)
    try:
        step = load_checkpoint(ck.latest_path)["step"]
    except (OSError, ValueError, RuntimeError, KeyError):
        step = max(ck.kept_steps(), default=None)
    if step is None:
        return f"finished runs are kept; run {folder.name} had no checkpoint yet and starts again when rerun"
    return (f"finished runs are kept; run {folder.name} saved its checkpoint at step {step} "
            f"({ck.folder}), and rerunning the same command resumes from there")


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and not e.args[1:2] == (e.strerror,) and str(e).startswith("["):
        text = e.strerror  # "[Errno 28] No space left on device" -> the words, then the file below
    else:
        text = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    return " ".join(text.split())


# ---- commands -----------------------------------------------------------------------------------

def _resolve(args, protocol: Protocol):
    """(replicate, the protocol's hparams or None) from defaults < recipe < TOML config < flags; reads no data
    and writes nothing."""
    from prunelab.experiments.runner import Replicate
    from prunelab.training import recipe
    from prunelab.training.settings import TrainSettings, check_seed

    cfg = load_toml(args.config) if args.config else {}
    model = dataclass_from_flags(ModelHparams, args, base=ModelHparams(**cfg.get("model", {})))
    dataset = dataclass_from_flags(DataHparams, args, base=DataHparams(**cfg.get("dataset", {})))
    if args.model is None and "model" not in cfg.get("model", {}):
        raise UserError("prunelab: --model is required (or [model] model = ... in --config)")
    if args.dataset is None and "dataset" not in cfg.get("dataset", {}):
        raise UserError("prunelab: --dataset is required (or [dataset] dataset = ... in --config)")
    base = recipe(model.model, dataset.dataset).replace(**cfg.get("training", {}))
    training = dataclass_from_flags(TrainSettings, args, base=base)
    hp = None
    if protocol.hparams is not None:
        cls = protocol.hparams
        hp = dataclass_from_flags(cls, args, base=cls(**cfg.get(protocol.section, {})))
    seed = check_seed(args.seed if args.seed is not None else cfg.get("seed", 0), "--seed")
    return Replicate(model, dataset, training, seed), hp


def _experiment(args, protocol: Protocol):
    """(runner, replicate, the protocol's hparams or None), every check made before anything is written."""
    from prunelab.experiments.runner import Runner
    from prunelab.experiments.store import RunStore
    from prunelab.training.devices import check_device
    from prunelab.training.loggers import check_loggers

    rep, hp = _resolve(args, protocol)
    device = check_device(args.device)
    log = check_loggers(args.log)
    store = RunStore(args.root)
    store.check_root()
    if args.distributed:
        from prunelab.training import distributed

        device = distributed.init_from_env(args.device)
    runner = Runner(store, data_root=args.data_root, device=device, progress=args.progress, runtime=_runtime(args),
                    log=log)
    rep = runner.fitted(rep)  # a --train shorter than the recipe's schedule scales it, in one line
    runner.check(rep)  # a bad model/dataset pair or schedule fails here, before anything is written
    return runner, rep, hp


def print_config(args, protocol: Protocol) -> None:
    """The resolved settings of the command as a TOML config (``--config`` reads it back), with the run id."""
    from prunelab.experiments.runner import Runner
    from prunelab.experiments.store import RunStore

    rep, hp = _resolve(args, protocol)
    store = RunStore(args.root)
    runner = Runner(store, data_root=args.data_root)
    rep = runner.fitted(rep)  # as the run will (reads the data only when --train and the schedule mix ep and it)
    run_id = protocol.run_id(runner, rep, hp)
    sections = {"model": rep.model, "dataset": rep.dataset, "training": rep.training}
    if protocol.section is not None:
        sections[protocol.section] = hp
    header = [f"prunelab {protocol.name}: resolved settings (recipe of {rep.model.model} on {rep.dataset.dataset} "
              "< --config < flags)",
              f"run id {run_id}: {store.folder(run_id)}" + (" (finished)" if store.result(run_id) else ""),
              f"rerun: prunelab {protocol.name} --config FILE (this text saved as FILE)"]
    print(config_toml(sections, rep.seed, header), end="")


def _summary(results: list[dict], label: str, where) -> None:
    from prunelab.training import distributed

    if not distributed.is_main():
        return
    print(f"run {where}" if len(results) == 1 else f"runs in {where}")
    rows = [[label, "status", "sparsity", "test accuracy", "dense accuracy", "wall time (s)"]]
    if label != "run":  # each row a level of one run: its level, then the id of the run it produced
        rows[0].insert(1, "run")
    for r in results:
        acc = r.get("test_accuracy")
        first = [str(r.get("level", "-")), r["id"]] if label != "run" else [r["id"]]
        rows.append([*first, r["status"], f"{r.get('sparsity', 0):.4f}",
                     "-" if acc is None else f"{acc:.4f}", _fmt(r.get("dense_accuracy")),
                     _fmt(r.get("wall_time"), ".1f")])
    print_table(rows)


def _fmt(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


def _exit_status(results: list[dict]) -> int:
    diverged = [r for r in results if r["status"] == "diverged"]
    for r in diverged:
        print(f"prunelab: run {r['id']} diverged at step {r.get('step')}", file=sys.stderr)
    return 1 if diverged else 0


def cmd_protocol(args) -> int:
    """One run (or one series of levels) of the protocol the command names."""
    protocol: Protocol = args.protocol
    if args.print_config:
        print_config(args, protocol)
        return 0
    runner, rep, hp = _experiment(args, protocol)
    with runner.threads():  # one thread rule alone and in a sweep (docs/guide.md §4)
        results = protocol.run(runner, rep, hp)
    where = runner.store.folder(results[0]["id"]) if len(results) == 1 else \
        f"{runner.store.root}: " + " ".join(r["id"] for r in results)
    _summary(results, protocol.result_label, where)
    return _exit_status(results)


def cmd_sweep(args) -> int:
    from prunelab import progress
    from prunelab.experiments import sweep
    from prunelab.registry import check_name
    from prunelab.training.devices import check_device
    from prunelab.training.loggers import check_loggers

    check_name("executor", args.executor, sweep.EXECUTORS)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"prunelab: --workers must be >= 1, got {args.workers}")
    if args.gpus_per_node is not None and args.gpus_per_node < 0:
        raise UserError(f"prunelab: --gpus-per-node must be >= 0, got {args.gpus_per_node}")
    check_device(args.device, here=args.executor == "local")  # Slurm jobs run on the cluster's nodes
    if args.max_jobs is not None and args.max_jobs < 1:
        raise UserError(f"prunelab: --max-jobs must be >= 1, got {args.max_jobs}")
    spec = sweep.load_spec(args.spec, args.set)
    slurm = {**spec.slurm, **({} if args.gpus_per_node is None else {"gpus_per_node": args.gpus_per_node})}
    if args.executor == "slurm":
        sweep.slurm_parameters(slurm, args.device)  # a GPU sweep with no GPUs fails here, before planning
    print(f"sweep {args.spec}: {spec.summary()}", flush=True)  # counted from the axes: at once, whatever the size
    sweep.check_size(spec, args.max_jobs or sweep.MAX_JOBS)
    ctx = sweep.Context(str(args.root), args.data_root, args.device, runtime=_runtime(args),
                        log=check_loggers(args.log))
    ctx.runner().store.check_root()
    # planning builds each model once to check it: on the CPU when the jobs run elsewhere (a login node)
    planner = ctx if args.executor == "local" else sweep.Context(ctx.root, ctx.data_root, "cpu")
    plan = sweep.make_plan(planner.runner(), spec.iter_jobs())
    print(f"plan: {len(plan.skipped)} already done, {plan.todo} to do in {len(plan.phases)} phase(s), "
          f"about {plan.steps:,} training steps")
    if args.dry_run:
        for phase in plan.phases:
            print(f"  {_phase_name(phase)}:")
            for job in phase[:sweep.LISTED_JOBS]:
                print(f"    {job.label()}")
            if len(phase) > sweep.LISTED_JOBS:
                print(f"    ... and {len(phase) - sweep.LISTED_JOBS:,} more")
        return 0
    outcomes: list[dict] = []
    # Progress in training steps over every job (the plan's estimate as the total), with jobs in the postfix.
    bar = progress.bar(plan.steps, unit="steps", desc="sweep", enabled=args.progress)

    def done(outcome: dict) -> None:
        outcomes.append(outcome)
        failed = sum(o["status"] == "failed" for o in outcomes)
        bar.set_postfix(jobs=f"{len(outcomes)}/{plan.todo}", failed=failed, refresh=False)

    if args.executor == "local":
        sweep.run_local(plan.phases, ctx, args.workers or sweep.default_workers(args.device), done,
                        on_steps=bar.update, needs=plan.needs)
    else:
        # state lines above a live bar; in a log file, plain lines between the bar's own
        log = bar.write if progress.is_terminal(sys.stderr) else None
        sweep.run_submitit(plan.phases, ctx, slurm, done, on_steps=bar.update, needs=plan.needs, log=log)
    bar.close()
    failed = [o for o in outcomes if o["status"] == "failed"]
    diverged = [o for o in outcomes if o["status"] == "diverged"]
    skipped = [o for o in outcomes if o["status"] == "skipped"]  # a job whose dependency failed
    print(f"jobs done: {len(outcomes) - len(failed) - len(diverged) - len(skipped)}, diverged: {len(diverged)}, "
          f"already done: {len(plan.skipped)}, skipped: {len(skipped)}, failed: {len(failed)}")
    for o in failed:
        print(f"  failed {o['label']} ({o['id']}): {o['error']}")
    for o in skipped:
        print(f"  skipped {o['label']}: {o['reason']}; a rerun runs it once that is done")
    print(f"next: prunelab report --root {args.root}")
    return 1 if failed or skipped else 0


def _phase_name(phase: list) -> str:
    names = {"dense": "dense replicates", "prefix": "dense prefixes to step t"}
    return " + ".join(dict.fromkeys(names.get(job.kind, "runs") for job in phase))


def cmd_ls(args) -> int:
    from prunelab.experiments.protocols import protocol_of_kind
    from prunelab.experiments.store import RunStore

    store = RunStore(args.root)
    rows = [["id", "kind", "model", "dataset", "seed", "what", "sparsity", "status", "accuracy"]]
    for run_id, hp, result in store.runs():
        what = protocol_of_kind(hp["kind"]).describe(hp)
        state = store.state(run_id, result)
        result = result or {}
        rows.append([run_id, hp["kind"], hp["model"]["model"], hp["dataset"]["dataset"], str(hp["seed"]),
                     what, _fmt(result.get("sparsity")), state, _fmt(result.get("test_accuracy"))])
    if len(rows) == 1:
        print(f"no runs in {args.root}")
        return 0
    print_table(rows)
    return 0


def cmd_show(args) -> int:
    """Hyperparameters, result (or state) and provenance of one run; a damaged result or provenance file is
    named in a warning and left out (exit status 1), a damaged hparams.json is an error."""
    from prunelab.experiments import runfiles
    from prunelab.experiments.store import SkippedRunWarning, open_run

    store, run_id = open_run(args.run, args.root)
    out: dict = {"id": run_id, "folder": str(store.folder(run_id)), "hparams": store.hparams(run_id)}
    for key, read in (("result", lambda: runfiles.read(store.folder(run_id) / runfiles.RESULT_JSON)),
                      ("provenance", lambda: store.provenance(run_id))):
        try:
            out[key] = read()
        except (runfiles.DamagedRunFile, OSError) as e:
            warnings.warn(f"{e}; left out", SkippedRunWarning, stacklevel=1)
    out["state"] = store.state(run_id, out["result"]) if "result" in out else "unknown (damaged result.json)"
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


class _VersionAction(argparse._VersionAction):
    """``--version``: the version looked up when asked, not each time the parser is built (importlib.metadata
    takes a tenth of a second, which every other command would pay)."""

    def __call__(self, parser, namespace, values, option_string=None):
        self.version = f"prunelab {_version()}"
        super().__call__(parser, namespace, values, option_string)


def _version() -> str:
    """The installed distribution's version; the package's own when run from a source tree not installed."""
    from importlib import metadata

    try:
        return metadata.version("prunelab")
    except metadata.PackageNotFoundError:
        import prunelab

        return prunelab.__version__


if __name__ == "__main__":
    sys.exit(main())
