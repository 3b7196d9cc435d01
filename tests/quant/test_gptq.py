"""GPTQ against a straightforward numpy implementation of the paper's algorithm (no lazy batching,
no jit, float64), plus error, bad-input and QArray checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from qjax.quant.gptq import GPTQConfig, gptq_quantize, to_qarray
from qjax.quant.rtn import quantize_rtn
from qjax.formats.spec import WeightQuantSpec


# ------------------------------------------------------------------------------------------------
# Independent reference


def _ref_fit(x: np.ndarray, bits: int, sym: bool):
    """GPTQ's Quantizer.find_params(weight=True, perchannel) over axis 0 of x (rows, out)."""
    maxq = 2 ** bits - 1
    xmin = np.minimum(x.min(0), 0.0)
    xmax = np.maximum(x.max(0), 0.0)
    if sym:
        xmax = np.maximum(np.abs(xmin), xmax)
        xmin = np.where(xmin < 0, -xmax, xmin)
    scale = (xmax - xmin) / maxq
    zero = np.full_like(scale, (maxq + 1) / 2) if sym else np.round(-xmin / scale)
    return scale, zero


def _ref_quant(x, scale, zero, bits, tie_codes=None):
    """q = clip(round(x / scale) + zero). Where x / scale lies within 1e-3 of a rounding tie (a
    symmetric grid puts -absmax exactly on one) float32 and float64 may round either way; there the
    code under test's choice `tie_codes` is taken, so later rows stay comparable."""
    v = x / scale
    q = np.clip(np.round(v) + zero, 0, 2 ** bits - 1)
    ties = np.abs(v - np.floor(v) - 0.5) < 1e-3
    if tie_codes is not None:
        q = np.where(ties, tie_codes, q)
    return q, scale * (q - zero), int(ties.sum())


def reference_gptq(w, h, bits, group=None, sym=False, percdamp=0.01, act_order=False, static_groups=False,
                   tie_codes=None):
    """The paper's GPTQ, one row (input feature) at a time with immediate updates.

    Returns (codes, dequantized weight, number of rounding ties resolved by `tie_codes`)."""
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    n = w.shape[0]
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[dead] = 0
    static = None
    if group is None:
        static = [_ref_fit(w, bits, sym)] * n
    elif static_groups:
        fits = [_ref_fit(w[s:s + group], bits, sym) for s in range(0, n, group)]
        static = [fits[r // group] for r in range(n)]
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(n)
    w, h = w[perm], h[perm][:, perm]
    static = None if static is None else [static[p] for p in perm]
    tie_codes = None if tie_codes is None else np.asarray(tie_codes, np.float64)[perm]
    n_ties = 0
    h = h + percdamp * np.mean(np.diag(h)) * np.eye(n)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H^-1 = U^T U
    codes, q = np.zeros_like(w), np.zeros_like(w)
    for r in range(n):
        if static is not None:
            scale, zero = static[r]
        elif r % group == 0:
            scale, zero = _ref_fit(w[r:r + group], bits, sym)
        codes[r], q[r], t = _ref_quant(w[r], scale, zero, bits,
                                       None if tie_codes is None else tie_codes[r])
        n_ties += t
        err = (w[r] - q[r]) / u[r, r]
        w[r:] -= np.outer(u[r, r:], err)
    inv = np.argsort(perm)
    return codes[inv].astype(np.uint8), q[inv], n_ties


def _problem(n_in=96, n_out=24, seed=0, tokens=400):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(n_in, n_in)) * 0.3 + np.eye(n_in)
    x = rng.normal(size=(tokens, n_in)) @ mix * rng.uniform(0.2, 3.0, n_in)  # correlated, uneven
    h = (x.T @ x / tokens).astype(np.float32)
    w = rng.normal(size=(n_in, n_out)).astype(np.float32) * 0.05
    return w, h


CASES = [
    dict(bits=4, group=None, sym=False),
    dict(bits=3, group=32, sym=False),
    dict(bits=4, group=16, sym=True, block=32),  # several lazy blocks, several groups per block
    dict(bits=2, group=40, sym=False, block=32),  # group larger than the block, partial last group
    dict(bits=4, group=None, sym=False, act_order=True),
    dict(bits=3, group=32, sym=False, act_order=True, static_groups=True),
    dict(bits=3, group=32, sym=False, static_groups=True),
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_matches_numpy_reference(case):
    w, h = _problem()
    bits, group, sym = case["bits"], case["group"], case["sym"]
    spec = WeightQuantSpec(bits=bits, group_size=group, symmetric=sym, scale_dtype="float32")
    cfg = GPTQConfig(block_size=case.get("block", 128), act_order=case.get("act_order", False),
                     static_groups=case.get("static_groups", False))
    res = gptq_quantize(w, h, spec, cfg)
    codes = np.asarray(res.codes)
    ref_codes, ref_q, ties = reference_gptq(w, h, bits, group, sym, act_order=cfg.act_order,
                                            static_groups=cfg.static_groups, tie_codes=codes)
    assert ties <= 0.01 * codes.size
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_allclose(np.asarray(res.weight), ref_q, rtol=1e-4, atol=1e-5)


def test_error_below_rtn_and_qarray_roundtrip():
    w, h = _problem(n_in=128, n_out=64, seed=1)
    for bits, group in ((4, 32), (3, 64), (3, None)):
        spec = WeightQuantSpec(bits=bits, group_size=group)
        res = gptq_quantize(w, h, spec)
        rtn = np.asarray(quantize_rtn(w, spec).dequantize(), np.float64)

        def err(q):
            d = w.astype(np.float64) - q
            return np.trace(d.T @ h @ d)

        e_gptq, e_rtn = err(np.asarray(res.weight, np.float64)), err(rtn)
        assert e_gptq < 0.8 * e_rtn, (bits, group, e_gptq, e_rtn)
        assert res.error == pytest.approx(e_gptq / np.trace(w.T @ h @ w), rel=1e-3)
        qa = to_qarray(res, spec)
        np.testing.assert_allclose(np.asarray(qa.dequantize()), np.asarray(res.weight), rtol=1e-6, atol=1e-7)


def test_codebook_grid_and_dead_inputs():
    w, h = _problem(n_in=64, n_out=16, seed=2)
    h[5, :] = h[:, 5] = 0  # input 5 never fires
    spec = WeightQuantSpec(bits=4, group_size=32, symmetric=True, grid="nf4")
    res = gptq_quantize(w, h, spec)
    assert res.dead == 1 and res.zero is None
    q = np.asarray(res.weight)
    assert q[5].tolist() == [0.0] * 16  # a dead row quantizes to the NF4 zero level
    np.testing.assert_allclose(np.asarray(to_qarray(res, spec).dequantize()), q, rtol=1e-6)


def test_non_positive_definite_hessian_is_retried_and_logged(caplog):
    w, h = _problem(n_in=48, n_out=8, seed=3)
    lam_min = np.linalg.eigvalsh(h.astype(np.float64)).min()
    h_bad = h - (lam_min + 0.3 * np.mean(np.diag(h))) * np.eye(48, dtype=np.float32)  # needs damp > 0.3
    spec = WeightQuantSpec(bits=4)
    with caplog.at_level(logging.WARNING, logger="qjax.quant.gptq"):
        res = gptq_quantize(w, h_bad, spec, path="layers_0/mlp/up_proj/kernel")
    assert res.retries == 2 and res.percdamp == pytest.approx(1.0)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2 and all("layers_0/mlp/up_proj/kernel" in m and "not positive definite" in m
                                  for m in msgs)
    with pytest.raises(ValueError, match="not positive definite even with dampening"):
        gptq_quantize(w, h_bad, spec, GPTQConfig(damp_retries=1), path="x")


def test_bad_inputs_raise_clearly():
    w, h = _problem(n_in=32, n_out=8, seed=4)
    w_nan = w.copy()
    w_nan[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"lin: weight holds 1 NaN/Inf"):
        gptq_quantize(w_nan, h, WeightQuantSpec(bits=4), path="lin")
    with pytest.raises(ValueError, match="group_size 64 exceeds the input dimension 32"):
        gptq_quantize(w, h, WeightQuantSpec(bits=4, group_size=64))
    with pytest.raises(ValueError, match="static_groups=True"):
        gptq_quantize(w, h, WeightQuantSpec(bits=4, group_size=16),
                      GPTQConfig(act_order=True, static_groups=False))
    with pytest.raises(ValueError, match=r"Hessian has shape \(16, 16\)"):
        gptq_quantize(w, h[:16, :16], WeightQuantSpec(bits=4))
    h_nan = h.copy()
    h_nan[0, 0] = np.inf
    with pytest.raises(ValueError, match="Hessian holds NaN or Inf"):
        gptq_quantize(w, h_nan, WeightQuantSpec(bits=4))
    with pytest.raises(ValueError, match="bits must be one of"):
        WeightQuantSpec(bits=5)
