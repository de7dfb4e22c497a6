"""The dense network of a replicate: trained once and shared by every protocol of that seed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prunelab.experiments.protocols.base import Protocol

if TYPE_CHECKING:  # the runner imports torch: ls, show and --help never do
    from prunelab.experiments.runner import Replicate, Runner


class Dense(Protocol):
    name = "train"
    kind = "dense"
    help = "train the dense network of a replicate (shared by every protocol)"
    citation = "Frankle et al. 2021, App. A.3 (training recipes)"
    reference = True

    def run_id(self, runner: Runner, rep: Replicate, hp: Any = None) -> str:
        return runner.dense_id(rep)

    def run(self, runner: Runner, rep: Replicate, hp: Any = None) -> list[dict[str, Any]]:
        return [runner.dense(rep)]

    def describe(self, hp: dict[str, Any]) -> str:
        return "dense"

    def target_sparsity(self, section: dict[str, Any]) -> float | None:
        return 0.0

    def label(self, rows, methods: bool = True):
        return rows["kind"].astype(str).map(lambda _: "dense")
