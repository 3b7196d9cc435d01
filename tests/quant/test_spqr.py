"""SpQR against a numpy transcription of Vahe1994/SpQR `SPQRUtil.quantize` (torch (out, in) layout,
float64, one column at a time), outliers vs none on planted outliers, QArray bytes and bits/param."""

from __future__ import annotations

import numpy as np
import pytest

from qjax.quant.spqr import SpQRConfig, paper_bits_per_param, spqr_quantize, to_qarray


def _fit(x, maxq):
    """SpQR Quantizer.find_params(perchannel, sym=False, round_zero=False) over axis 1 of x (rows, n)."""
    lo, hi = x.min(1), x.max(1)
    same = lo == hi
    lo, hi = np.where(same, -1.0, lo), np.where(same, 1.0, hi)
    zero = -lo / ((hi - lo) / maxq)
    far = (zero < -maxq) | (zero > 2 * maxq)  # nearly constant away from 0: include 0 in the range
    lo, hi = np.where(far, np.minimum(lo, 0), lo), np.where(far, np.maximum(hi, 0), hi)
    scale = (hi - lo) / maxq
    return scale, -lo / scale


def _second_level(x, bits, group):
    """qjax's second level on one (out,) statistic: per group of `group`, offset = min and
    step = (max - min) / maxq stored in fp16, value = offset + step * round((x - offset) / step)."""
    maxq = 2 ** bits - 1
    out = np.empty_like(x)
    for s in range(0, len(x), group):
        v = x[s:s + group]
        lo = np.float64(np.float16(v.min()))
        step = np.float64(np.float16((v.max() - lo) / maxq))
        step = step if step > 0 else 1.0
        out[s:s + group] = lo + step * np.clip(np.round((v - lo) / step), 0, maxq)
    return out


def _quant(x, scale, zero, maxq):
    q = np.clip(np.round(x / np.maximum(scale, 1e-9) + zero), 0, maxq)
    return q, scale * (q - zero)


def _loo(group_weight, d, maxq):
    """get_leave_one_out_error: (out, g) decrease of the d-weighted squared error per left-out weight."""
    out_dim, g = group_weight.shape
    red = np.zeros_like(group_weight)
    s0, z0 = _fit(group_weight, maxq)
    base = (((_quant(group_weight, s0[:, None], z0[:, None], maxq)[1] - group_weight) / d) ** 2).sum(1)
    for k in range(g):
        keep = [j for j in range(g) if j != k]
        part = group_weight[:, keep]
        s, z = _fit(part, maxq)
        err = (((_quant(part, s[:, None], z[:, None], maxq)[1] - part) / d[keep]) ** 2).sum(1)
        red[:, k] = base - err
    return red


def reference_spqr(w_in_out, h, bits, groupsize, threshold_rel, percdamp=1.0, qq_bits=3, qq_group=16):
    """Returns (dequantized weight (in, out), outlier mask (in, out))."""
    weight = np.array(w_in_out, np.float64).T  # (out, in)
    h = np.array(h, np.float64)
    out_dim, in_dim = weight.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    weight[:, dead] = 0
    h = h + percdamp * np.mean(np.diag(h)) * np.eye(in_dim)
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    d = np.diag(u)
    maxq = 2 ** bits - 1
    tau = threshold_rel * np.mean(weight.var(axis=0, ddof=1) / d ** 2)
    mask = np.zeros_like(weight, bool)
    for c in range(in_dim):
        if c % groupsize == 0:
            gw = weight[:, c:c + groupsize]
            if np.isfinite(tau):
                likely = _loo(gw, d[c:c + groupsize], maxq) > tau
                keep = ~likely
                mean = (gw * keep).sum(1, keepdims=True) / np.maximum(keep.sum(1, keepdims=True), 1)
                gw = np.where(likely, mean, gw)
            scale, zero = _fit(gw, maxq)
            scale, zero = _second_level(scale, qq_bits, qq_group), _second_level(zero, qq_bits, qq_group)
        col = weight[:, c].copy()
        _, q = _quant(col, scale, zero, maxq)
        if np.isfinite(tau):
            out = ((col - q) / d[c]) ** 2 > tau
            mask[:, c] = out
            q = np.where(out, col.astype(np.float16).astype(np.float64), q)
        err = (col - q) / d[c]
        weight[:, c] = q
        weight[:, c + 1:] -= np.outer(err, u[c, c + 1:])
    return weight.T, mask.T


def _problem(n_in=64, n_out=32, seed=0, planted=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, n_in)) @ (np.eye(n_in) + 0.3 * rng.normal(size=(n_in, n_in)))
    h = (x.T @ x / 300).astype(np.float32)
    w = (rng.normal(size=(n_in, n_out)) * 0.02).astype(np.float32)
    if planted:
        idx = rng.choice(n_in * n_out, planted, replace=False)
        w.reshape(-1)[idx] = rng.choice([-1, 1], planted) * rng.uniform(0.15, 0.3, planted)
    return w, h


@pytest.mark.parametrize("bits,threshold", [(3, 0.2), (2, float("inf"))])
def test_matches_numpy_reference(bits, threshold):
    w, h = _problem(planted=20)
    cfg = SpQRConfig(outlier_threshold=threshold, block_size=32)
    res = spqr_quantize(w, h, bits, 16, cfg)
    ref_w, ref_mask = reference_spqr(w, h, bits, 16, threshold)
    mask = np.asarray(res.outliers)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(np.asarray(res.weight), ref_w, rtol=1e-3, atol=1e-5)
    if np.isfinite(threshold):
        assert 0 < mask.sum() < 0.05 * mask.size
    # the QArray (3-bit second-level statistics, fp16 COO outliers) reconstructs the same weight
    qa = to_qarray(res, bits, 16, cfg)
    np.testing.assert_allclose(np.asarray(qa.dequantize()), np.asarray(res.weight), rtol=1e-6, atol=1e-7)


def test_nearly_constant_columns_stay_finite():
    """Groups whose columns are nearly constant away from 0 (as GGUF-dequantized weights with many
    repeated values become after the leave-one-out replacement): without the range guard the zero
    point is ~1e5 and the fp16 second-level statistics overflow to NaN."""
    w, h = _problem(n_in=64, n_out=32, seed=2)
    w[16:32, 5] = 0.0483 + np.float32(1e-8) * np.arange(16)
    w[16:32, 6] = -0.0285
    w[17, 6] = -0.0285 + 1e-6
    for threshold in (0.2, float("inf")):
        cfg = SpQRConfig(outlier_threshold=threshold, block_size=32)
        res = spqr_quantize(w, h, 2, 16, cfg)
        ref_w, _ = reference_spqr(w, h, 2, 16, threshold)
        qa = to_qarray(res, 2, 16, cfg)
        assert np.all(np.isfinite(np.asarray(res.weight))) and np.all(np.isfinite(np.asarray(qa.dequantize())))
        np.testing.assert_allclose(np.asarray(res.weight), ref_w, rtol=1e-3, atol=1e-5)
        assert np.max(np.abs(np.asarray(res.weight)[16:32, 5:7] - w[16:32, 5:7])) < 0.05


def test_outliers_lower_the_error_on_planted_outliers():
    w, h = _problem(n_in=64, n_out=48, seed=1, planted=40)

    def err(q):
        dlt = w.astype(np.float64) - np.asarray(q, np.float64)
        return np.trace(dlt.T @ h @ dlt)

    with_out = spqr_quantize(w, h, 2, 16, SpQRConfig(outlier_threshold=0.2))
    without = spqr_quantize(w, h, 2, 16, SpQRConfig(outlier_threshold=float("inf")))
    assert with_out.outlier_count > 0 and without.outlier_count == 0
    assert err(with_out.weight) < 0.5 * err(without.weight)


def test_bits_per_param():
    assert paper_bits_per_param(3, 16, 3, 16, 0.0) == pytest.approx(3 + 6 / 16 + 64 / 256)
    assert paper_bits_per_param(2, 16, 3, 16, 0.01) == pytest.approx(2 + 6 / 16 + 64 / 256 + 0.32)
    w, h = _problem(n_in=64, n_out=32, seed=2, planted=10)
    res = spqr_quantize(w, h, 3, 16, SpQRConfig())
    qa = to_qarray(res, 3, 16)
    n_groups, nnz = 64 // 16, res.outlier_count
    # 3-bit codes; per statistic (scale, zero): 3-bit codes packed over the 4 groups + fp16 scale and
    # offset per 16 columns; outliers: uint16 row + uint16 col + fp16 value
    expected = 64 * 32 * 3 // 8 + 2 * (2 * 32 + 2 * 2 * 4 * 2) + nnz * 6
    assert nnz > 0 and n_groups * 3 <= 16
    assert qa.nbytes == expected


def test_bad_inputs():
    w, h = _problem()
    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        spqr_quantize(w, h, 3, None)
    with pytest.raises(ValueError, match="exceeds the input dimension"):
        spqr_quantize(w, h, 3, 128)
    w[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        spqr_quantize(w, h, 3, 16)
