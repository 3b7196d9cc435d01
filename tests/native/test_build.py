"""Building and falling back: a missing or failing compiler is one clear error, and with the kernels
disabled the model runs on its pure-XLA paths."""

import os
import subprocess
import sys

import pytest

from qjax.native import build


def test_missing_compiler_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("QJAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-qjax")
    with pytest.raises(build.NativeBuildError, match="'no-such-compiler-qjax' is not on PATH"):
        build.build_library()


def test_compiler_failure_carries_its_message(monkeypatch, tmp_path):
    script = tmp_path / "broken-cxx"
    script.write_text("#!/bin/sh\necho 'error: this compiler is broken' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("QJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(script))
    with pytest.raises(build.NativeBuildError, match="this compiler is broken"):
        build.build_library()
    assert not list((tmp_path / "cache").rglob("*.so*"))  # no partial library left behind


def test_disabled_kernels_fall_back_to_xla():
    """QJAX_NATIVE=0 (a fresh process: availability is decided once): no kernel, and the forward's
    attention and decode-sized linears still match float64 numpy."""
    code = """
import numpy as np, jax.numpy as jnp
from qjax import native
from qjax.ops.attention import causal_attention
from qjax.ops import linear
assert not native.available()
rng = np.random.default_rng(0)
q, k, v = (rng.normal(size=(1, 70, 2, 64)).astype(np.float32) for _ in range(3))
mask = np.tril(np.ones((70, 70), bool))[None, None]
out = np.asarray(causal_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask)), np.float64)
s = np.einsum("thd,shd->hts", q[0].astype(np.float64), k[0]) / 8.0
s = np.where(mask[0], s, -np.inf)
p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
np.testing.assert_allclose(out[0], np.einsum("hts,shd->thd", p, v[0]), atol=2e-5)
x, w = rng.normal(size=(1, 32)).astype(np.float32), rng.normal(size=(32, 8)).astype(np.float32)
np.testing.assert_allclose(np.asarray(linear(jnp.asarray(x), jnp.asarray(w))), x.astype(np.float64) @ w, atol=1e-4)
print("fallback ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "QJAX_NATIVE": "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fallback ok" in result.stdout
