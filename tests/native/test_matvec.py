"""The few-row float32 product kernels (qjax.native.matvec) against float64 numpy products."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax import native
from qjax.native import matvec
from qjax.ops import linear, linear_many, tied_logits
from qjax.quant.rtn import quantize_rtn
from qjax.formats.spec import WeightQuantSpec


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


def numpy_unpack(codes: np.ndarray, bits: int, rows: int) -> np.ndarray:
    """The packing layout by hand: 8 bits one byte per code; 4 bits code 2k in the low nibble of
    byte k, code 2k + 1 in its high nibble."""
    if bits == 8:
        return codes[:rows].astype(np.int64)
    out = np.empty((2 * codes.shape[0], codes.shape[1]), np.int64)
    out[0::2], out[1::2] = codes & 15, codes >> 4
    return out[:rows]


@pytest.mark.parametrize("bits,group,rows,k,n", [(8, 96, 1, 192, 70), (8, 192, 3, 192, 64), (8, 50, 2, 120, 17),
                                                 (4, 32, 1, 128, 40), (4, 128, 8, 128, 300), (4, 2, 2, 6, 5),
                                                 (4, 128, 1, 576, 48), (8, 256, 1, 256, 8)])
def test_quantized_matvec_matches_numpy(bits, group, rows, k, n):
    """Random codes, scales and zero points: the product equals x @ (scale * (q - zero)) in float64,
    with q unpacked by hand. Groups smaller than, equal to and (256 rows) split across the kernel's
    64-row slabs; a partial last group (576 = 4.5 x 128, 120 = 2.4 x 50); ragged column counts."""
    rng = np.random.default_rng(bits * 1000 + k)
    q = rng.integers(0, 2 ** bits, size=(k, n))
    codes = q.astype(np.uint8) if bits == 8 else (q[0::2] | (q[1::2] << 4)).astype(np.uint8)
    assert np.array_equal(numpy_unpack(codes, bits, k), q)
    groups = -(-k // group)
    scale = rng.uniform(0.01, 0.1, size=(groups, n)).astype(np.float32)
    zero = rng.integers(0, 2 ** bits, size=(groups, n)).astype(np.float32)
    x = rng.normal(size=(rows, k)).astype(np.float32)
    w = np.repeat(scale, group, axis=0)[:k].astype(np.float64) * (q - np.repeat(zero, group, axis=0)[:k])
    out = jax.jit(functools.partial(matvec.quantized_matvec, bits=bits, group_rows=group))(
        *(jnp.asarray(a) for a in (x, codes, scale, zero)))
    chex.assert_shape(out, (rows, n))
    assert_close(out, x.astype(np.float64) @ w)


def test_qarray_matmul_uses_the_kernel_and_agrees():
    """RTN W4 g32, W4 g128 on 192 rows (a partial last group) and W8 per channel QArrays:
    decode-sized matmul (native) equals the XLA dequantize-then-matmul path; its jaxpr holds the
    FFI call."""
    rng = np.random.default_rng(11)
    w = jnp.asarray(rng.normal(size=(192, 96)).astype(np.float32))
    x = jnp.asarray(rng.normal(size=(1, 192)).astype(np.float32))
    for spec in (WeightQuantSpec(bits=4, group_size=32, symmetric=False), WeightQuantSpec(bits=8),
                 WeightQuantSpec(bits=4, group_size=128, symmetric=False)):
        qa = quantize_rtn(w, spec)
        expected = np.asarray(x, np.float64) @ np.asarray(qa.dequantize(), np.float64)
        assert_close(jax.jit(linear)(x, qa), expected)
        assert native.QUANTIZED_MATVEC in str(jax.make_jaxpr(linear)(x, qa))


def test_quantized_matvec_bad_shapes_are_named():
    codes = jnp.zeros((32, 8), jnp.uint8)  # 64 rows of 4-bit codes
    stats = jnp.ones((22, 8), jnp.float32)
    with pytest.raises(Exception, match="K and group_rows even for 4 bits"):
        jax.block_until_ready(matvec.quantized_matvec(jnp.ones((1, 64)), codes, stats, stats, bits=4, group_rows=3))
    with pytest.raises(Exception, match="codes, scale or zero shape disagrees"):
        jax.block_until_ready(matvec.quantized_matvec(jnp.ones((1, 64)), codes, stats, stats, bits=4, group_rows=4))


def test_matvec_many_and_linear_many():
    """Three sibling kernels of widths 96, 32, 32 (q/k/v-like) in one call; linear_many adds the
    biases, and with 9 rows (no kernel) gives the same products."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(9, 80)).astype(np.float32)
    ws = [rng.normal(size=(80, n)).astype(np.float32) for n in (96, 32, 32)]
    bs = [rng.normal(size=(w.shape[1],)).astype(np.float32) for w in ws]
    outs = jax.jit(matvec.matvec_many)(jnp.asarray(x[:2]), [jnp.asarray(w) for w in ws])
    for out, w in zip(outs, ws):
        assert_close(out, x[:2].astype(np.float64) @ w)
    for rows in (1, 9):
        ys = jax.jit(linear_many)(jnp.asarray(x[:rows]), [jnp.asarray(w) for w in ws], [jnp.asarray(b) for b in bs])
        for y, w, b in zip(ys, ws, bs):
            assert_close(y, x[:rows].astype(np.float64) @ w + b)


def test_back_to_back_calls_hand_off_correctly():
    """40 dependent kernel calls in one program (as in a decode step, where a spinning pool worker
    takes each next call's tasks): the chain equals float64 numpy's."""
    rng = np.random.default_rng(13)
    ws = [rng.normal(size=(256, 256)).astype(np.float32) / 16 for _ in range(40)]
    x = rng.normal(size=(1, 256)).astype(np.float32)

    def chain(x, ws):
        for w in ws:
            x = jnp.tanh(matvec.matvec(x, w))
        return x

    expected = x.astype(np.float64)
    for w in ws:
        expected = np.tanh(expected @ w)
    out = jax.jit(chain)(jnp.asarray(x), [jnp.asarray(w) for w in ws])
    for _ in range(3):  # repeated runs reuse the spinning worker across program boundaries
        out = jax.jit(chain)(jnp.asarray(x), [jnp.asarray(w) for w in ws])
        assert_close(out, expected)
