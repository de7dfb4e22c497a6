"""The light commands never import torch (DESIGN.md: "Light commands (--version, --help, list, ls, show,
export) never import torch"): importing it takes seconds, which a command asked for a list or a version must
not cost. Each command runs in a fresh interpreter, and the test reads which heavy modules it imported
(no timing here: ``bench/cli_startup.py`` measures the times).

The registries' tables that make this possible (:mod:`prunelab.catalog`) are compared with the live
registries here too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_data import write_idx_set

from prunelab import catalog
from prunelab.cli import LISTS, build_parser, main
from prunelab.experiments.store import RunStore

HEAVY = ("torch", "torchvision")

# Runs ``prunelab ARGS`` in this interpreter and prints the heavy modules it imported, last.
PROBE = f"""
import sys
from prunelab.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("heavy:", *[m for m in {HEAVY!r} if m in sys.modules])
"""


def heavy_imports(*argv: str) -> list[str]:
    """The heavy modules ``prunelab ARGV`` imported, in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent.parent)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("heavy:"), proc.stdout + proc.stderr
    return last.split()[1:]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store with a dense run and a pruned one: LeNet-300-100 on 32 MNIST images, one epoch."""
    data = tmp_path_factory.mktemp("data")
    write_idx_set(data / "MNIST" / "raw", n_train=32, n_test=16, gz=True)
    root = tmp_path_factory.mktemp("store") / "runs"
    assert main(["run", "--model", "lenet_300_100", "--dataset", "mnist", "--method", "magnitude", "--sparsity",
                 "0.5", "--train", "1ep", "--batch-size", "16", "--data-root", str(data), "--root", str(root),
                 "--no-progress", "--device", "cpu"]) == 0
    assert len(RunStore(root).ids()) == 2
    return root


def commands() -> list[str]:
    return list(build_parser(lazy=True)._subparsers._group_actions[0].choices)


LIGHT = [("--version",), ("--help",), *((name, "--help") for name in commands()), ("list",),
         *(("list", name) for name in LISTS)]


@pytest.mark.parametrize("argv", LIGHT, ids=" ".join)
def test_help_version_and_lists_import_no_torch(argv):
    assert heavy_imports(*argv) == []


def test_ls_and_show_of_a_store_import_no_torch(store, tmp_path):
    run_id = RunStore(store).ids()[0]
    assert heavy_imports("ls", "--root", str(store)) == []
    assert heavy_imports("ls", "--root", str(tmp_path / "empty")) == []
    assert heavy_imports("show", run_id[:8], "--root", str(store)) == []


def test_export_of_a_store_imports_no_torch(store, tmp_path):
    assert heavy_imports("export", "--root", str(store), "--out", str(tmp_path / "export")) == []
    assert (tmp_path / "export" / "runs.csv").is_file()


def test_the_catalog_holds_what_the_registries_hold():
    """A new criterion, model, dataset, ... is added to prunelab/catalog.py too (``python -m prunelab.catalog``
    prints the tables as the registries have them). Compared in a fresh process: other tests register
    criteria and models of their own in this one."""
    script = (
        "from prunelab import catalog\n"
        "for kind, (_, _, table) in catalog.KINDS.items():\n"
        "    live = [tuple(e) if isinstance(e, (tuple, list)) else e for e in catalog.live(kind)]\n"
        "    if live != table:\n"
        "        print(f'{kind}: the registry has {live!r}')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "", f"prunelab/catalog.py differs from the registries:\n{out.stdout}"


def test_the_catalog_reads_a_registry_once_it_is_imported():
    """A criterion registered at run time (the registry is then imported) is listed and accepted."""
    import prunelab
    from prunelab.scores import METHODS

    prunelab.register_method("test_catalog_method", needs_data=False,
                             description="a test's criterion (Nobody 2026)")(lambda model, mask, batch: {})
    try:
        assert "test_catalog_method" in catalog.names("methods")
        assert ("test_catalog_method", "a test's criterion", "Nobody 2026") in catalog.entries("methods")
    finally:
        METHODS.unregister("test_catalog_method")
