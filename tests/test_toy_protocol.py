"""A protocol owns everything about itself: one class, one dataclass and one registration, all in this file,
and the CLI, a sweep, ``ls``, ``show`` and the report take its runs without another module being edited.

The toy protocol prunes the initial network at random to ``sparsity`` and trains it; its label in the
report's legends is its own (:meth:`Protocol.label`), so the test can see that the report asked it.
"""

import dataclasses
import json

import pytest
from test_data import write_idx_set

import prunelab
from prunelab.cli import main
from prunelab.experiments import runfiles
from prunelab.experiments.hparams import canonicalize, run_hash, sections
from prunelab.experiments.protocols import PROTOCOLS, Protocol, register_protocol, unregister_protocol
from prunelab.experiments.protocols.base import sparse_result
from prunelab.options import option
from prunelab.validate import check_fraction


@dataclasses.dataclass(frozen=True)
class ToyHparams:
    sparsity: float = option(0.5, help="fraction of the covered weights pruned at random at initialization")
    note: str = option("plain", help="a word the toy's runs carry, to tell variants apart")

    def __post_init__(self) -> None:
        canonicalize(self, floats=("sparsity",))
        check_fraction(self.sparsity, "sparsity", "[0, 1)")


class Toy(Protocol):
    name = "toy"
    kind = "toy_kind"
    hparams = ToyHparams
    section = "toy"
    help = "a toy protocol of the tests: random pruning at initialization, then training"
    columns = {"sparsity": "sparsity_target", "note": "note"}

    def run_id(self, runner, rep, hp):
        return run_hash(self.kind, **rep.parts(), toy=hp)

    def run(self, runner, rep, hp):
        runner.check(rep)
        run_id = self.run_id(runner, rep, hp)
        return [runner.store.once(run_id, lambda: self._run(runner, rep, hp, run_id), self.hparams_record(rep, hp))]

    def _run(self, runner, rep, hp, run_id):
        folder = runner.begin(run_id, self.hparams_record(rep, hp))
        dense = runner.dense(rep)
        model = runner.model(rep)
        mask = prunelab.prune(model, "random", hp.sparsity, seed=rep.seed)
        res = runner.run_training(model, rep, folder, mask=mask, metrics_path=folder / runfiles.METRICS)
        return runner.finish(run_id, sparse_result(res, mask, model, dense, kind=self.kind))

    def describe(self, hp):
        return f"toy {hp['toy']['sparsity']} {hp['toy'].get('note', 'plain')}"

    def label(self, rows, methods=True):
        return "toy keeping " + (1 - rows["sparsity_target"].astype(float)).map("{:.0%}".format)


@pytest.fixture
def toy():
    protocol = register_protocol(Toy())
    yield protocol
    unregister_protocol(protocol.name)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=32, n_test=16, gz=True)
    return root


REPLICATE = ["--model", "lenet_300_100", "--dataset", "mnist", "--train", "1ep", "--batch-size", "16"]


def test_a_protocol_in_one_file_runs_through_the_cli_a_sweep_ls_show_and_the_report(toy, data_root, tmp_path,
                                                                                      capsys):
    root = tmp_path / "runs"
    common = ["--data-root", str(data_root), "--root", str(root), "--no-progress", "--device", "cpu"]
    assert sections()["toy"] is ToyHparams  # its config section comes from the registry

    # the CLI: a command with the dataclass's flags
    assert main(["toy", *REPLICATE, *common, "--sparsity", "0.75"]) == 0
    assert main(["toy", *REPLICATE, *common, "--sparsity", "1.5"]) == 2
    assert "sparsity must be a number in [0, 1)" in capsys.readouterr().err

    # a sweep of it, its section a grid axis; the run the CLI made is found, not redone
    spec = tmp_path / "toy.toml"
    spec.write_text('protocol = "toy"\nseeds = [0]\n[model]\nmodel = "lenet_300_100"\n[dataset]\ndataset = "mnist"\n'
                    '[training]\ntrain = "1ep"\nbatch_size = 16\n[toy]\nsparsity = [0.5, 0.75]\nnote = "swept"\n')
    assert main(["sweep", str(spec), "--workers", "1", *common]) == 0
    out = capsys.readouterr().out
    assert "2 toy jobs" in out and "jobs done: 2" in out

    # ls lists and describes its runs; show reads one back
    assert main(["ls", "--root", str(root)]) == 0
    listing = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    toys = [row for row in listing if row[1] == "toy_kind"]
    assert len(toys) == 3 and {" ".join(row[5:8]) for row in toys} == {"toy 0.75 plain", "toy 0.5 swept",
                                                                        "toy 0.75 swept"}
    assert all(row[-2] == "done" for row in toys)
    assert main(["show", toys[0][0], "--root", str(root)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["hparams"]["kind"] == "toy_kind" and shown["result"]["status"] == "done"

    # the report: its runs in the tables and in the figures, labelled by the protocol itself
    out_dir = tmp_path / "report"
    assert main(["report", "--root", str(root), "--out", str(out_dir)]) == 0
    manifest = json.loads((out_dir / "figures.json").read_text())
    captions = " ".join(f["caption"] for f in manifest["figures"])
    assert "toy keeping 25%" in captions and "toy keeping 50%" in captions


def test_unregistering_takes_the_protocol_out_everywhere(toy):
    unregister_protocol("toy")
    try:
        assert "toy" not in PROTOCOLS and "toy" not in sections()
        assert main(["toy", "--help"]) == 2  # no such command any more
    finally:
        register_protocol(toy)  # for the fixture to remove


def test_a_section_belongs_to_one_dataclass(toy):
    class Clash(Toy):
        name, kind = "clash", "clash_kind"
        hparams = dataclasses.make_dataclass("Other", [("x", int, dataclasses.field(default=0))], frozen=True)

    with pytest.raises(ValueError, match=r"section \[toy\] is protocol 'toy'"):
        register_protocol(Clash())
    with pytest.raises(ValueError, match=r"section \[model\] belongs to the replicate"):
        register_protocol(type("Bad", (Toy,), {"name": "bad", "kind": "bad_kind", "section": "model"})())
