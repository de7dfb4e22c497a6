import argparse
import dataclasses
import hashlib
import json

import pytest

from prunelab.experiments.hparams import (
    add_dataclass_flags,
    dataclass_from_flags,
    nondefault_fields,
    run_hash,
)
from prunelab.training import TrainSettings


def parse(argv):
    p = argparse.ArgumentParser()
    add_dataclass_flags(p, TrainSettings)
    return dataclass_from_flags(TrainSettings, p.parse_args(argv))


def test_flags_are_generated_and_typed():
    s = parse(["--lr", "0.05", "--batch-size", "64", "--milestones", "80ep", "120ep", "--momentum", "0.9",
               "--nesterov", "--data-seed", "3"])
    assert s == TrainSettings(lr=0.05, batch_size=64, milestones=("80ep", "120ep"), momentum=0.9, nesterov=True,
                              data_seed=3)
    assert parse([]) == TrainSettings()


def test_boolean_flags_parse_correctly():
    assert parse(["--momentum", "0.9", "--nesterov"]).nesterov is True
    assert parse(["--momentum", "0.9", "--no-nesterov"]).nesterov is False
    with pytest.raises(SystemExit):  # "--nesterov False" is not silently true (the type=bool trap)
        parse(["--nesterov", "False"])


def test_flags_override_a_base_recipe_only_where_given():
    base = TrainSettings(train="160ep", lr=0.1, momentum=0.9)
    p = argparse.ArgumentParser()
    add_dataclass_flags(p, TrainSettings)
    s = dataclass_from_flags(TrainSettings, p.parse_args(["--lr", "0.2"]), base=base)
    assert (s.train, s.lr, s.momentum) == ("160ep", 0.2, 0.9)


def test_hash_uses_only_nondefault_fields():
    s = TrainSettings(lr=0.05)
    assert nondefault_fields(s) == {"lr": 0.05}
    # independent computation of the documented canonical form
    canonical = {"kind": "train", "model": "lenet", "training": {"lr": 0.05}}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    assert run_hash("train", model="lenet", training=s) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_adding_a_defaulted_field_keeps_hashes():
    @dataclasses.dataclass(frozen=True)
    class V1:
        a: int = 1
        b: str = "x"

    @dataclasses.dataclass(frozen=True)
    class V2:
        a: int = 1
        b: str = "x"
        c: float = 0.5  # new field, with a default

    assert run_hash("k", hp=V1(a=3)) == run_hash("k", hp=V2(a=3))
    assert run_hash("k", hp=V1(a=3)) != run_hash("k", hp=V2(a=3, c=0.7))



# Stored hashes: if one of these changes, every existing run store silently stops matching.
def test_stored_hashes_are_stable():
    h = run_hash("train", model="lenet_300_100", dataset="fashion_mnist", seed=0, training=TrainSettings())
    assert h == "8593d4a96ae73b52"
    cifar = TrainSettings(train="160ep", momentum=0.9, milestones=("80ep", "120ep"), weight_decay=1e-4)
    assert run_hash("train", model="resnet20", dataset="cifar10", seed=3, training=cifar) == "1cba9dfecd45211c"


def test_stored_protocol_hashes_are_stable():
    from prunelab.experiments.hparams import DataHparams, LotteryHparams, ModelHparams, PruneHparams
    from prunelab.experiments.protocols import lottery_id, prune_id
    from prunelab.experiments.runner import Replicate
    from prunelab.training import recipe

    rep = Replicate(ModelHparams("lenet_300_100"), DataHparams("fashion_mnist"),
                    recipe("lenet_300_100", "fashion_mnist"), 0)
    assert prune_id(rep, PruneHparams(method="snip", sparsity=0.9)) == "dff883f282e77cce"
    assert lottery_id(rep, LotteryHparams(levels=5), 3) == "83da5f6a7a3c031d"
    # a reinit run of repro/03a_ablations_at_init.toml, finished before reinit_init existed
    ten = dataclasses.replace(rep, training=dataclasses.replace(rep.training, train="10ep"))
    assert prune_id(ten, PruneHparams(method="grasp", sparsity=0.737856, ablation="reinit")) == "08616be94e21d874"
    assert prune_id(ten, PruneHparams(method="grasp", sparsity=0.737856, ablation="reinit",
                                      reinit_init="xavier_normal")) != "08616be94e21d874"


def test_reinit_init_names_an_initializer_and_needs_the_reinit_ablation():
    from prunelab.experiments.hparams import PruneHparams

    assert PruneHparams(ablation="reinit", reinit_init="xavier_normal").reinit_init == "xavier_normal"
    with pytest.raises(ValueError, match="unknown reinit_init 'xavier'; did you mean 'xavier_normal'"):
        PruneHparams(ablation="reinit", reinit_init="xavier")
    with pytest.raises(ValueError, match=r"needs ablation 'reinit' \(got none\)"):
        PruneHparams(reinit_init="xavier_normal")
    with pytest.raises(ValueError, match=r"needs ablation 'reinit' \(got 'shuffle'\)"):
        PruneHparams(ablation="shuffle", reinit_init="xavier_normal")


def test_toml_config_sections_keys_and_types(tmp_path):
    from prunelab.experiments.hparams import load_toml

    good = tmp_path / "good.toml"
    good.write_text('seed = 3\n[model]\nmodel = "resnet20"\n[training]\nmilestones = ["80ep"]\nnesterov = true\n'
                    'momentum = 0.9\n[pruning]\nmethod = "snip"\nsparsity = 0.9\n')
    cfg = load_toml(good)
    assert cfg["seed"] == 3 and cfg["training"]["milestones"] == ("80ep",) and cfg["pruning"]["method"] == "snip"
    for text, message in [
        ('[modle]\nmodel = "x"\n', "did you mean 'model'"),
        ('[training]\nlrr = 0.1\n', "did you mean 'lr'"),
        ('[training]\nlr = "fast"\n', "lr must be float"),
        ('[training]\nnesterov = 1\n', "nesterov must be bool"),
        ('seed = "zero"\n', "seed must be an integer"),
        ('[training\n', "not valid TOML"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_toml(bad)
    with pytest.raises(FileNotFoundError):
        load_toml(tmp_path / "missing.toml")


def test_check_section_returns_the_table_it_checked():
    """check_section once reassigned ``values`` inside its loop over ``values`` and returned the last key's axis
    (``[0.5, 0.9]`` here) instead of the table."""
    from prunelab.experiments.hparams import check_section

    table = {"method": "snip", "sparsity": [0.5, 0.9]}
    assert check_section("spec.toml", "pruning", table, grid=True) == {"method": "snip", "sparsity": [0.5, 0.9]}
    assert check_section("c.toml", "lottery", {"levels": 3, "rate": 0.5}) == {"levels": 3, "rate": 0.5}
    with pytest.raises(ValueError, match=r"config c.toml: unknown section 'prunning'; did you mean 'pruning'\?"):
        check_section("c.toml", "prunning", {})


def test_a_criterion_option_at_its_default_is_the_run_without_it():
    """ProsPr's default is 3 steps (Alizadeh et al. 2022): --method-options steps=3 is the run with no option,
    one run id; another value is another run."""
    import inspect

    from prunelab.experiments.protocols.prune_at import PruneHparams
    from prunelab.scores.prospr import prospr

    default = inspect.signature(prospr).parameters["steps"].default
    plain, explicit = PruneHparams(method="prospr"), PruneHparams(method="prospr", method_options=(f"steps={default}",))
    assert explicit == plain and explicit.method_options == ()
    assert PruneHparams(method="prospr", method_options=(f"steps={default + 1}",)) != plain


def test_an_n_m_pattern_refuses_the_shuffle_ablation():
    from prunelab.experiments.protocols.prune_at import PruneHparams

    with pytest.raises(ValueError, match="shuffle.*breaks the groups of pattern 2:4"):
        PruneHparams(method="snip", sparsity=0.5, pattern="2:4", ablation="shuffle")
    PruneHparams(method="snip", sparsity=0.5, pattern="2:4", ablation="reinit")  # reinit keeps the mask
