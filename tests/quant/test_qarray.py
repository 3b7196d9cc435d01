"""QArray: reconstruction against hand-written numpy formulas, exact byte counts, matmul, pytree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.formats.grids import nf4_codebook
from qjax.formats.qarray import Outliers, QArray, QStat, SecondLevelSpec, quantize_stat
from qjax.formats.spec import WeightQuantSpec
from qjax.ops import linear


def f16(x):
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def rand_case(rng, n_in, n_out, bits, groups):
    codes = rng.integers(0, 2 ** bits, size=(n_in, n_out))
    scale = f16(rng.uniform(0.01, 0.1, size=(groups, n_out)))
    zero = f16(rng.integers(0, 2 ** bits, size=(groups, n_out)))
    return codes, scale, zero


def test_dequantize_asymmetric_groups_with_partial_last_group():
    rng = np.random.default_rng(0)
    codes, scale, zero = rand_case(rng, 40, 6, 3, 3)  # groups of 16: 16, 16, 8 rows
    qa = QArray.from_codes(codes, scale, zero, spec=WeightQuantSpec(3, group_size=16))
    ref = np.empty((40, 6), np.float32)
    for i in range(40):
        ref[i] = scale[i // 16] * (codes[i] - zero[i // 16])
    np.testing.assert_array_equal(np.asarray(qa.dequantize()), ref)
    np.testing.assert_array_equal(np.asarray(qa.unpacked_codes()), codes)
    assert qa.codes.shape == (15, 6) and qa.codes.dtype == jnp.uint8  # 40 * 3 bits = 15 bytes/column
    assert qa.scale.dtype == qa.zero.dtype == jnp.float16


def test_dequantize_symmetric_per_channel_and_per_tensor():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, size=(24, 5))
    s = f16(rng.uniform(0.01, 0.1, size=(1, 5)))
    qa = QArray.from_codes(codes, s, None, spec=WeightQuantSpec(4, symmetric=True))
    assert qa.zero is None
    np.testing.assert_array_equal(np.asarray(qa.dequantize()), s * (codes - 8.0))
    qt = QArray.from_codes(codes, np.array([[0.5]]), np.array([[3.0]]), spec=WeightQuantSpec(4, group_size=-1))
    np.testing.assert_array_equal(np.asarray(qt.dequantize()), 0.5 * (codes - 3.0))


def test_dequantize_codebook_grid():
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 16, size=(64, 3))
    s = f16(rng.uniform(0.5, 1, size=(2, 3)))
    qa = QArray.from_codes(codes, s, spec=WeightQuantSpec(4, group_size=32, symmetric=True, grid="nf4"))
    cb = nf4_codebook()
    np.testing.assert_allclose(np.asarray(qa.dequantize()), np.repeat(s, 32, axis=0) * cb[codes], rtol=1e-7)


def test_second_level_and_outliers():
    rng = np.random.default_rng(3)
    codes, scale, zero = rand_case(rng, 48, 20, 3, 3)
    rows, cols, vals = [0, 47, 5], [19, 0, 7], [3.5, -100.25, 0.125]
    qa = QArray.from_codes(codes, scale, zero, spec=WeightQuantSpec(3, group_size=16),
                           second_level=SecondLevelSpec(bits=3, group_size=16), outliers=(rows, cols, vals))
    assert isinstance(qa.scale, QStat) and isinstance(qa.zero, QStat)

    def numpy_stat(x):  # min-max 3-bit in groups of 16 along the output axis (16 + 4 columns)
        out = np.empty_like(x)
        for a, b in [(0, 16), (16, 20)]:
            blk = x[:, a:b]
            lo = f16(blk.min(1, keepdims=True))
            st = f16((blk.max(1, keepdims=True) - lo) / 7)
            st = np.where(st > 0, st, 1)
            out[:, a:b] = lo + st * np.clip(np.round((blk - lo) / st), 0, 7)
        return out

    s2, z2 = numpy_stat(scale), numpy_stat(zero)
    np.testing.assert_allclose(np.asarray(qa.scale.dequantize()), s2, rtol=1e-6)
    ref = np.repeat(s2, 16, axis=0) * (codes - np.repeat(z2, 16, axis=0))
    ref[rows, cols] = vals
    np.testing.assert_allclose(np.asarray(qa.dequantize()), ref, rtol=1e-6, atol=1e-7)
    # outliers sorted by (row, col), uint16 indices, float16 values
    assert np.asarray(qa.outliers.rows).tolist() == [0, 5, 47] and qa.outliers.rows.dtype == jnp.uint16
    assert qa.outliers.values.dtype == jnp.float16


def test_nbytes_hand_counted():
    rng = np.random.default_rng(4)
    # W4 g128 asym fp16 scale + zero on (512, 64): 4 + 2 * 16 / 128 = 4.25 bits per parameter
    codes, scale, zero = rand_case(rng, 512, 64, 4, 4)
    qa = QArray.from_codes(codes, scale, zero, spec=WeightQuantSpec(4, group_size=128))
    assert qa.nbytes == 512 * 64 // 2 + 2 * (4 * 64 * 2) == 17408
    assert qa.bits_per_param == 4.25
    # SmolLM2-like (576, 96) W4 g128: 5 groups (the last has 64 rows)
    codes, scale, zero = rand_case(rng, 576, 96, 4, 5)
    qa = QArray.from_codes(codes, scale, zero, spec=WeightQuantSpec(4, group_size=128))
    assert qa.nbytes == 576 * 96 // 2 + 2 * 5 * 96 * 2
    # 3-bit per-channel symmetric on (100, 10): ceil(300 / 8) = 38 bytes per column, scale fp16
    codes, scale, _ = rand_case(rng, 100, 10, 3, 1)
    qa = QArray.from_codes(codes, scale, spec=WeightQuantSpec(3, symmetric=True))
    assert qa.nbytes == 38 * 10 + 10 * 2
    # NF4 per-channel (64, 8): codes 256 B, scale 16 B, codebook 16 float32 = 64 B
    codes, scale, _ = rand_case(rng, 64, 8, 4, 1)
    qa = QArray.from_codes(codes, scale, spec=WeightQuantSpec(4, symmetric=True, grid="nf4"))
    assert qa.nbytes == 256 + 16 + 64
    # second level + outliers on (48, 20) W3 g16: codes 18*20; first-level stats (3, 20) as 3-bit
    # QStats in groups of 16 along 20 columns: codes ceil(9/8)=2 bytes * 20 = 40, scale + offset
    # (3, 2) fp16 = 24 B, for each of scale and zero; 3 outliers * (2 + 2 + 2) B
    codes, scale, zero = rand_case(rng, 48, 20, 3, 3)
    qa = QArray.from_codes(codes, scale, zero, spec=WeightQuantSpec(3, group_size=16),
                           second_level=SecondLevelSpec(), outliers=([1, 2, 3], [0, 0, 0], [1.0, 2.0, 3.0]))
    assert qa.nbytes == 18 * 20 + 2 * (40 + 24) + 3 * 6
    assert qa.bits_per_param == 8 * qa.nbytes / (48 * 20)


def test_matmul_matches_dequantize_and_numpy():
    rng = np.random.default_rng(5)
    codes, scale, zero = rand_case(rng, 40, 12, 4, 3)
    qa = QArray.from_codes(codes, scale, zero, spec=WeightQuantSpec(4, group_size=16),
                           outliers=([3], [4], [2.0]))
    x = rng.normal(size=(2, 3, 40)).astype(np.float32)
    ref_w = np.repeat(scale, 16, axis=0)[:40] * (codes - np.repeat(zero, 16, axis=0)[:40])
    ref_w[3, 4] = 2.0
    y = jax.jit(lambda q, x: linear(x, q))(qa, x)
    assert y.shape == (2, 3, 12) and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), x.astype(np.float64) @ ref_w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x @ qa.dequantize()), rtol=1e-6, atol=1e-6)
    yb = linear(jnp.asarray(x, jnp.bfloat16), qa)
    assert yb.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="expects 40"):
        linear(jnp.zeros((2, 39)), qa)


def test_pytree_roundtrip_through_jit():
    rng = np.random.default_rng(6)
    codes, scale, zero = rand_case(rng, 32, 4, 2, 2)
    qa = QArray.from_codes(codes, scale, zero, spec=WeightQuantSpec(2, group_size=16))
    leaves, treedef = jax.tree_util.tree_flatten(qa)
    assert len(leaves) == 3  # codes, scale, zero (codebook / outliers are None)
    out = jax.jit(lambda q: q)(qa)
    assert isinstance(out, QArray) and out.spec == qa.spec and out.shape == (32, 4)
    np.testing.assert_array_equal(np.asarray(out.dequantize()), np.asarray(qa.dequantize()))


def test_quantize_stat_shapes():
    x = np.linspace(0.1, 1.0, 3 * 33, dtype=np.float32).reshape(3, 33)
    st = quantize_stat(x, SecondLevelSpec(bits=4, group_size=16))
    assert st.scale.shape == st.offset.shape == (3, 3) and st.codes.shape == (2, 33)
    assert np.abs(np.asarray(st.dequantize()) - x).max() <= float(jnp.max(st.scale)) / 2 + 1e-3


def test_bad_input():
    spec = WeightQuantSpec(3, group_size=16)
    ok = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 7\]"):
        QArray.from_codes(np.full((32, 4), 8), ok, ok, spec=spec)
    with pytest.raises(ValueError, match=r"scale has shape \(3, 4\), expected \(2, 4\)"):
        QArray.from_codes(np.zeros((32, 4), int), np.ones((3, 4)), ok, spec=spec)
    with pytest.raises(ValueError, match="needs a zero point"):
        QArray.from_codes(np.zeros((32, 4), int), ok, None, spec=spec)
    with pytest.raises(ValueError, match="NaN or Inf"):
        QArray.from_codes(np.zeros((32, 4), int), np.full((2, 4), np.nan), ok, spec=spec)
    with pytest.raises(ValueError, match="has no zero point"):
        QArray.from_codes(np.zeros((32, 4), int), ok, ok, spec=WeightQuantSpec(4, 16, symmetric=True, grid="nf4"))
    with pytest.raises(ValueError, match="zero point is 4.0 everywhere"):
        QArray.from_codes(np.zeros((32, 4), int), ok, ok, spec=WeightQuantSpec(3, 16, symmetric=True))
    with pytest.raises(ValueError, match="appears twice"):
        Outliers.from_coo([1, 1], [2, 2], [1.0, 2.0], (32, 4))
    with pytest.raises(ValueError, match="outside the weight shape"):
        Outliers.from_coo([32], [0], [1.0], (32, 4))
    with pytest.raises(ValueError, match="exceeds the input dimension 32"):
        QArray.from_codes(np.zeros((32, 4), int), ok, ok, spec=WeightQuantSpec(3, group_size=64))
    with pytest.raises(ValueError, match="targets"):
        SecondLevelSpec(targets=("offset",))
