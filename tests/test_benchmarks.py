"""The benchmark scripts still run end to end, at sizes small enough for the test suite.

Benchmarks import private helpers of medbench, so a refactor can break them without any
other test noticing. These runs check that each script finishes and prints its result
lines; they check no timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(script: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_selective_scan_benchmark_prints_every_stage(tmp_path):
    output = run_benchmark("selective_scan.py", "--rounds", "1", "--batch", "1", "--chunk-sizes", "1", "64",
                           cwd=tmp_path)
    rows = [line for line in output.splitlines() if line.startswith("| ") and "(1.0x)" in line]
    assert len(rows) == 4
    assert "chunk 64" in output


@pytest.mark.integration
def test_fit_overhead_benchmark_runs(data_root, mlflow_store, tmp_path):
    output = run_benchmark("fit_overhead.py", "--image-size", "32", "--max-images", "20", "--batch-size", "4",
                           "--rounds", "1", cwd=tmp_path)
    assert "ratio fit / bare:" in output
    assert "MLflow logging share of the fit epoch:" in output
