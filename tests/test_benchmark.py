"""The plan benchmark runs and prints its figures (small counts; timings are never asserted)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_plan_benchmark_prints_its_figures():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plan_bench.py"), "--clouds", "gcp",
                             "--nodes", "1", "3", "--runs", "1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("gcp    import floor") for line in lines)
    assert any(line.startswith("gcp    SDK modules used") and line.rstrip().endswith("x") for line in lines)
    per_node = [line.split() for line in lines if "plan 3 node(s)" in line]
    # ... seconds, peak MiB, vs floor, per extra node ("12.3 ms"), vs SDK used
    assert per_node and per_node[0][-2] == "ms" and per_node[0][-1].endswith("x")


def test_sdk_reference_benchmark_prints_its_figure():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sdk_per_node.py"), "--nodes", "3", "--runs", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "per extra node:" in result.stdout and result.stdout.rstrip().endswith("ms")
