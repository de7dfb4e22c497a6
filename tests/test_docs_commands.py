"""Docs that run: every shell command of README.md and docs/guide.md is run, with tiny budgets, on generated data.

The rule for what is a command: every line of a fenced block marked ``sh``, ``bash``, ``shell`` or ``console``
(a leading ``$ `` prompt is dropped, a trailing backslash continues the line, ``# ...`` comments are
dropped). Commands in tables or in prose are not run (the README's table repeats the blocks' commands).
Each command is run unless it matches one of :data:`NOT_RUN`, each with its reason.

Tiny budgets, made by the test and never by an option of prunelab (nothing in the product changes its
results behind the user's back):

- every duration written in a command other than ``0it``/``0ep`` becomes ``2it`` (``--prune-at 1000it``,
  ``--rewind-to 1000it``, ``--train 160ep`` ...), and every protocol command gets ``--train 4it
  --batch-size 8 --milestones --warmup 0it --eval-every 4it`` plus ``--every 2it`` and ``--iterations 2``
  where its protocol has these settings; ``--levels N`` becomes ``--levels 2``;
- ``sweep`` gets the same through ``--set``, one seed, and the first value of every axis of its spec;
  ``--workers N`` becomes ``--workers 1`` (worker processes are tested in tests/test_sweep.py);
- ``demo`` gets ``--epochs 1``;
- everything runs on CPU, without progress bars, with ``--data-root`` a folder of tiny generated MNIST,
  Fashion-MNIST and CIFAR-10 files in their real formats, and in a fresh folder (so ``runs/`` is new);
- ``RUN_ID`` and the example id prefix ``3f2a`` stand for a pruned run made by the commands before;
- ``> FILE`` at the end writes the command's output to FILE, as the shell would;
- ``NAME=value`` words before the command set environment variables for that command only
  (``WANDB_MODE=offline``), as the shell would.

Commands run in the order of the docs, in one process (``prunelab.cli.main``), sharing one run store; a
command that appears twice runs once.
"""

import json
import re
import shlex
from pathlib import Path

import pytest
import torchvision
from test_data import write_cifar, write_idx_set

from prunelab.cli import main
from prunelab.experiments.hparams import read_toml
from prunelab.experiments.protocols import PROTOCOLS
from prunelab.experiments.store import RunStore

REPO = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/guide.md"]
SHELL = {"sh", "bash", "shell", "console"}

NOT_RUN = {  # pattern (searched in the command) -> why it is not run here
    r"^make (demo|test)\b": "builds .venv and installs the package (what a fresh clone and .ci/run do); `make test` "
                           "runs this suite",
    r"^pip install\b": "needs the network",
    r"^torchrun\b": "needs 8 GPUs and ImageNet; DDP is tested with 2 CPU processes in tests/test_distributed.py",
    r"--executor slurm": "needs a Slurm cluster; tests/test_slurm.py runs sweeps on one (scripts/slurm/up.sh)",
    r"scripts/slurm/|^sinfo\b": "brings up (or asks) a Slurm cluster, as root; .ci/run runs scripts/slurm/up.sh",
    r"^python -m prunelab\.training\.sparse_crossover\b": "times layers dense and sparse (seconds each) into this "
    "machine's cache; tests/test_sparse_kernels.py measures into a test cache and checks the printout",
}
DURATION = re.compile(r"^(\d+ep)?(\d+it)?$")
TINY_TRAINING = ["--train", "4it", "--batch-size", "8", "--milestones", "--warmup", "0it", "--eval-every", "4it"]
COMMON = ["--device", "cpu", "--no-progress"]


def doc_commands(path: Path) -> list[str]:
    """The shell commands of the fenced sh/bash/shell/console blocks of a markdown file, in order."""
    commands, block, pending = [], None, ""
    for line in path.read_text().splitlines():
        fence = re.match(r"^\s*```(\w*)", line)
        if fence:
            block = None if block is not None else fence.group(1)
            continue
        if block not in SHELL:
            continue
        text = re.sub(r"^\s*\$ ", "", line)
        text = re.sub(r"(^|\s)#.*$", "", text).rstrip()  # a comment: "#" at the start or after a space
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        text = (pending + text).strip()
        pending = ""
        if text:
            commands.append(text)
    return commands


def all_commands() -> list[tuple[str, str]]:
    return [(doc, cmd) for doc in DOCS for cmd in doc_commands(REPO / doc)]


ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def split_env(command: str) -> tuple[dict[str, str], str]:
    """``("WANDB_MODE=offline prunelab ...")`` -> ``({"WANDB_MODE": "offline"}, "prunelab ...")``."""
    env, words = {}, command.split(" ")
    while words and ENV_WORD.match(words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, " ".join(words)


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN.items() if re.search(pattern, command)), None)


def test_the_docs_have_commands_and_every_command_is_run_or_skipped_with_a_reason():
    commands = all_commands()
    assert len(commands) >= 30
    def runnable(c):
        return split_env(c)[1].startswith(("prunelab ", "python -m prunelab ")) or skip_reason(c)

    assert all(runnable(c) for _, c in commands), [c for _, c in commands if not runnable(c)]
    assert not any("repro/sota_at_init.toml" in c for _, c in commands)  # a spec that never existed


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_idx_set(root / "MNIST" / "raw", n_train=200, n_test=20, gz=True)
    write_idx_set(root / "FashionMNIST" / "raw", n_train=200, n_test=20, gz=True, seed=1)
    written = write_cifar(root, "cifar10", n_per_file=40, n_test=20)
    md5, cls = written["md5"], torchvision.datasets.CIFAR10  # torchvision checks our files' own checksums
    monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f in written["train_files"]])
    monkeypatch.setattr(cls, "test_list", [[written["test_file"], md5[written["test_file"]]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[written["meta"]]})
    return root


def tiny_argv(command: str, data_root: Path, store: RunStore) -> list[str]:
    """The command's arguments (after ``prunelab``) with the tiny budgets of the module docstring."""
    words = shlex.split(command)
    if len(words) > 2 and words[-2] == ">":
        words = words[:-2]
    words = words[3:] if words[:3] == ["python", "-m", "prunelab"] else words[1:]
    name, args = words[0], words[1:]
    if any(w in ("RUN_ID", "3f2a") for w in args):
        pruned = [run_id for run_id, hp, result in store.runs() if hp["kind"] == "prune" and result]
        args = [pruned[0] if w in ("RUN_ID", "3f2a") else w for w in args]
    args = ["2it" if DURATION.match(w) and w not in ("0it", "0ep") and w[:1] != "0" else w for w in args]
    args = [str(REPO / w) if (REPO / w).is_file() else w for w in args]
    for flag, tiny in (("--workers", "1"), ("--levels", "2")):
        if flag in args:
            args[args.index(flag) + 1] = tiny
    data = ["--data-root", str(data_root)]
    if name in PROTOCOLS:
        fields = getattr(PROTOCOLS.get(name).hparams, "__dataclass_fields__", {})
        tiny = [x for key, value in (("every", "2it"), ("iterations", "2")) if key in fields
                for x in (f"--{key}", value)]
        return [name, *args, *TINY_TRAINING, *tiny, *data, *COMMON]
    if name == "sweep":
        spec = read_toml(args[0])
        axes = [f"{section}.{key}={json.dumps(values[0])}"
                for section, table in spec.items() if isinstance(table, dict) and section != "slurm"
                for key, values in table.items() if isinstance(values, list) and key != "milestones"]
        sets = ["training.train=4it", "training.batch_size=8", "training.milestones=[]", "training.warmup=0it",
                "seeds=[0]", *axes]
        return [name, *args, *(x for s in sets for x in ("--set", s)), *data, *COMMON]
    if name == "demo":
        return [name, *args, "--epochs", "1", *data, *COMMON]
    return [name, *args]


def test_every_docs_command_runs(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = RunStore(tmp_path / "runs")
    ran, seen = [], set()
    for doc, command in all_commands():
        if skip_reason(command) or command in seen:
            continue
        seen.add(command)
        env, line = split_env(command)
        argv = tiny_argv(line, tiny_data, store)
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            code = main(argv)
        out = capsys.readouterr()
        redirect = re.search(r"\s>\s*(\S+)$", command)
        if redirect:
            (tmp_path / redirect.group(1)).write_text(out.out)
        assert code == 0, f"{doc}: `{command}` ran as `prunelab {shlex.join(argv)}` and exited {code}: {out.err}"
        ran.append(argv[0])
    assert {"train", "run", "lottery", "gradual", "rigl", "set", "sweep", "report", "analyze", "ls", "show",
            "demo"} <= set(ran)
    assert (tmp_path / "report" / "index.html").is_file()


def test_a_missing_dataset_names_a_command_that_fetches_it(tmp_path, capsys, monkeypatch):
    """The error's fetch command is real Python that downloads into the --data-root given (no such CLI flag)."""
    import prunelab.data

    assert main(["train", "--model", "resnet20", "--dataset", "cifar10", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    code = re.search(r'python -c "(.*)"', err).group(1)
    calls = []
    monkeypatch.setattr(prunelab.data, "load", lambda *args, **kwargs: calls.append((args, kwargs)))
    exec(code, {})
    assert calls == [(("cifar10",), {"data_root": str(tmp_path), "download": True})]
    assert "--download" not in err


def test_the_readmes_layout_names_every_module_of_the_package_and_only_those():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    layout = text[text.index("## Layout"):text.index("## Reference numbers")]
    named = set(re.findall(r"`([a-z_]+(?:\.py|/))`", layout)) - {"prunelab/", "tests/", "bench/", "repro/"}
    package = {p.name + ("/" if p.is_dir() else "") for p in (root / "prunelab").iterdir()
               if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert named == package, (sorted(named - package), sorted(package - named))
