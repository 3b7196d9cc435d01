"""Runs tests/parallel/on_mesh/ on 8 simulated CPU devices in a fresh process.

XLA_FLAGS must be set before jax is imported, so the 8-device tests cannot share this process.
QJAX_NATIVE=0: qjax's native CPU kernels are single-device custom calls (XLA would run them
replicated on a mesh); the mesh tests exercise the XLA path that GPUs and TPUs run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from simulated import xla_flags

ROOT = Path(__file__).resolve().parents[2]


def test_workloads_on_eight_simulated_devices(tmp_path):
    env = {**os.environ, "XLA_FLAGS": xla_flags(8), "QJAX_TEST_MESH": "1",
           "QJAX_NATIVE": "0", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "--basetemp", str(tmp_path / "t"), str(ROOT / "tests" / "parallel" / "on_mesh")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
