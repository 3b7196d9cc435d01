"""benchmarks/kernels.py runs on CPU (interpret mode, tiny shapes) and prints every kernel's row."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_kernels_benchmark_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for kernel in ("bf16", "xla_w4", "pallas_w4", "xla_w8a8", "pallas_w8a8", "bf16_kv", "xla_kv4", "pallas_kv4"):
        assert f" {kernel} " in out.stdout, out.stdout
