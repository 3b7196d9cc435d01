"""The many-row float32 products (qjax.native.gemm: a BLAS sgemm shared over XLA's pool) against
float64 numpy products, the dispatch that sends prefill-sized products there, and each BLAS."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax import native
from qjax.native import blas, gemm
from qjax.ops import linear, linear_many, tied_logits
from qjax.quant.rtn import quantize_rtn
from qjax.formats.spec import WeightQuantSpec


def operands(rows: int, k: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)


def assert_close(out, expected):
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-5, atol=1e-4)


def calls(target: str, fn, *args) -> int:
    """How many calls of the FFI `target` the lowered program of fn(*args) makes."""
    return jax.jit(fn).lower(*args).as_text().count(f"@{target}(")


# Rows: fewer than one 64-row block, not a multiple of the block count (a short last block), many
# blocks; K and N ragged against SIMD widths.
SHAPES = [(9, 64, 48), (100, 77, 33), (300, 576, 192), (1031, 130, 5)]


@pytest.mark.parametrize("rows,k,n", SHAPES)
def test_gemm_matches_numpy(rows, k, n):
    assert native.blas_name() is not None
    x, w = operands(rows, k, n)
    (out,) = jax.jit(gemm.gemm_many)(jnp.asarray(x), [jnp.asarray(w)])
    chex.assert_shape(out, (rows, n))
    assert_close(out, x.astype(np.float64) @ w.astype(np.float64))


@pytest.mark.parametrize("rows,k,n", SHAPES)
def test_gemm_nt_matches_numpy(rows, k, n):
    """w given as (N, K) (a tied embedding), read transposed by the BLAS."""
    x, w = operands(rows, k, n, seed=1)
    out = jax.jit(gemm.gemm_nt)(jnp.asarray(x), jnp.asarray(np.ascontiguousarray(w.T)))
    chex.assert_shape(out, (rows, n))
    assert_close(out, x.astype(np.float64) @ w.astype(np.float64))


def test_sibling_weights_in_one_call_with_biases():
    """q/k/v-like kernels of widths 96, 32, 32 on (2, 70, K) activations: one qjax_gemm call with three
    outputs and no concatenation of the weights; linear_many adds each bias."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 70, 80)).astype(np.float32)
    ws = [rng.normal(size=(80, n)).astype(np.float32) for n in (96, 32, 32)]
    bs = [rng.normal(size=(w.shape[1],)).astype(np.float32) for w in ws]
    args = (jnp.asarray(x), [jnp.asarray(w) for w in ws], [jnp.asarray(b) for b in bs])
    assert calls(native.GEMM, linear_many, *args) == 1
    assert "concatenate" not in jax.jit(linear_many).lower(*args).as_text()
    for y, w, b in zip(jax.jit(linear_many)(*args), ws, bs):
        chex.assert_shape(y, (2, 70, w.shape[1]))
        assert_close(y, np.einsum("btk,kn->btn", x.astype(np.float64), w) + b)


def test_dispatch_by_rows_and_dtype():
    """float32 with more than 8 rows goes to qjax_gemm (8 or fewer to the matvec); bfloat16 stays on
    XLA's dot. Every path gives the product."""
    x, w = operands(40, 64, 24, seed=3)
    expected = x.astype(np.float64) @ w.astype(np.float64)
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    assert calls(native.GEMM, linear, xj, wj) == 1 and calls(native.GEMM_NT, tied_logits, xj, wj.T) == 1
    assert calls(native.GEMM, linear, xj[:8], wj) == 0 and calls(native.MATVEC, linear, xj[:8], wj) == 1
    assert calls(native.GEMM, linear, xj.astype(jnp.bfloat16), wj.astype(jnp.bfloat16)) == 0
    assert_close(jax.jit(linear)(xj, wj), expected)
    assert_close(jax.jit(tied_logits)(xj, wj.T), expected)
    bf16 = jax.jit(linear)(xj.astype(jnp.bfloat16), wj.astype(jnp.bfloat16))
    np.testing.assert_allclose(np.asarray(bf16, np.float64), expected, atol=0.5, rtol=0.05)


def test_vmap_and_quantized_prefill():
    """Under vmap each member is its own call; a QArray's many-row matmul multiplies its dequantized
    weight through the same kernel and equals x @ dequantize() in float64."""
    x, w = operands(60, 96, 40, seed=4)
    x3 = jnp.asarray(x.reshape(3, 20, 96))
    out = jax.jit(jax.vmap(linear, in_axes=(0, None)))(x3, jnp.asarray(w))
    assert_close(out.reshape(60, 40), x.astype(np.float64) @ w)
    qa = quantize_rtn(jnp.asarray(w), WeightQuantSpec(bits=4, group_size=32, symmetric=False))
    matmul = linear
    assert calls(native.GEMM, matmul, jnp.asarray(x), qa) == 1
    expected = x.astype(np.float64) @ np.asarray(qa.dequantize(), np.float64)
    assert_close(jax.jit(matmul)(jnp.asarray(x), qa), expected)


def test_bad_shapes_name_the_kernel():
    x, w = operands(20, 64, 8)
    with pytest.raises(Exception, match="qjax_gemm: x and w disagree on K"):
        jax.block_until_ready(gemm.gemm_many(jnp.asarray(x), [jnp.asarray(w[:32])]))
    with pytest.raises(Exception, match="qjax_gemm_nt: x and w disagree on K"):
        jax.block_until_ready(gemm.gemm_nt(jnp.asarray(x), jnp.asarray(w[:32].T)))


def test_unknown_blas_name_is_named(monkeypatch):
    monkeypatch.setenv("QJAX_BLAS", "eigen")
    with pytest.raises(ValueError, match="QJAX_BLAS='eigen': expected one of"):
        blas.load()


_CHILD = """
import numpy as np, jax, jax.numpy as jnp
from qjax import native
from qjax.ops import linear
print("blas", native.blas_name())
rng = np.random.default_rng(5)
x, w = rng.normal(size=(130, 96)).astype(np.float32), rng.normal(size=(96, 50)).astype(np.float32)
np.testing.assert_allclose(np.asarray(jax.jit(linear)(jnp.asarray(x), jnp.asarray(w)), np.float64),
                           x.astype(np.float64) @ w, rtol=1e-5, atol=1e-4)
print("gemm call", "@qjax_gemm(" in jax.jit(linear).lower(jnp.asarray(x), jnp.asarray(w)).as_text())
"""

@pytest.mark.parametrize("choice", [name for name in blas.LOADERS if blas.library_path(name)] + ["none"])
def test_each_blas_in_a_fresh_process(choice):
    """QJAX_BLAS picks the library (decided once per process): each installed one computes the
    product through qjax_gemm; `none` leaves it to XLA's dot, with the same values."""
    result = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                            env={**os.environ, "QJAX_BLAS": choice})
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"blas {None if choice == 'none' else choice}" in result.stdout
    assert f"gemm call {choice != 'none'}" in result.stdout
