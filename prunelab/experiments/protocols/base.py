"""A protocol is an object: its hyperparameters, its runs' identity, the dense training it shares, how
it runs and resumes, and how it is labelled. The CLI, sweeps, ``ls``, ``show`` and the report loop over
:data:`PROTOCOLS` instead of matching kind strings, so a new protocol is one class and one
registration (see :mod:`prunelab.experiments.protocols`)."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from prunelab.experiments import runfiles
from prunelab.experiments.hparams import identity_dict
from prunelab.registry import Registry

if TYPE_CHECKING:  # torch and what imports it only where a run is computed: ls, show and --help never import it
    import torch
    from torch import nn

    from prunelab.experiments.runner import Replicate, Runner
    from prunelab.masks import Mask

# Seed offsets keep ablation randomness independent of the replicate's init and data order.
SHUFFLE_SEED, REINIT_SEED = 1_000, 2_000


class Protocol(ABC):
    """One way of producing a trained (sparse) network from a replicate.

    ``name`` is the CLI command and the sweep's ``protocol = ...``; ``kind`` is what its run folders
    record (and hash: never change it); ``hparams`` its dataclass (defined beside the protocol, with its
    checks) and ``section`` that dataclass's TOML table (None: the protocol has no hyperparameters beyond
    the replicate). ``reference``: its runs are the dense baseline, drawn in every panel of the report's
    figures instead of at a sparsity of their own.
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    hparams: ClassVar[type | None] = None
    section: ClassVar[str | None] = None
    help: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    result_label: ClassVar[str] = "run"  # what one row of the command's summary is ("level" for IMP)
    reference: ClassVar[bool] = False

    # ---- identity and checks --------------------------------------------------------------------
    @abstractmethod
    def run_id(self, runner: Runner, rep: Replicate, hp: Any) -> str:
        """The id of the (last) run this protocol produces."""

    def run_ids(self, runner: Runner, rep: Replicate, hp: Any) -> list[str]:
        """The ids of every run this protocol produces (every level of a lottery series), for what a sweep
        costs and what it left to run."""
        return [self.run_id(runner, rep, hp)]

    def check(self, runner: Runner, rep: Replicate, hp: Any) -> None:
        """Every check that needs the dataset, made before any work or write."""
        runner.check(rep)

    def dense_step(self, runner: Runner, rep: Replicate, hp: Any) -> int | None:
        """The step t whose dense weights this protocol starts from, when 0 < t < the end (a training prefix
        a sweep produces first); None otherwise."""
        return None

    def steps_left(self, runner: Runner, rep: Replicate, hp: Any) -> int:
        """Training steps this protocol's unfinished runs will take (the sweep's estimate)."""
        return runner.total_steps(rep)

    def hparams_record(self, rep: Replicate, hp: Any) -> dict[str, Any]:
        """What a run's ``hparams.json`` holds: its kind, the replicate and the protocol's settings."""
        record = {"kind": self.kind, **rep.describe()}
        if self.section is not None:
            record[self.section] = identity_dict(hp)
        return record

    # ---- running --------------------------------------------------------------------------------
    @abstractmethod
    def run(self, runner: Runner, rep: Replicate, hp: Any) -> list[dict[str, Any]]:
        """Run (or read back) the protocol; its results in order (one per level for IMP)."""

    # ---- labels ---------------------------------------------------------------------------------
    def describe(self, hp: dict[str, Any]) -> str:
        """A short label of a run's protocol settings from its stored ``hparams.json`` (the ``what``
        column of ``ls`` and the sweep's job labels)."""
        return self.kind

    columns: ClassVar[dict[str, str]] = {}  # short table names of the section's keys (others: "section.key")

    def label(self, rows, methods: bool = True):
        """A legend label per run (a pandas Series on ``rows``' index), from the rows of the runs table of this
        protocol's runs: the kind, plus the settings that vary among them ("gradual update_every=2it").
        ``methods``: name the criterion where the protocol has one (False where all prune the same share)."""
        from prunelab.experiments.protocols.labels import variant_labels

        return variant_labels(rows, "kind", [c for c in self.columns.values() if c != "sparsity_target"])

    def table_row(self, hp: dict[str, Any]) -> dict[str, Any]:
        """The run-table columns of a run's protocol settings (``prunelab.reports.tables``)."""
        section = hp.get(self.section) or {} if self.section else {}
        row = {self.columns.get(k, f"{self.section}.{k}"): table_value(v) for k, v in section.items()}
        target = self.target_sparsity(section)
        if target is not None:
            row["sparsity_target"] = target
        return row

    def target_sparsity(self, section: dict[str, Any]) -> float | None:
        """The sparsity the run aims at, from its settings."""
        return section.get("sparsity")

    def hparams_schema(self) -> dict[str, runfiles.Check]:
        """Keys this kind adds to ``hparams.json`` and their checks (see :mod:`runfiles`)."""
        return {}


def table_value(value: Any) -> Any:
    """A hyperparameter as one table cell: lists joined by spaces, tables as JSON."""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def register_protocol(protocol: Protocol) -> Protocol:
    """Add ``protocol``: the CLI grows its command, sweeps, configs (its ``section``), ``ls``, ``show`` and the
    report take its runs. A section is one dataclass's: two protocols may share one only with the same
    dataclass (SET and RigL), and none may take a section of the replicate."""
    from prunelab.experiments.hparams import REPLICATE_SECTIONS

    if protocol.section is not None:
        if protocol.section in (*REPLICATE_SECTIONS, "seed", "seeds", "slurm", "protocol"):
            raise ValueError(f"protocol {protocol.name!r}: section [{protocol.section}] belongs to the replicate "
                             "or the sweep; name another")
        for other in map(PROTOCOLS.get, PROTOCOLS):
            if other.section == protocol.section and other.hparams is not protocol.hparams:
                raise ValueError(f"protocol {protocol.name!r}: section [{protocol.section}] is protocol "
                                 f"{other.name!r}'s, with another dataclass; name another")
    if any(PROTOCOLS.get(n).kind == protocol.kind for n in PROTOCOLS):
        raise ValueError(f"protocol {protocol.name!r}: kind {protocol.kind!r} is already recorded by another protocol")
    PROTOCOLS.register(protocol.name, protocol, kind=protocol.kind, help=protocol.help, citation=protocol.citation)
    return protocol


def unregister_protocol(name: str) -> Protocol:
    """Remove protocol ``name`` (a test's own protocol, after the test)."""
    return PROTOCOLS.unregister(name)


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.get(name)


def protocol_of_kind(kind: str) -> Protocol:
    """The protocol whose runs record ``kind``."""
    for name in PROTOCOLS:
        if PROTOCOLS.get(name).kind == kind:
            return PROTOCOLS.get(name)
    raise ValueError(f"unknown run kind {kind!r} (known: {', '.join(PROTOCOLS.get(n).kind for n in PROTOCOLS)})")


# ---- pieces shared by the protocols that prune ------------------------------------------------------

def sparse_result(res, mask: Mask, model: nn.Module, dense: dict[str, Any], **extra) -> dict[str, Any]:
    """The ``result.json`` of a finished sparse run."""
    import prunelab
    from prunelab.analysis import layer_collapse as collapsed_layers

    return {
        "status": "done",
        "test_accuracy": res.test_accuracy,
        "test_loss": res.test_loss,
        "dense_accuracy": dense.get("test_accuracy"),
        "sparsity": mask.sparsity,
        "layer_sparsity": mask.layer_sparsity(),
        "layer_collapse": collapsed_layers(mask),
        "coverage": prunelab.mask_coverage(model, mask).to_dict(),
        "wall_time": res.wall_time,
        "steps": res.step,
        "finished_at": time.time(),
        **extra,
    }


def diverged_result(kind: str, step: int, dense: dict[str, Any], mask: Mask, **extra) -> dict[str, Any]:
    return {"status": "diverged", "step": step, "kind": kind, "dense_accuracy": dense.get("test_accuracy"),
            "sparsity": mask.sparsity, **extra}


def mask_once(folder, compute, collective: bool = False) -> Mask:
    """The run's mask: loaded from ``mask.pt`` (resume) or computed once, saved by rank 0, and broadcast so
    that every rank of a distributed run holds the identical mask. ``collective``: every rank takes part in
    ``compute`` (a criterion that shares its scoring batch out over the ranks); otherwise rank 0 alone."""
    from prunelab.masks import Mask
    from prunelab.training import distributed

    path = folder / runfiles.MASK
    main = distributed.is_main()
    mask = load_mask(path) if main else None
    if collective and distributed.active():
        if distributed.broadcast_object(mask is None):
            computed = compute()
            if main:
                mask = computed
                mask.save(path)
    elif main and mask is None:
        mask = compute()
        mask.save(path)
    return Mask(distributed.broadcast_object(mask.state_dict() if main else None))


def load_mask(path) -> Mask | None:
    from prunelab.io import set_aside
    from prunelab.masks import Mask

    if not path.is_file():
        return None
    try:
        return Mask.load(path)
    except ValueError as e:
        set_aside(path, f"{e}; recomputed")
        return None


def dense_first(runner: Runner, rep: Replicate, t: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The dense result and the dense weights at step t, training each step once: the weights at t come
    first, so that the full dense training then resumes from them instead of training 0..t twice."""
    end = runner.total_steps(rep)
    state_t = runner.weights_at(rep, t) if t < end else None
    dense = runner.dense(rep)
    if dense["status"] != "done" and t > 0:
        raise ValueError(f"the dense network of this replicate diverged at step {dense.get('step')}; "
                         "there are no trained weights to prune or rewind (lower the learning rate?)")
    return dense, state_t if state_t is not None else runner.weights_at(rep, t)
