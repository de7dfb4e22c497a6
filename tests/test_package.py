"""The package's face: subpackages reachable from a bare ``import prunelab`` (imported on first access,
PEP 562), ``prunelab --version`` and ``python -m prunelab``."""

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import prunelab
from prunelab import cli

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("ablations", "analysis", "data", "experiments", "models", "reports", "training")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_subpackages_load_on_first_access_in_a_fresh_interpreter():
    code = f"""
import sys
import prunelab
names = {SUBPACKAGES!r}
before = [n for n in names if "prunelab." + n in sys.modules]
assert not before, "imported by a bare `import prunelab`: " + repr(before)
assert set(names) <= set(dir(prunelab)), "dir() lists every subpackage"
analysis = prunelab.analysis
assert "prunelab.analysis" in sys.modules and analysis is sys.modules["prunelab.analysis"]
assert callable(analysis.layer_collapse)
assert "prunelab.reports" not in sys.modules, "one access imports one subpackage (and what it needs)"
for n in names:
    assert getattr(prunelab, n) is sys.modules["prunelab." + n]
try:
    prunelab.no_such_thing
except AttributeError as e:
    assert "no_such_thing" in str(e)
else:
    raise AssertionError("unknown attribute did not raise AttributeError")
print("ok")
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_hasattr_is_false_for_unknown_names():
    assert not hasattr(prunelab, "not_a_subpackage")
    assert prunelab.models.names()  # a lazy subpackage behaves as an ordinary attribute


def _expected_version() -> str:
    try:
        return metadata.version("prunelab")
    except metadata.PackageNotFoundError:
        return prunelab.__version__


def test_version_flag_prints_the_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"prunelab {_expected_version()}"


def test_version_falls_back_to_the_package_attribute(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert cli._version() == prunelab.__version__


def test_python_dash_m_prunelab_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "prunelab", "--version"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"prunelab {_expected_version()}"
    proc = subprocess.run([sys.executable, "-m", "prunelab", "list", "nonsense"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nonsense" in proc.stderr
