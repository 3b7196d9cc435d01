"""Grids against published constants and independent numpy implementations."""

import jax.numpy as jnp
import numpy as np
import pytest

from qjax.formats.grids import companded_codebook, make_grid, nf4_codebook
from qjax.formats.spec import WeightQuantSpec

# bitsandbytes' NF4 table (QLoRA, Dettmers et al. 2023, Appendix E / bitsandbytes functional.py).
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                 -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def f16(x):
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def test_nf4_codebook_matches_published_values():
    np.testing.assert_allclose(nf4_codebook(), PUBLISHED_NF4, rtol=0, atol=2e-7)


def test_nf4_quantize_is_nearest_level_with_absmax_scale():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 5)).astype(np.float32)
    grid = make_grid(WeightQuantSpec(4, symmetric=True, grid="nf4"))
    scale, zero = grid.fit(w)
    assert zero is None
    ref_scale = f16(np.abs(w).max(axis=0))
    np.testing.assert_array_equal(np.asarray(scale), ref_scale)
    codes = np.asarray(grid.quantize(w, scale, None))
    ref_codes = np.argmin(np.abs(w[..., None] / ref_scale[:, None] - np.array(PUBLISHED_NF4)), axis=-1)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_allclose(np.asarray(grid.dequantize(codes, scale, None)),
                               np.array(PUBLISHED_NF4, np.float32)[ref_codes] * ref_scale, rtol=1e-6)


@pytest.mark.parametrize("bits,power", [(3, 1 / 3), (4, 1 / 3), (4, 0.5), (8, 1 / 3)])
def test_companded_encode_decode_against_numpy(bits, power):
    rng = np.random.default_rng(bits)
    w = (rng.standard_t(4, size=(40, 6)) * 0.02).astype(np.float32)
    spec = WeightQuantSpec(bits, symmetric=True, grid="companded", companding_power=power)
    grid = make_grid(spec)
    scale, _ = grid.fit(w)
    s = f16(np.abs(w).max(axis=0))
    np.testing.assert_array_equal(np.asarray(scale), s)
    maxq = 2 ** bits - 1
    u = np.clip(w / s, -1, 1)
    v = np.sign(u) * np.abs(u) ** np.float32(power)
    ref_codes = np.clip(np.round((v + 1) * (0.5 * maxq)), 0, maxq)
    codes = np.asarray(grid.quantize(w, scale, None))
    # float32 pow may differ by an ulp between numpy and XLA: allow a rare off-by-one at a rounding edge
    assert np.mean(codes != ref_codes) < 0.01 and np.abs(codes - ref_codes).max() <= 1
    vq = 2.0 * ref_codes / maxq - 1.0
    ref_w = s * np.sign(vq) * np.abs(vq) ** (1.0 / power)
    np.testing.assert_allclose(np.asarray(grid.dequantize(ref_codes.astype(np.uint8), scale, None)), ref_w,
                               rtol=1e-5, atol=1e-8)
    # levels are odd-symmetric and end at +-1
    cb = companded_codebook(bits, power)
    np.testing.assert_allclose(cb, -cb[::-1], atol=1e-7)
    assert cb[0] == -1 and cb[-1] == 1


def numpy_uniform_fit(w, bits, symmetric):
    maxq = 2 ** bits - 1
    if symmetric:
        a = np.abs(w).max(axis=0)
        s = f16(2 * a / maxq)
        s = np.where(s > 0, s, 1)
        return s, np.full_like(s, 2 ** (bits - 1))
    lo, hi = np.minimum(w.min(axis=0), 0), np.maximum(w.max(axis=0), 0)
    s = f16((hi - lo) / maxq)
    s = np.where(s > 0, s, 1)
    return s, np.clip(np.round(-lo / s), 0, maxq)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_uniform_fit_quantize_dequantize(bits, symmetric):
    rng = np.random.default_rng(bits)
    w = rng.normal(size=(32, 7)).astype(np.float32)
    w[:, 3] = np.abs(w[:, 3])  # an all-positive column: the asymmetric range still includes 0
    w[:, 4] = 0.0              # an all-zero column
    grid = make_grid(WeightQuantSpec(bits, symmetric=symmetric))
    scale, zero = grid.fit(w)
    ref_s, ref_z = numpy_uniform_fit(w, bits, symmetric)
    np.testing.assert_array_equal(np.asarray(scale), ref_s)
    np.testing.assert_array_equal(np.asarray(zero), ref_z)
    codes = np.asarray(grid.quantize(w, scale, zero))
    ref_codes = np.clip(np.round(w / ref_s + ref_z), 0, 2 ** bits - 1)
    np.testing.assert_array_equal(codes, ref_codes)
    deq = np.asarray(grid.dequantize(codes, scale, zero))
    np.testing.assert_allclose(deq, ref_s * (ref_codes - ref_z), rtol=1e-6)
    assert np.all(deq[:, 4] == 0)
    if not symmetric:  # min-max grid: every weight within half a step
        assert np.all(np.abs(deq - w) <= ref_s / 2 * (1 + 1e-5))


def test_fit_reduces_axis_zero_of_any_rank():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 3, 5)).astype(np.float32)
    grid = make_grid(WeightQuantSpec(4))
    scale, zero = grid.fit(w)
    assert scale.shape == zero.shape == (3, 5)
    s0, z0 = grid.fit(w[:, 1, 2])  # GPTQ-style: one column of one group
    assert float(s0) == float(scale[1, 2]) and float(z0) == float(zero[1, 2])


@pytest.mark.parametrize("symmetric,grid_kind", [(False, "uniform"), (True, "uniform"), (True, "nf4")])
def test_clip_search_against_brute_force(symmetric, grid_kind):
    rng = np.random.default_rng(3)
    w = (rng.standard_t(3, size=(64, 6))).astype(np.float32)
    spec = WeightQuantSpec(4, symmetric=symmetric, grid=grid_kind, clip_search=True, clip_min=0.5,
                           clip_steps=11)
    grid = make_grid(spec)
    scale, zero = grid.fit(w)
    plain = make_grid(WeightQuantSpec(4, symmetric=symmetric, grid=grid_kind))
    s1, z1 = plain.fit(w)
    err_clip = np.sum((np.asarray(grid.quantize_dequantize(w, scale, zero)) - w) ** 2, axis=0)
    err_plain = np.sum((np.asarray(plain.quantize_dequantize(w, s1, z1)) - w) ** 2, axis=0)
    assert np.all(err_clip <= err_plain + 1e-6) and np.any(err_clip < 0.9 * err_plain)
    # brute force in numpy: per column, the best of the 11 shrink factors
    cb = None if grid_kind == "uniform" else np.array(PUBLISHED_NF4, np.float32)
    best = np.full(w.shape[1], np.inf)
    for alpha in np.linspace(1.0, 0.5, 11).astype(np.float32):
        if cb is not None:
            s = f16(np.abs(w).max(axis=0) * alpha)
            q = np.argmin(np.abs(w[..., None] / s[:, None] - cb), axis=-1)
            deq = cb[q] * s
        elif symmetric:
            s = f16(2 * np.abs(w).max(axis=0) * alpha / 15)
            deq = s * (np.clip(np.round(w / s + 8), 0, 15) - 8)
        else:
            lo, hi = np.minimum(w.min(0), 0) * alpha, np.maximum(w.max(0), 0) * alpha
            s = f16((hi - lo) / 15)
            z = np.clip(np.round(-lo / s), 0, 15)
            deq = s * (np.clip(np.round(w / s + z), 0, 15) - z)
        best = np.minimum(best, np.sum((deq - w) ** 2, axis=0))
    np.testing.assert_allclose(err_clip, best, rtol=1e-4)


def test_fit_weight_partial_last_group():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(576, 4)).astype(np.float32)
    grid = make_grid(WeightQuantSpec(4, group_size=128))
    scale, zero = grid.fit_weight(w)
    assert scale.shape == zero.shape == (5, 4)
    for gi, (a, b) in enumerate([(0, 128), (128, 256), (256, 384), (384, 512), (512, 576)]):
        s, z = numpy_uniform_fit(w[a:b], 4, False)
        np.testing.assert_array_equal(np.asarray(scale[gi]), s)
        np.testing.assert_array_equal(np.asarray(zero[gi]), z)
    s_t, z_t = make_grid(WeightQuantSpec(8, group_size=-1)).fit_weight(w)
    assert s_t.shape == (1, 1)
    np.testing.assert_array_equal(np.asarray(s_t)[0], numpy_uniform_fit(w.reshape(-1, 1), 8, False)[0])


def test_spec_errors():
    with pytest.raises(ValueError, match="bits must be one of"):
        WeightQuantSpec(5)
    with pytest.raises(ValueError, match="bits must be one of"):
        WeightQuantSpec(True)
    with pytest.raises(ValueError, match="'nf4' needs bits=4"):
        WeightQuantSpec(3, symmetric=True, grid="nf4")
    with pytest.raises(ValueError, match="set symmetric=True"):
        WeightQuantSpec(4, grid="nf4")
    with pytest.raises(ValueError, match="grid must be one of"):
        WeightQuantSpec(4, grid="fp4")
    with pytest.raises(ValueError, match="group_size must be"):
        WeightQuantSpec(4, group_size=0)
    with pytest.raises(ValueError, match="companding_power"):
        WeightQuantSpec(4, symmetric=True, grid="companded", companding_power=2.0)
    with pytest.raises(ValueError, match="clip_min"):
        WeightQuantSpec(4, clip_search=True, clip_min=0.0)
    with pytest.raises(ValueError, match="exceeds the input dimension 64"):
        make_grid(WeightQuantSpec(4, group_size=128)).fit_weight(jnp.zeros((64, 3)))
