"""A damaged run folder never takes the store down.

A property-based fuzzer (hypothesis, fixed seed, bounded) writes random JSON, mutations of the real
file and random bytes into each file of one run of a small real store, then calls every reader: ``ls``,
``show``, ``analyze`` (CLI), ``runs_table``, ``layers_table`` (library) and ``RunStore.result`` (what
the protocols and the sweep planner read). No reader may raise anything but the documented errors
(the CLI turns ValueError/OSError into one line and exit status 2), and the undamaged runs must still
be listed. Writers are tested after it: a rerun sets a damaged file aside and recomputes or rewrites it.
"""

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from test_data import write_idx_set

from prunelab.cli import main
from prunelab.experiments import runfiles
from prunelab.experiments.runner import SESSION_FIELDS
from prunelab.experiments.store import RunStore
from prunelab.io import DamagedFileWarning
from prunelab.reports.tables import layers_table, runs_table

FUZZ_SEED = 20261130
EXAMPLES_PER_FILE = 25
FILES = ["hparams.json", "result.json", "provenance.json", "mask.pt", "metrics.jsonl"]
VOLATILE = {"wall_time", "finished_at", "started_at", *SESSION_FIELDS}


def cli_args(data_root, root, method="magnitude"):
    return ["run", "--model", "lenet_300_100", "--dataset", "mnist", "--method", method, "--sparsity", "0.5",
            "--train", "1ep", "--batch-size", "16", "--data-root", str(data_root), "--root", str(root),
            "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=32, n_test=16, gz=True)
    return root


@pytest.fixture(scope="module")
def pristine(data_root, tmp_path_factory):
    """A store of three finished runs: one dense replicate and two pruned runs (magnitude, random)."""
    root = tmp_path_factory.mktemp("pristine") / "runs"
    assert main(cli_args(data_root, root)) == 0
    assert main(cli_args(data_root, root, method="random")) == 0
    ids = RunStore(root).ids()
    assert len(ids) == 3
    return root


def victim_of(root: Path) -> str:
    """The magnitude run: the one whose files are damaged."""
    store = RunStore(root)
    return next(i for i, hp, _ in store.runs() if hp.get("pruning", {}).get("method") == "magnitude")


# ---- what is written into a file ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """The real file with one change: a key dropped or a value replaced (at any depth), cut short, or a byte
    flipped."""
    how = draw(st.sampled_from(["drop", "replace", "truncate", "flip"]))
    if how in ("truncate", "flip") or not original.strip().startswith(b"{"):
        at = draw(st.integers(0, max(0, len(original) - 1)))
        if how == "truncate":
            return original[:at]
        return original[:at] + bytes([original[at] ^ draw(st.integers(1, 255))]) + original[at + 1:]
    obj = json.loads(original)
    node = obj
    while True:  # walk down to a random table
        keys = list(node)
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        if isinstance(node[key], dict) and node[key] and draw(st.booleans()):
            node = node[key]
            continue
        if how == "drop":
            del node[key]
        else:
            node[key] = draw(json_values)
        break
    return json.dumps(obj).encode()


def contents(original: bytes):
    return st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
        mutated(original),
        st.sampled_from([b"", b"{}", b"[]", b"null", b'"x"', b"\xff\xfe{", b'{"status": "done"}',
                         b'{"status": "done", "test_accuracy": "high"}', b"[" * 5000]),
    )


# ---- the property ------------------------------------------------------------------------------

def read_everything(root: Path, victim: str, capsys) -> None:
    """Every reader, each allowed only its documented outcomes."""
    others = [i for i in RunStore(root).ids() if i != victim]
    capsys.readouterr()
    code = main(["ls", "--root", str(root)])
    out, err = capsys.readouterr()
    assert code in (0, 1) and "Traceback" not in err, err
    assert all(i in out for i in others), out  # undamaged runs are still listed
    if code == 1:  # skipped: one warning line naming the file, then the summary line
        assert victim in err and "damaged" in err and err.count("\n") == 2, err
    for command in (["show", str(root / victim)], ["show", victim[:6], "--root", str(root)],
                    ["analyze", victim, "--root", str(root)]):
        code = main(command)
        out, err = capsys.readouterr()
        assert code in (0, 1, 2) and "Traceback" not in err, (command, err)
        if code == 2:
            assert err.startswith("prunelab: error: ") and err.count("\n") == 1, (command, err)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedFileWarning)
        table = runs_table(root)
        layers_table(root)
        store = RunStore(root)
        for run_id in store.ids():
            result = store.result(run_id)  # what the protocols and the sweep read: valid or None
            assert result is None or result["status"] in ("done", "diverged")
    assert set(others) <= set(table["id"])


@pytest.mark.parametrize("name", FILES)
def test_no_damaged_file_takes_the_store_down(pristine, capsys, name):
    victim = victim_of(pristine)
    original = (pristine / victim / name).read_bytes()

    @seed(FUZZ_SEED)
    @settings(max_examples=EXAMPLES_PER_FILE, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=contents(original))
    def fuzz(data):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "runs"
            shutil.copytree(pristine, root)
            (root / victim / name).write_bytes(data)
            read_everything(root, victim, capsys)

    fuzz()


def test_the_reader_names_the_file_and_says_why(tmp_path):
    path = tmp_path / "result.json"
    for data, why in [(b"{}", "has no 'status'"), (b"[1]", "the file must be an object, not a list"),
                      (b"\x00\xff", "not UTF-8 text (byte 0xff at offset 1)"),
                      (b'{"status": "done"}', "has no 'test_accuracy'"),
                      (b'{"status": "done", "test_accuracy": 1, "layer_sparsity": {"fc": "x"}}',
                       "layer_sparsity ['fc'] must be a number, not a string"),
                      (b'{"status": "don', "not valid JSON")]:
        path.write_bytes(data)
        with pytest.raises(runfiles.DamagedRunFile) as info:
            runfiles.read(path)
        assert str(info.value).startswith(f"{path} is damaged: ") and why in str(info.value)
    assert runfiles.read(tmp_path / "missing" / "result.json") is None


# ---- writers: a rerun sets the damaged file aside and recomputes or rewrites it ------------------

@pytest.mark.parametrize("name,data,finished", [
    ("result.json", b"[]", True), ("result.json", b"\x89PNG\r\n\x1a\n", True), ("result.json", b'{"status": 3}', True),
    ("hparams.json", b"{}", True), ("hparams.json", b"\xff" * 8, False),
    ("provenance.json", b'{"sessions": {}}', False),  # read only when a session of the run begins
])
def test_a_rerun_recovers_a_damaged_file(data_root, pristine, tmp_path, capsys, name, data, finished):
    root = tmp_path / "runs"
    shutil.copytree(pristine, root)
    victim = victim_of(root)
    good = {f: runfiles.read(root / victim / f) for f in ("hparams.json", "result.json")}
    (root / victim / name).write_bytes(data)
    if not finished:
        (root / victim / "result.json").unlink()
    capsys.readouterr()
    assert main(cli_args(data_root, root)) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "warning" in line]
    assert len(warned) == 1 and f"{victim}/{name}" in warned[0] and "set aside" in warned[0], err
    assert (root / victim / f"{name}.corrupt").read_bytes() == data  # kept as evidence, never deleted
    again = {f: runfiles.read(root / victim / f) for f in ("hparams.json", "result.json")}
    assert again["hparams.json"] == good["hparams.json"]
    strip = lambda r: {k: v for k, v in r.items() if k not in VOLATILE}  # noqa: E731
    assert strip(again["result.json"]) == strip(good["result.json"])
    assert main(["ls", "--root", str(root)]) == 0
    if name == "provenance.json":  # a fresh record of this session replaced the damaged one
        assert len(runfiles.read(root / victim / name)["sessions"]) == 1


def test_report_reads_the_rest_of_a_damaged_store(pristine, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(pristine, root)
    victim = victim_of(root)
    (root / victim / "result.json").write_bytes(b"\x00\x01binary")
    capsys.readouterr()
    assert main(["report", "--root", str(root), "--out", str(tmp_path / "report")]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [  # once, although the report reads the store twice (runs and layers)
        f"prunelab: warning: skipped run {victim}: {root / victim / 'result.json'} is damaged: not valid JSON "
        "(Expecting value at line 1 column 1)",
        "prunelab: 1 run(s) skipped because of damaged files (named above)"]
    runs = (tmp_path / "report" / "runs.csv").read_text()
    assert victim not in runs and all(i in runs for i in RunStore(root).ids() if i != victim)
    assert (root / victim / "result.json").read_bytes() == b"\x00\x01binary"  # a listing changes nothing
