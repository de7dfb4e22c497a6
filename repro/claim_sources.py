"""Where a claim's numbers come from: a registry of sources, each reading committed files into per-seed values.

A source is a table in a claim record (``repro/records/claims.toml``, ``since.toml``) with a ``source`` key
naming one of :data:`SOURCES`:

- ``runs``: the finished runs of a sweep spec (``spec = "02a_at_init"``, its run ids as the sweep computes them;
  ``dense = true`` for the spec's dense networks), narrowed by ``where`` (column = value of
  :func:`prunelab.reports.tables.runs_table`), one value per seed of column ``value`` (default ``test_accuracy``)
  or one of :data:`RUN_VALUES`: ``final_train_loss`` (the training loss of the last logged epoch), ``diverged``
  (1 for a run stopped as diverged, 0 for a finished one; every other value reads finished runs only),
  ``mean_image_correlation`` (of LeNet-300-100's kept first-layer connections per pixel with the mean training
  image, :mod:`first_layer_maps`);
- ``records``: rows of a list in a script's ``repro/results/<file>`` (``path`` of keys to it; a list of files
  whose seeds complete each other), narrowed by
  ``where``, one value per ``seed`` of field ``value`` (a list of fields: their largest), ``mean_over`` averaging
  the rows of a seed (e.g. over layers), ``reduce`` turning a field that is a table into a number;
- ``value``: one exact number in such a file (no seeds: a computation without training), or one computed from a
  table there by a named ``reduce`` (:data:`REDUCERS`).

Each returns ``{seed: value}`` (``{None: value}`` for an exact one), multiplied by ``scale`` (100 turns an
accuracy into percentage points); ``log10 = true`` takes the base-10 logarithm first. A ``runs`` source that no
finished run matches (its sweep not run yet, or its runs still training: a run has a ``result.json`` only once it
ends) raises :class:`NotRun`, naming the spec to run; every other source that matches nothing is an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import cache
from pathlib import Path

REPRO = Path(__file__).resolve().parent


class NotRun(ValueError):
    """No finished runs to compare: ``specs`` names the sweep specs to run, ``why`` says what is missing."""

    def __init__(self, specs: list[str], why: str):
        super().__init__(f"claim source: {why} (specs {', '.join(specs)})")
        self.specs, self.why = list(specs), why


class Sources:
    """Reads the run store and the scripts' result files once, for every claim."""

    def __init__(self, root: Path = REPRO / "runs", results: Path = REPRO / "results", specs: Path = REPRO):
        self.root, self.results, self.specs = Path(root), Path(results), Path(specs)
        self._table = None
        self._json: dict[str, object] = {}
        self._spec_ids: dict[tuple[str, bool], set[str]] = {}

    # ---- the run store --------------------------------------------------------------------------------
    @property
    def table(self):
        if self._table is None:
            from prunelab.reports.tables import runs_table
            self._table = runs_table(str(self.root))
        return self._table

    def spec_ids(self, spec: str, dense: bool) -> set[str]:
        """Run ids of a sweep spec, as the sweep names them (every level of a lottery series), or of its dense
        networks."""
        key = (spec, dense)
        if key not in self._spec_ids:
            from prunelab.experiments.sweep import load_spec
            path = self.spec_path(spec)
            runner = _runner(str(self.root))
            ids: set[str] = set()
            for job in load_spec(path).jobs:
                if dense:
                    ids.add(runner.dense_id(job.rep))
                else:
                    ids.update(job.protocol.run_ids(runner, job.rep, job.hp))
            self._spec_ids[key] = ids
        return self._spec_ids[key]

    def spec_path(self, spec: str) -> Path:
        path = self.specs / f"{spec}.toml"
        if not path.is_file():
            raise FileNotFoundError(f"claim source: no sweep spec {path}")
        return path

    def final_train_loss(self, run_id: str) -> float:
        lines = (self.root / run_id / "metrics.jsonl").read_text().splitlines()
        losses = [r["train_loss"] for r in map(json.loads, lines) if "train_loss" in r]
        if not losses:
            raise ValueError(f"run {run_id} logged no training loss")
        return losses[-1]

    # ---- result files -------------------------------------------------------------------------------------
    def json(self, file: str):
        if file not in self._json:
            path = self.results / file
            if not path.is_file():
                raise FileNotFoundError(f"claim source: no result file {path}")
            self._json[file] = json.loads(path.read_text())
        return self._json[file]

    def at(self, file: str, path: list) -> object:
        node = self.json(file)
        for key in path:
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"claim source: {file} has no {'/'.join(map(str, path))} (stops at {key!r})") from None
        return node


@cache
def _runner(root: str):
    from prunelab.experiments.runner import Runner
    from prunelab.experiments.store import RunStore
    return Runner(RunStore(root))


def _matches(row, where: dict) -> bool:
    for key, want in where.items():
        got = row[key]
        if isinstance(want, list):
            if list(got) != want:
                return False
        elif want is None:
            if not _missing(got):
                return False
        elif not _same_value(got, want):
            return False
    return True


def _same_value(got, want) -> bool:
    """Equal, numbers to float rounding (a sparsity written with fewer digits than the run's)."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if number(got) and number(want):
        return math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-12)
    return got == want


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def from_runs(src: Sources, spec: dict) -> dict:
    ids = src.spec_ids(spec["spec"], spec.get("dense", False))
    df = src.table[src.table.id.isin(ids)]
    value = spec.get("value", "test_accuracy")
    if value != "diverged":
        df = df[df.status == "done"]
    where = spec.get("where", {})
    rows = [r for _, r in df.iterrows() if _matches(r, where)]
    out: dict = {}
    for r in rows:
        seed = int(r.seed)
        if seed in out:
            raise ValueError(f"claim source: spec {spec['spec']} where {where} matches more than one run of seed "
                             f"{seed}; narrow the filter")
        out[seed] = RUN_VALUES[value](src, r) if value in RUN_VALUES else float(r[value])
    return out


def _mean_image_correlation(src: Sources, run) -> float:
    from first_layer_maps import mean_image_correlation  # repro/first_layer_maps.py (torch, the dataset)
    return mean_image_correlation(src.root, run.id, run.dataset)


# values of a run that are not a column of the runs table
RUN_VALUES: dict[str, Callable] = {
    "final_train_loss": lambda src, run: src.final_train_loss(run.id),
    "diverged": lambda src, run: float(run.status == "diverged"),
    "mean_image_correlation": _mean_image_correlation,
}


def from_records(src: Sources, spec: dict) -> dict:
    files = spec["file"] if isinstance(spec["file"], list) else [spec["file"]]
    out: dict = {}
    for file in files:  # several files: seeds completing each other (a seed rerun elsewhere), never the same seed
        part = _records_of(src, dict(spec, file=file))
        if twice := set(part) & set(out):
            raise ValueError(f"claim source: seeds {sorted(twice)} in more than one of {files}")
        out.update(part)
    return out


def _records_of(src: Sources, spec: dict) -> dict:
    rows = src.at(spec["file"], spec["path"])
    if isinstance(rows, dict):  # {"rows": [...]}, or one row per run keyed by its id
        rows = rows["rows"] if "rows" in rows else list(rows.values())
    where = spec.get("where", {})
    grouped: dict = {}
    for r in rows:
        if all(_same(r.get(k), v) for k, v in where.items()):
            value = spec["value"]  # a list of fields: the largest of them (the best member of an ensemble)
            if "reduce" in spec:  # a field that is a table, reduced to a number
                grouped.setdefault(r["seed"], []).append(_reduced(r[value], spec))
            else:
                grouped.setdefault(r["seed"], []).append(
                    max(float(r[v]) for v in value) if isinstance(value, list) else float(r[value]))
    out = {}
    for seed, values in grouped.items():
        if len(values) > 1 and not spec.get("mean_over"):
            raise ValueError(f"claim source: {spec['file']} {where} has {len(values)} rows for seed {seed}; "
                             "narrow the filter or set mean_over")
        out[int(seed)] = math.fsum(values) / len(values)
    return out


def _same(got, want) -> bool:
    if isinstance(want, float) and isinstance(got, (int, float)):
        return math.isclose(float(got), want, rel_tol=1e-9)
    return got == want


def _count_zero(node: dict, spec: dict) -> float:
    """How many entries of a {layer: density} table are exactly 0 (emptied layers)."""
    return float(sum(v == 0 for v in node.values()))


def _spread_log10(node: dict, spec: dict) -> float:
    """log10(max / min) of entry ``index`` of a {layer: [size, total, ...]} table (of ``v[key][index]`` when the
    spec names a ``key``): 0 when all are equal."""
    values = [abs((v[spec["key"]] if "key" in spec else v)[spec["index"]]) for v in node.values()]
    return math.log10(max(values) / min(values))


def _loglog_slope(node: dict, spec: dict) -> float:
    """Slope of log10(mean score per weight) on log10(layer size) over a {layer: [size, total, ...]} table
    (-1: the mean score inversely proportional to the size, Tanaka et al. 2020, Thm. 2)."""
    from claim_rule import slope
    xs = [math.log10(v[0]) for v in node.values()]
    ys = [math.log10(abs(v[spec["index"]]) / v[0]) for v in node.values()]
    return slope(xs, ys)


REDUCERS = {"count_zero": _count_zero, "spread_log10": _spread_log10, "loglog_slope": _loglog_slope}


def _reduced(node: dict, spec: dict) -> float:
    if spec["reduce"] not in REDUCERS:
        raise ValueError(f"claim source reduce must be one of {', '.join(REDUCERS)}, got {spec['reduce']!r}")
    return REDUCERS[spec["reduce"]](node, spec)


def from_value(src: Sources, spec: dict) -> dict:
    node = src.at(spec["file"], spec["path"])
    return {None: _reduced(node, spec) if "reduce" in spec else float(node)}


SOURCES: dict[str, Callable[[Sources, dict], dict]] = {"runs": from_runs, "records": from_records, "value": from_value}
# sources that read trained networks (their predictions need MIN_SEEDS seeds to hold)
TRAINED = {"runs", "records"}


def _spec_values(node) -> list:
    """Every scalar a sweep spec sets, at any depth (its axes' lists flattened)."""
    if isinstance(node, dict):
        return [v for x in node.values() for v in _spec_values(x)]
    if isinstance(node, list):
        return [v for x in node for v in _spec_values(x)]
    return [node]


def _check_where(src: Sources, spec: dict) -> None:
    """A ``runs`` filter that matches nothing is *not run* only if the spec could make such runs: each value of
    ``where`` must be one the spec sets or one a run of the store has (a default); else it is misspelt (``forse``; a
    sparsity no spec and no run has), an error, not a prediction waiting for its runs."""
    import tomllib

    if not spec.get("where"):
        return
    given = _spec_values(tomllib.loads(src.spec_path(spec["spec"]).read_text()))
    table = src.table
    for key, want in spec["where"].items():
        if want is None or isinstance(want, (bool, list)):
            continue
        if len(table) and key not in table.columns:
            raise ValueError(f"claim source: spec {spec['spec']} where {key} = {want!r}: the runs table has no "
                             f"column {key!r}")
        seen = given + ([v for v in table[key].tolist() if not _missing(v)] if key in table.columns else [])
        if not any(_same_value(v, want) for v in seen):
            raise ValueError(f"claim source: spec {spec['spec']} where {key} = {want!r}: neither the spec sets that "
                             "value nor does any run in the store have it (misspelt?)")


def read(src: Sources, spec: dict) -> dict:
    """``{seed: value}`` of one source table (module docstring)."""
    kind = spec.get("source")
    if kind not in SOURCES:
        raise ValueError(f"claim source must be one of {', '.join(SOURCES)}, got {kind!r}")
    values = SOURCES[kind](src, spec)
    if not values and kind == "runs":
        _check_where(src, spec)
        where = ", ".join(f"{k} = {v}" for k, v in spec.get("where", {}).items())
        raise NotRun([spec["spec"]], f"no finished run of {spec['spec']}" + (f" where {where}" if where else ""))
    if not values:
        raise ValueError(f"claim source {spec} matches nothing")
    scale = spec.get("scale", 1.0)
    if spec.get("log10"):
        values = {k: math.log10(v) for k, v in values.items()}
    return {k: v * scale for k, v in values.items()}
