"""Runs tests/parallel/on_mesh/ on 8 simulated CPU devices in a fresh process.

XLA_FLAGS must be set before jax is imported, so the 8-device tests cannot share this process.
QJAX_NATIVE=0 there: sharded operands never reach the native CPU kernels (`qjax.ops.kernels.spans_devices`;
in the Pallas modes they may reach Pallas kernels per device), and so the single-device references
compared with them take XLA's path too. A second process checks that
choice with the native kernels built: a forward over sharded params calls none of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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


_NATIVE_ON_A_MESH = textwrap.dedent("""
    import jax
    import numpy as np
    import qjax.parallel as qp
    from qjax import native
    from qjax.models import ModelConfig, forward, init_params

    if not (native.available() and native.blas_name() is not None):
        print("SKIP: qjax's CPU kernels or their BLAS are unavailable here")
        raise SystemExit(0)
    config = ModelConfig("llama", vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=16, max_position_embeddings=64)
    params = init_params(config, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, 64, (8, 16)).astype(np.int32)
    mesh = qp.make_mesh("data:4,model:2")
    sharded, batch = qp.shard_params(params, mesh), qp.shard_batch(tokens, mesh)
    fwd = jax.jit(lambda p, t: forward(p, t, config)[0])
    one, many = fwd.lower(params, tokens).as_text(), fwd.lower(sharded, batch).as_text()
    assert "@qjax_gemm" in one, "the single-device forward should call the native sgemm"
    assert "@qjax_" not in many, [line for line in many.splitlines() if "@qjax_" in line][:3]
    want = np.asarray(fwd(params, tokens))
    np.testing.assert_allclose(np.asarray(fwd(sharded, batch)), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    print("native kernels only off the mesh")
""")


def test_native_kernels_step_aside_for_sharded_operands():
    env = {**os.environ, "XLA_FLAGS": xla_flags(8), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("QJAX_NATIVE", None)
    env.pop("QJAX_KERNELS", None)
    proc = subprocess.run([sys.executable, "-c", _NATIVE_ON_A_MESH], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode == 0 and "SKIP:" in proc.stdout:
        import pytest

        pytest.skip(proc.stdout.split("SKIP:", 1)[1].strip())
    assert proc.returncode == 0 and "native kernels only off the mesh" in proc.stdout, proc.stderr[-4000:]
