"""The reproduction specs in ``repro/``: each one parses into jobs and ``repro/run_all.sh`` runs every one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prunelab.experiments.sweep import load_spec

REPRO = Path(__file__).resolve().parent.parent / "repro"
SPECS = sorted(REPRO.glob("*.toml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_spec_loads_into_jobs(path):
    assert load_spec(path).jobs


def test_run_all_runs_every_spec():
    listed = set(re.findall(r"\b(\d\d[a-z]?_[a-z0-9_]+)\b", (REPRO / "run_all.sh").read_text()))
    assert listed == {p.stem for p in SPECS}
