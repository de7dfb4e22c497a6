"""repro/summarize.py: its help, and how it keeps the step-schedule runs apart from the constant-rate ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

REPRO = Path(__file__).resolve().parent.parent / "repro"
sys.path.insert(0, str(REPRO))

import summarize  # noqa: E402


def test_help_says_what_it_writes_and_where():
    out = subprocess.run([sys.executable, str(REPRO / "summarize.py"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "standard output" in out and "docs/results.md" in out and "repro/claims.py" in out


def test_step_schedule_runs_are_kept_apart():
    df = pd.DataFrame({"id": ["a", "b", "c"], "training.milestones": ["", "5ep 7ep235it", "25000it"]})
    assert list(summarize.by_schedule(df, step=True).id) == ["b"]
    assert list(summarize.by_schedule(df, step=False).id) == ["a", "c"]


def test_retitled_changes_the_heading_only():
    assert summarize.retitled("## Family 2\n\ntext\n", ", step") == "## Family 2, step\n\ntext\n"
    assert summarize.retitled("", ", step") == ""
