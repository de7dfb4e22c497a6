"""The ``report``, ``export`` and ``analyze`` subcommands, added to the ``prunelab`` parser by :func:`register`.

Errors a user can make (a missing store, run or file, a model that does not fit the mask) raise
ValueError or FileNotFoundError with a one-line message; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any

import prunelab

# The packages of the extras the commands need beyond prunelab's own dependencies.
EXTRAS = {"plots": ("matplotlib", "pandas"), "parquet": ("pyarrow",)}
EXPORT_FORMATS = {"csv": None, "parquet": "parquet"}  # format -> the extra it needs


@contextlib.contextmanager
def needs_extra(command: str, extra: str):
    """Imports inside the block that fail for a package of ``extra`` become one line, "prunelab report needs
    the plots extra: pip install 'prunelab[plots]'" (a ValueError: exit status 2), instead of a
    ModuleNotFoundError traceback. Used before anything is written."""
    try:
        yield
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] in EXTRAS[extra]:
            raise ValueError(f"{command} needs the {extra} extra: pip install 'prunelab[{extra}]'") from None
        raise


def register(subparsers) -> None:
    """Add ``report``, ``export`` and ``analyze`` to ``subparsers`` (from ``parser.add_subparsers()``)."""
    from prunelab.experiments.hparams import DataHparams, ModelHparams
    from prunelab.options import add_root_flag, one_of

    p = subparsers.add_parser("report", help="HTML report (figures, tables, CSV files) of a run store")
    add_root_flag(p)
    p.add_argument("--out", default="report", help="output folder for index.html and the CSV files (default ./report)")
    p.add_argument("--dpi", type=int, default=110, help="resolution of the figures (default 110)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="processes drawing figures (default: one per available CPU; 1 draws in this process)")
    p.add_argument("--formats", default="png", metavar="LIST",
                   help="figure files to write, comma-separated: png (shown in the page), pdf and svg (vector files "
                        "for a paper; they triple the time of a first report, so they are drawn on request, and "
                        "only those missing) (default png; e.g. png,pdf,svg)")
    p.add_argument("--rebuild", action="store_true",
                   help="draw every figure again, even those whose runs did not change since the last report "
                        "into --out (by default they are reused)")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser(
        "export", help="the run table and every run's per-step metrics as CSV or Parquet files, for pandas",
        description="Writes runs.<format> (one row per run, as prunelab.reports.runs_table) and "
                    "metrics.<format> (one row per run, evaluation step and metric, with the run's "
                    "hyperparameter columns, as prunelab.reports.metrics_table) into --out.")
    add_root_flag(p)
    p.add_argument("--format", default="csv", choices=list(EXPORT_FORMATS),
                   help="csv, or parquet (needs pyarrow: pip install 'prunelab[parquet]') (default csv)")
    p.add_argument("--out", default="export", help="output folder (default ./export)")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser(
        "analyze", help="per-layer table, layer collapse, max compression and effective sparsity of a mask",
        description="MASK_OR_RUN is a run id (or unique prefix, or run folder) of the store, or a mask file "
                    "saved by prunelab.Mask.save; for a bare mask file, --model and --input-shape (or --dataset) "
                    "give the network for effective sparsity.")
    p.add_argument("mask_or_run", metavar="MASK_OR_RUN", help="run id, unique prefix, run folder, or mask .pt file")
    add_root_flag(p)
    p.add_argument("--model", default=None, help=f"model name, for a bare mask file; {one_of(ModelHparams, 'model')}")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                   help="input shape, for a bare mask file")
    p.add_argument("--dataset", default=None, help="dataset whose input shape and classes to use, for a bare mask; "
                                                       f"{one_of(DataHparams, 'dataset')}")
    p.add_argument("--num-classes", type=int, default=None,
                   help="output classes, for a bare mask (default: the dataset's, else the mask's last layer's rows)")
    p.set_defaults(func=cmd_analyze)


def cmd_report(args) -> int:
    with needs_extra("prunelab report", "plots"):
        from prunelab.reports.figure_builds import check_formats
        from prunelab.reports.html import build_report

    if args.dpi < 20:
        raise ValueError(f"--dpi must be at least 20, got {args.dpi}")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    formats = check_formats([f.strip() for f in args.formats.split(",") if f.strip()])
    path, built = build_report(args.root, args.out, dpi=args.dpi, jobs=args.jobs, rebuild=args.rebuild,
                               formats=formats)
    for note in built.notes:
        print(f"note: {note}")
    print(f"report {path} ({len(built.figures)} figures: {built.drawn} drawn, {built.reused} unchanged since the "
          f"last report); tables in {path.parent}/runs.csv and summary.csv")
    return 0


def cmd_export(args) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # checked before any work: the tables go into a folder
        raise ValueError(f"--out {out} is a file; export writes runs.{args.format} and metrics.{args.format} into a "
                         "folder: give a folder (it is created if it does not exist)")
    with needs_extra("prunelab export", "plots"):
        from prunelab.reports.tables import metrics_table, runs_table
    extra = EXPORT_FORMATS[args.format]
    if extra:
        with needs_extra(f"prunelab export --format {args.format}", extra):
            for module in EXTRAS[extra]:
                __import__(module)
    from prunelab.io import atomic_write_bytes

    runs = runs_table(args.root)  # FileNotFoundError (one line) when the store does not exist
    metrics = metrics_table(args.root)
    for name, df in (("runs", runs), ("metrics", metrics)):
        buffer = io.BytesIO()
        if args.format == "csv":
            df.to_csv(buffer, index=False)
        else:
            _parquet_ready(df).to_parquet(buffer, index=False)
        atomic_write_bytes(out / f"{name}.{args.format}", buffer.getvalue())
    print(f"wrote {out}/runs.{args.format} ({len(runs)} runs) and {out}/metrics.{args.format} ({len(metrics)} rows: "
          "one per run, step and metric)")
    return 0


def _parquet_ready(df):
    """``df`` with every object column that mixes value types (a hyperparameter that is a number in one
    run and a string in another) as strings: Parquet columns have one type."""
    from pandas.api.types import is_object_dtype

    from prunelab.reports.tables import is_missing

    df = df.copy()
    for col in [c for c in df.columns if is_object_dtype(df[c])]:
        if len({type(v) for v in df[col] if not is_missing(v)}) > 1:
            df[col] = df[col].map(lambda v: None if is_missing(v) else str(v))
    return df


# ---- analyze ------------------------------------------------------------------------------------

def _locate(args) -> tuple[Any, str, dict[str, Any] | None]:
    """(mask, description, run hyperparameters or None) for the MASK_OR_RUN argument."""
    from prunelab import Mask
    from prunelab.experiments import runfiles
    from prunelab.experiments.store import open_run

    ref = args.mask_or_run
    path = Path(ref)
    if path.is_file():
        return Mask.load(path), f"mask {path}", None
    if ref.endswith(".pt"):
        raise FileNotFoundError(f"no mask file {ref}")
    store, run_id = open_run(ref, args.root)
    folder, hp = store.folder(run_id), store.hparams(run_id)
    if not (folder / runfiles.MASK).is_file():
        what = "a dense run, which has no mask" if hp.get("kind") == "dense" else "unfinished: it has no mask yet"
        raise ValueError(f"run {folder.name} is {what}; give a run of a sparse protocol")
    return Mask.load(folder / runfiles.MASK), f"run {folder.name} ({_describe(hp)})", hp


def _describe(hp: dict[str, Any]) -> str:
    from prunelab.experiments.protocols import protocol_of_kind

    protocol = protocol_of_kind(hp["kind"])
    text = f"{hp['model']['model']} on {hp['dataset']['dataset']}, seed {hp.get('seed')}, {protocol.describe(hp)}"
    target = protocol.target_sparsity(hp.get(protocol.section) or {}) if protocol.section else None
    return text if target is None else f"{text}, target sparsity {target:g}"


def _model_for(args, mask, hp: dict[str, Any] | None):
    """(model, input_shape) for effective sparsity, or (None, reason) when not enough is known."""
    from prunelab import data, models

    if hp is not None:
        info = data.info(hp["dataset"]["dataset"])
        m = hp["model"]
        model = models.create(m["model"], num_classes=info["num_classes"], input_shape=info["input_shape"],
                              init=m.get("init", "kaiming_normal"), init_mode=m.get("init_mode", "fan_in"),
                              bn_init=m.get("bn_init", "uniform"))
        return model, tuple(info["input_shape"])
    if args.model is None:
        return None, "give --model and --input-shape (or --dataset) for effective sparsity"
    info = data.info(args.dataset) if args.dataset else {}
    input_shape = tuple(args.input_shape) if args.input_shape else info.get("input_shape")
    if input_shape is None:
        raise ValueError("--model needs --input-shape C H W (or --dataset) to build the network")
    num_classes = args.num_classes or info.get("num_classes") or list(mask.values())[-1].shape[0]
    model = models.create(args.model, num_classes=int(num_classes), input_shape=input_shape)
    return model, tuple(input_shape)


def cmd_analyze(args) -> int:
    from prunelab import analysis

    mask, description, hp = _locate(args)
    model, shape_or_reason = _model_for(args, mask, hp)
    effective = None
    if model is not None:
        try:
            mask.check_compatible(model)
        except ValueError as e:
            raise ValueError(f"{e} (check --model, --input-shape and --num-classes)") from None
        effective = analysis.effective_sparsity(model, mask, shape_or_reason)

    print(description)
    header = ["layer", "shape", "kept", "total", "sparsity"] + (["effective"] if effective else []) + ["note"]
    rows = [header]
    collapsed = set(analysis.layer_collapse(mask))
    for row in analysis.layer_table(mask):
        cells = [row["name"], "x".join(str(s) for s in row["shape"]), f"{row['kept']:,}", f"{row['total']:,}",
                 f"{row['sparsity']:.4f}"]
        if effective:
            cells.append(f"{effective['per_layer'][row['name']]['effective']:.4f}")
        cells.append("COLLAPSED" if row["name"] in collapsed else "")
        rows.append(cells)
    total = [["total", "", f"{mask.num_kept:,}", f"{mask.num_total:,}", f"{mask.sparsity:.4f}"]
             + ([f"{effective['effective']:.4f}"] if effective else []) + [""]]
    _print_table(rows + total)
    print()
    if model is not None:
        print(prunelab.mask_coverage(model, mask))
    if collapsed:
        print(f"layer collapse: {', '.join(sorted(collapsed))} fully pruned while other layers keep weights "
              "(Tanaka et al. 2020, §3): they pass no signal, so the network is disconnected unless skip connections "
              "bypass them")
    else:
        print("layer collapse: none")
    uniform = prunelab.pruning.uniform_attention(mask, model)
    if uniform:
        print(f"attention collapse: {', '.join(uniform)}: every key weight pruned, so each key is its bias alone and "
              "the attention is uniform over the tokens")
    rho = mask.num_total / mask.num_kept if mask.num_kept else math.inf
    print(f"compression: {_ratio(rho)}x (total / kept); max compression N/L: {_ratio(analysis.max_compression(mask))}x"
          " (beyond it some layer must be empty; Tanaka et al. 2020, §3)")
    if effective:
        lost = effective["kept"] - effective["effective_kept"]
        print(f"effective sparsity: {effective['effective']:.4f} vs actual {effective['actual']:.4f} "
              f"({lost:,} kept weights are disconnected from the input or the output; Frankle et al. 2021, App. M)")
    else:
        print(f"effective sparsity: not computed ({shape_or_reason})")
    return 0


def _ratio(x: float) -> str:
    return "inf" if math.isinf(x) else (f"{x:,.0f}" if x >= 1000 else f"{x:.4g}")


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        cells = [str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join(cells).rstrip())
        if k == 0 or k == len(rows) - 2:
            print("  ".join("-" * w for w in widths))

