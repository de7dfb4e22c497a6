"""``prunelab list methods|models|datasets|protocols``: each registry as an aligned table of name,
one-line description and citation, read from the registries themselves."""

import re
from pathlib import Path

import pytest

import prunelab
from prunelab import data, models
from prunelab.cli import main
from prunelab.experiments.protocols import PROTOCOLS

REFERENCES = (Path(__file__).resolve().parents[1] / "docs" / "references.md").read_text(encoding="utf-8")
CITATION = re.compile(r"\b((?:(?:de|van|von) )?[A-Z][\w-]+(?: et al\.| & [A-Z][\w-]+)|Krizhevsky),? ((?:19|20)\d\d)\b")


def table(capsys, registry):
    assert main(["list", registry]) == 0
    out = capsys.readouterr().out.splitlines()
    header, rule, rows = out[0], out[1], out[2:]
    starts = [header.index("name"), header.index("description"), header.index("citation")]
    assert starts[0] == 0 and set(rule) == {"-", " "}
    parsed = {}
    for line in rows:  # every row's columns start where the header's do
        if line == "" or line.endswith(":"):  # a group's heading (prunelab list methods: by family)
            continue
        name = line[: header.index("year") if "year" in header else starts[1]].rstrip()
        description = line[starts[1]: starts[2]].rstrip()
        citation = line[starts[2]:]
        assert name and " " not in name and description and line[starts[1] - 2: starts[1]] == "  ", line
        parsed[name] = (description, citation)
    return parsed


def test_methods(capsys):
    rows = table(capsys, "methods")
    assert sorted(rows) == sorted(prunelab.methods())
    for name, (description, citation) in rows.items():
        full = prunelab.get_method(name).description
        assert full.startswith(description)
        assert citation == "-" or f"({citation})" in full
    assert rows["snip"][1] == "Lee et al. 2019"
    assert rows["synflow"][1] == "Tanaka et al. 2020"
    assert rows["grasp"][1].startswith("Wang et al. 2020")
    assert rows["l1_channel"][1] == "Paganini & Forde 2020, §3.1"
    assert rows["magnitude"] == ("|w|", "Han et al. 2015; Frankle et al. 2021, §3")


def test_methods_are_grouped_by_family_and_year(capsys):
    """Each criterion under the heading of its family, by year within it; every built-in one has both."""
    from prunelab.catalog import FAMILIES

    assert main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    year_at = lines[0].index("year")
    heading, seen = None, {}
    for line in lines[2:]:
        if line.endswith(":"):
            heading = line[:-1]
        elif line and line[year_at: year_at + 4].isdigit():  # criteria other tests register have no year
            seen[line.split()[0]] = (heading, int(line[year_at: year_at + 4]))
    from prunelab.catalog import METHODS

    for name, method in ((row[0], prunelab.get_method(row[0])) for row in METHODS):  # the built-in ones
        assert method.family in FAMILIES and method.year >= 2015, name
        assert seen[name] == (FAMILIES[method.family], method.year), name
    assert seen["snip"] == ("at initialization, data-dependent", 2019)
    assert seen["synflow"] == ("at initialization, data-free", 2020)
    years = [seen[n][1] for n in seen if seen[n][0] == FAMILIES["init_data"]]
    assert years == sorted(years)


def test_models(capsys):
    rows = table(capsys, "models")
    assert list(rows) == models.names()
    for name, (_, citation) in rows.items():
        assert citation == models.MODELS.meta(name)["paper"]
    assert rows["conv2"][1] == "Frankle & Carbin 2019, Fig. 2"
    assert rows["vgg16"][0] == "VGG16 for CIFAR"
    assert all(len(description) <= 72 for description, _ in rows.values())


def test_datasets(capsys):
    rows = table(capsys, "datasets")
    assert list(rows) == data.names()
    for name, (description, citation) in rows.items():
        assert (description, citation) == (data.info(name)["description"], data.info(name)["citation"])
    assert rows["mnist"][1] == "LeCun et al. 1998"


def test_protocols(capsys):
    rows = table(capsys, "protocols")
    assert list(rows) == list(PROTOCOLS)
    for name, (description, citation) in rows.items():
        meta = PROTOCOLS.meta(name)
        assert meta["help"].startswith(description)
        assert citation == meta["citation"]
    assert rows["rigl"][1].startswith("Evci et al. 2020")
    assert rows["set"] == ("sparse evolutionary training: drop smallest, regrow at random", "Mocanu et al. 2018")


@pytest.mark.parametrize("registry", ["methods", "models", "datasets", "protocols"])
def test_every_listed_citation_has_a_reference_entry(capsys, registry):
    rows = table(capsys, registry)
    cited = {f"{a} {y}" for _, citation in rows.values() for a, y in CITATION.findall(citation)}
    assert cited, registry
    assert all(f"**{key}**" in REFERENCES for key in cited), cited


def test_unknown_registry_is_one_line_and_exit_2(capsys):
    assert main(["list", "modles"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "unknown registry 'modles'" in err and "did you mean 'models'" in err
    assert all(name in err for name in ("methods", "models", "datasets", "protocols"))


def test_settings_document_every_key_of_every_config_section(capsys):
    """``prunelab list settings`` is the TOML documentation: one row per field of each section's dataclass,
    with the field's own description."""
    import dataclasses

    from prunelab.experiments.hparams import SECTIONS
    from prunelab.options import help_of
    from prunelab.training import TrainSettings

    assert main(["list", "settings"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    assert header.split() == ["name", "description", "default"]
    rows = {line.split()[0]: line for line in lines[2:]}
    expected = {f"{section}.{f.name}": f for section, cls in SECTIONS.items()
                for f in dataclasses.fields(cls or TrainSettings)}
    assert set(rows) == set(expected)
    for key, f in expected.items():
        assert help_of(f) and help_of(f) in rows[key], key
    assert "recipe of the model (LeNets: 40ep)" in rows["training.train"]
    assert "one of: " in rows["pruning.method"] and "synflow" in rows["pruning.method"]


def test_list_alone_names_what_can_be_listed(capsys):
    from prunelab.cli import LISTS

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:2 + len(LISTS)]] == list(LISTS)
    assert "prunelab list NAME" in lines[-1]


@pytest.mark.parametrize("value", ["-3ep", "-100it", "-2ep50it"])
def test_a_negative_duration_reaches_the_duration_parser(value, capsys):
    assert main(["run", "--model", "lenet_300_100", "--dataset", "fashion_mnist", "--train", value]) == 2
    err = capsys.readouterr().err
    assert f"malformed duration '{value}'" in err and err.count("\n") == 1


def test_options_list_each_criterions_own_options_with_their_defaults(capsys):
    assert main(["list", "options"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    rows = {line.split()[0]: line.split()[1:] for line in lines}
    assert rows["prospr"] == ["steps=3", "lr=0.1", "momentum=0.0", "first_order=false", "batchnorm_train=true"]
    assert rows["grasp"] == ["temperature=200.0", "batchnorm_train=true"]
    assert "magnitude" not in rows and "phew" not in rows  # no option a run may set (phew's seed and sparsity: prune's)
    for name, items in rows.items():  # each one reads back as the criterion's defaults
        method = prunelab.get_method(name)
        assert method.parse_options(items) == dict(sorted(method.text_options.items()))
