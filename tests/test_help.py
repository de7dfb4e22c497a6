"""Help generated from the hyperparameter classes, and --print-config."""

import argparse
import dataclasses
import json
import re

import pytest
from test_data import write_idx_set

import prunelab
from prunelab import data, models
from prunelab.cli import LISTS, build_parser, main
from prunelab.densities import DISTRIBUTIONS
from prunelab.experiments import sweep
from prunelab.experiments.hparams import ABLATIONS, REWIND_CHOICES, SECTIONS, STRUCTURES
from prunelab.models.initializers import BN_INITS, FAN_MODES, INITIALIZERS
from prunelab.models.resnet_cifar import WIDE_RESNET_PATTERN
from prunelab.options import help_of, undocumented
from prunelab.training.settings import OPTIMIZERS, TrainSettings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def flag_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option or positional (by its first name) -> its help as shown (``%%`` unescaped)."""
    return {(a.option_strings or [a.dest])[0]: (a.help or "") % {}
            for a in parser._actions if not isinstance(a, argparse._HelpAction)}


def test_every_field_of_every_section_has_a_description():
    classes = [cls or TrainSettings for cls in SECTIONS.values()]
    assert TrainSettings in classes and len(classes) == 7
    for cls in classes:
        assert undocumented(cls) == [], cls.__name__
        for f in dataclasses.fields(cls):  # one line, and not the bare default of the old help
            assert "\n" not in help_of(f) and not help_of(f).startswith("(default")


def test_every_flag_of_every_command_has_help():
    found = commands()
    assert {"train", "run", "lottery", "gradual", "set", "rigl", "sweep", "ls", "show", "list", "report", "analyze",
            "demo"} <= set(found)
    for name, parser in found.items():
        for flag, text in flag_help(parser).items():
            assert text.strip(), f"prunelab {name} {flag} has no help"
            assert not re.fullmatch(r"\(default: [^)]*\)|\(required\)", text.strip()), f"{name} {flag}: {text}"


# flag -> its valid names, read here from the registries and lists themselves
NAMES = {
    "--model": models.names(),
    "--init": INITIALIZERS.names(),
    "--reinit-init": INITIALIZERS.names(),
    "--init-mode": FAN_MODES,
    "--bn-init": BN_INITS,
    "--dataset": data.names(),
    "--optimizer": OPTIMIZERS,
    "--method": list(prunelab.methods()),
    "--schedule": ["exponential", "linear"],
    "--scope": ["global", "layer"],
    "--distribution": list(DISTRIBUTIONS),
    "--structure": STRUCTURES,
    "--rewind-to": REWIND_CHOICES,
    "--executor": sweep.EXECUTORS,
    "registry": list(LISTS),
}


def test_name_valued_flags_list_their_registrys_names():
    seen = set()
    for command, parser in commands().items():
        helps = flag_help(parser)
        for flag, names in NAMES.items():
            if flag in helps:
                seen.add(flag)
                for name in names:
                    assert re.search(rf"\b{re.escape(name)}\b", helps[flag]), f"{command} {flag}: {name} missing"
        if command == "run":
            assert all(a in helps["--ablation"] for a in ABLATIONS)
        if command == "lottery":
            assert "shuffle, reinit" in helps["--ablation"] and "invert" not in helps["--ablation"]
    assert seen == set(NAMES)
    assert WIDE_RESNET_PATTERN in flag_help(commands()["train"])["--model"]


def test_a_new_criterion_appears_in_help_by_itself():
    name = "test_help_toy_criterion"
    prunelab.register_method(name, needs_data=False, default_iterations=3)(lambda model, mask, batch: {})
    try:
        run = flag_help(commands()["run"])
        assert name in run["--method"]
        assert f"3 for {name}" in run["--iterations"]
    finally:
        from prunelab.scores.registry import METHODS

        METHODS._items.pop(name)
        METHODS._meta.pop(name)


def test_optional_and_model_dependent_defaults_say_what_they_mean():
    run = flag_help(commands()["run"])
    # Tanaka et al. 2020 and Frankle et al. 2021, App. G: 100 iterations for SynFlow and iterative SNIP
    assert re.search(r"100 for [^;]*\bsynflow\b", run["--iterations"]) and "iterative_snip" in run["--iterations"]
    assert "1 otherwise" in run["--iterations"] and "None" not in run["--iterations"]
    assert "layer with --distribution" in run["--scope"] and "global otherwise" in run["--scope"]
    assert "l1_channel" in run["--scope"]  # channel criteria rank within each layer
    # Frankle et al. 2021, App. A.3: 160 epochs for ResNet-20 on CIFAR-10, 40 for LeNet
    assert "160ep for resnet20/cifar10" in run["--train"] and "40ep for lenet_300_100" in run["--train"]
    assert "80ep 120ep for resnet20/cifar10" in run["--milestones"]
    assert "the replicate's seed" in run["--data-seed"]
    assert run["--gamma"].endswith("default: 0.1")  # the same in every recipe: one value
    assert "75% of training" in flag_help(commands()["gradual"])["--end"]
    demo = flag_help(commands()["demo"])
    assert "default: 3" in demo["--epochs"]


def test_help_prints_and_exits_0(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert "[model] [dataset] [training] [pruning]" in out  # brackets shown literally, not read as markup
    assert "--print-config" in out and "\x1b[" not in out  # no colour codes when not on a terminal


# ---- --print-config ---------------------------------------------------------------------------------

def test_print_config_shows_the_recipe_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--model", "resnet20", "--dataset", "cifar10", "--print-config"])
    out = capsys.readouterr().out
    assert code == 0 and list(tmp_path.iterdir()) == []  # no runs/ folder, no data looked for
    cfg = tomllib.loads(out)
    t = cfg["training"]  # Frankle et al. 2021, App. A.3: the CIFAR ResNet recipe
    assert (t["train"], t["batch_size"], t["lr"], t["momentum"], t["weight_decay"]) == ("160ep", 128, 0.1, 0.9, 1e-4)
    assert t["milestones"] == ["80ep", "120ep"] and "data_seed" not in t
    assert cfg["model"]["model"] == "resnet20" and cfg["dataset"]["dataset"] == "cifar10" and cfg["seed"] == 0
    assert "# data_seed = (not set: the replicate's seed)" in out
    assert "lr = 0.1  # peak learning rate" in out


@pytest.fixture
def mnist_root(tmp_path):
    write_idx_set(tmp_path / "data" / "MNIST" / "raw", n_train=40, n_test=20, gz=True)
    return tmp_path / "data"


@pytest.mark.parametrize("command,extra", [
    ("train", []),
    ("run", ["--method", "snip", "--sparsity", "0.5", "--scope", "layer", "--batch-per-class", "2"]),
    ("lottery", ["--levels", "2", "--rewind-to", "finetune"]),
])
def test_print_config_run_id_is_the_id_of_the_run_and_reads_back(mnist_root, tmp_path, capsys, command, extra):
    args = [command, "--model", "lenet_300_100", "--dataset", "mnist", "--train", "1ep", "--batch-size", "10",
            "--lr", "0.05", "--root", tmp_path / "runs", "--data-root", mnist_root, "--no-progress", "--device", "cpu",
            *extra]
    args = [str(a) for a in args]
    assert main([*args, "--print-config"]) == 0
    out = capsys.readouterr().out
    printed = re.search(r"run id ([0-9a-f]{16})", out).group(1)
    assert not (tmp_path / "runs").exists()
    config = tmp_path / "config.toml"
    config.write_text(out)  # the printed text is a config that --config reads back to the same run
    assert main([command, "--config", str(config), "--root", str(tmp_path / "runs"), "--print-config"]) == 0
    assert re.search(r"run id ([0-9a-f]{16})", capsys.readouterr().out).group(1) == printed
    assert main(args) == 0  # the run itself: its folder is the printed id (the last level's, for lottery)
    summary = capsys.readouterr().out
    assert (tmp_path / "runs" / printed / "result.json").is_file()
    assert json.loads((tmp_path / "runs" / printed / "result.json").read_text())["id"] == printed
    assert printed in summary.splitlines()[-1]  # the table's "run" column holds run ids, not row numbers
