"""The CPU form of bench/gpu_check.py runs and passes (the GPU form is run by hand on a GPU machine)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_form_passes_and_prints_the_table():
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    # The 2-process DDP check runs the same worker as tests/test_score_batching.py; it is left to that test.
    checks = [name for name in gpu_check.CHECKS if name != "2-process DDP scoring"]
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu", "--only", *checks], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| check | status")
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in table[1:]}
    assert set(rows) == set(checks)
    assert rows["CUDA tests"] == "skipped" and all(rows[c] == "ok" for c in checks if c != "CUDA tests")


def test_gpu_check_refuses_unknown_checks_and_a_missing_gpu():
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu", "--only", "warp drive"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown check" in proc.stderr
