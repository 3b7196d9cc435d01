"""The few-row float32 product kernels (qjax.native.matvec) against float64 numpy products."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax import native
from qjax.native import matvec
from qjax.ops import linear, tied_logits


def operands(rows: int, k: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)


def assert_close(out, expected):
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-5, atol=1e-4)


# K and N multiples of the SIMD width, and ragged ones that exercise the scalar tails; K below,
# at and above the kernel's 64-row slab (several partial sums to reduce).
SHAPES = [(1, 576, 192), (1, 1536, 576), (3, 64, 33), (8, 203, 77), (5, 7, 5), (2, 130, 1)]


@pytest.mark.parametrize("rows,k,n", SHAPES)
def test_matvec_matches_numpy(rows, k, n):
    assert native.available()
    x, w = operands(rows, k, n)
    out = jax.jit(matvec.matvec)(jnp.asarray(x), jnp.asarray(w))
    chex.assert_shape(out, (rows, n))
    assert_close(out, x.astype(np.float64) @ w.astype(np.float64))


@pytest.mark.parametrize("rows,k,n", SHAPES + [(1, 576, 1100)])
def test_matvec_nt_matches_numpy(rows, k, n):
    """w given as (N, K), rows read whole: N across the kernel's 512-row tasks with a partial last one."""
    x, w = operands(rows, k, n, seed=1)
    w_rows = np.ascontiguousarray(w.T)
    out = jax.jit(matvec.matvec_nt)(jnp.asarray(x), jnp.asarray(w_rows))
    chex.assert_shape(out, (rows, n))
    assert_close(out, x.astype(np.float64) @ w.astype(np.float64))


def test_leading_axes_and_vmap():
    """x (B, 1, K) keeps its leading axes; under vmap each member is its own call."""
    x, w = operands(6, 96, 40, seed=2)
    x3 = jnp.asarray(x.reshape(2, 3, 1, 96))
    out = jax.jit(jax.vmap(matvec.matvec, in_axes=(0, None)))(x3, jnp.asarray(w))
    chex.assert_shape(out, (2, 3, 1, 40))
    assert_close(out.reshape(6, 40), x.astype(np.float64) @ w.astype(np.float64))


def test_linear_dispatch():
    """`linear` and `tied_logits` use the kernels only for float32 with at most 8 rows; every path
    gives the product."""
    x, w = operands(9, 64, 48, seed=3)
    expected = x.astype(np.float64) @ w.astype(np.float64)
    assert matvec.supports(jnp.asarray(x[:8]), jnp.asarray(w))
    assert not matvec.supports(jnp.asarray(x), jnp.asarray(w))
    assert not matvec.supports(jnp.asarray(x[:1], jnp.bfloat16), jnp.asarray(w, jnp.bfloat16))
    for rows in (1, 8, 9):
        assert_close(jax.jit(linear)(jnp.asarray(x[:rows]), jnp.asarray(w)), expected[:rows])
        assert_close(jax.jit(tied_logits)(jnp.asarray(x[:rows]), jnp.asarray(w.T)), expected[:rows])


def test_bad_shapes_name_the_kernel():
    x, w = operands(1, 64, 8)
    with pytest.raises(Exception, match="qjax_matvec: x and w disagree on K"):
        jax.block_until_ready(matvec.matvec(jnp.asarray(x), jnp.asarray(w[:32])))
    x9 = jnp.ones((9, 64), jnp.float32)
    with pytest.raises(Exception, match="1 to 8 rows"):
        jax.block_until_ready(matvec.matvec(x9, jnp.asarray(w)))
