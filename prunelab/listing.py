"""``prunelab list``: the registries as tables (names, one-line descriptions, citations), and every config key.

Read from :mod:`prunelab.catalog`, so listing imports no torch; full references in docs/references.md.
"""

from __future__ import annotations

from prunelab import catalog
from prunelab.experiments.protocols import PROTOCOLS

__all__ = ["LISTS", "cmd_list", "print_table"]

OTHER_METHODS = "other criteria"  # the heading of criteria registered without a family


def _list_methods() -> list[list[str]]:
    """name, year, description, citation, grouped under the heading of the criterion's family
    (:data:`prunelab.catalog.FAMILIES`, in that order; a criterion registered without one last), by year
    within a family."""
    groups = {row[0]: (row[1], row[2]) for row in catalog.entries("method_groups")}
    headings = list(catalog.FAMILIES.values()) + [OTHER_METHODS]
    rows = []
    for name, description, citation in catalog.entries("methods"):
        family, year = groups.get(name, (None, None))
        heading = catalog.FAMILIES.get(family, OTHER_METHODS)
        rows.append([heading, name, "-" if year is None else str(year), description, citation])
    return sorted(rows, key=lambda r: (headings.index(r[0]), r[2]))  # stable: registry order within a year


def _list_options() -> list[list[str]]:
    return [list(row) for row in catalog.entries("method_options")]


def _list_models() -> list[list[str]]:
    return [list(row) for row in catalog.entries("models")]


def _list_datasets() -> list[list[str]]:
    return [list(row) for row in catalog.entries("datasets")]


def _list_protocols() -> list[list[str]]:
    rows = []
    for name in PROTOCOLS:
        meta = PROTOCOLS.meta(name)
        help_text, cited = catalog.split_citation(meta.get("help", ""))
        rows.append([name, help_text, meta.get("citation") or cited])
    return rows


def _list_settings() -> list[list[str]]:
    """Every key of every TOML section (``--config`` files and sweep specs), from the same field
    descriptions as the flags' help: ``section.key``, description with its choices, default."""
    import dataclasses

    from prunelab.experiments.hparams import SECTIONS
    from prunelab.options import choices_of, default_of, help_of, show_value, unset_of
    from prunelab.training.settings import TrainSettings

    rows = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls or TrainSettings):
            text = help_of(f) + (f"; one of: {', '.join(choices_of(f))}" if choices_of(f) else "")
            value = default_of(f)
            default = (unset_of(f) or "none") if value is None else show_value(value)
            if section == "training":  # recipe(model, dataset) gives the defaults; TrainSettings' are LeNet's
                default = f"recipe of the model (LeNets: {default})"
            rows.append([f"{section}.{f.name}", text, default])
    return rows


# name -> (rows, header, what it lists): each registry, and the settings' documentation. A header whose first
# column is None: every row starts with the heading of its group, printed once above the group.
LISTS = {"methods": (_list_methods, [None, "name", "year", "description", "citation"],
                     "pruning criteria by family (--method, prunelab.prune)"),
         "options": (_list_options, ["name", "options a run may set (--method-options NAME=VALUE), at their default"],
                     "each criterion's own options and their defaults (prunelab.prune keywords, --method-options)"),
         "models": (_list_models, ["name", "description", "citation"],
                    "networks (--model), besides timm:NAME and torchvision:NAME"),
         "datasets": (_list_datasets, ["name", "description", "citation"], "datasets (--dataset)"),
         "protocols": (_list_protocols, ["name", "description", "citation"],
                       "commands that train and prune (and a sweep's protocol)"),
         "settings": (_list_settings, ["name", "description", "default"],
                      "every config key of a spec, with its default")}


def cmd_list(args) -> int:
    """One registry as a table: name, one-line description, citation (full entries in docs/references.md);
    ``settings``: every config key with its description and default; no name: what can be listed."""
    from prunelab.registry import check_name

    if args.registry is None:
        print_table([["registry", "what it lists"]] + [[n, what] for n, (_, _, what) in LISTS.items()])
        print("\nprunelab list NAME shows one of them")
        return 0
    rows, header, _ = LISTS[check_name("registry", args.registry, list(LISTS))]
    if header[0] is not None:
        print_table([header] + [[*r[:-1], r[-1] or "-"] for r in rows()])
        return 0
    table = rows()
    print_table([header[1:]] + [[*r[1:-1], r[-1] or "-"] for r in table], groups=[r[0] for r in table])
    return 0


def print_table(rows: list[list[str]], groups: list[str] | None = None) -> None:
    """Rows as aligned columns, the first a header underlined with dashes. ``groups``: the heading of each row
    after the header; a blank line and the heading (with a colon) open each run of rows that share one."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        if groups is not None and k > 0 and (k == 1 or groups[k - 1] != groups[k - 2]):
            print(f"\n{groups[k - 1]}:")
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
