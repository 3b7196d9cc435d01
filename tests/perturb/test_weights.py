"""Weight perturbation by rules, the grid round trip and quantization error, against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.perturb.activations import site_id
from qjax.perturb.kinds import Gaussian, Proportional
from qjax.perturb.weights import GridRoundTrip, perturb_params, quantization_error, quantize_params
from qjax.quant.rules import DEFAULT_WEIGHT_PATTERN, flatten_params
from qjax.formats.spec import WeightQuantSpec

from perturb_tiny import tiny_params

KEY = jax.random.key(11)
PAT = DEFAULT_WEIGHT_PATTERN


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(b - a) / np.linalg.norm(a)


def test_only_matched_leaves_change_each_at_the_intensity():
    params = tiny_params()
    out = flatten_params(perturb_params(params, ((PAT, Gaussian()),), 0.07, KEY))
    flat = flatten_params(params)
    assert out.keys() == flat.keys()
    kernels = [p for p in flat if p.endswith("_proj/kernel")]
    assert len(kernels) == 7
    for path, leaf in flat.items():
        if path in kernels:
            np.testing.assert_allclose(rel(leaf, out[path]), 0.07, rtol=1e-5)
            expect = Gaussian()(leaf, 0.07, jax.random.fold_in(KEY, site_id(path)))
            np.testing.assert_allclose(np.asarray(out[path]), np.asarray(expect), rtol=1e-5, atol=1e-7)
        else:  # embeddings and norms untouched
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(out[path]))
    # independent noise per tensor: the same-shape gate and up kernels get different noise
    d0 = np.asarray(out["layers_0/mlp/gate_proj/kernel"]) - np.asarray(flat["layers_0/mlp/gate_proj/kernel"])
    d1 = np.asarray(out["layers_0/mlp/up_proj/kernel"]) - np.asarray(flat["layers_0/mlp/up_proj/kernel"])
    assert abs(np.corrcoef(d0.ravel(), d1.ravel())[0, 1]) < 0.2


def test_first_match_wins_and_none_excludes():
    params = tiny_params()
    rules = ((r".*/gate_proj/kernel", None), (r".*/mlp/.*/kernel", Proportional()), (PAT, Gaussian()))
    out = flatten_params(perturb_params(params, rules, 0.1, KEY))
    flat = flatten_params(params)
    assert np.array_equal(out["layers_0/mlp/gate_proj/kernel"], flat["layers_0/mlp/gate_proj/kernel"])
    expect = Proportional()(flat["layers_0/mlp/up_proj/kernel"], 0.1,
                            jax.random.fold_in(KEY, site_id("layers_0/mlp/up_proj/kernel")))
    np.testing.assert_allclose(np.asarray(out["layers_0/mlp/up_proj/kernel"]), np.asarray(expect),
                               rtol=1e-5, atol=1e-7)
    expect = Gaussian()(flat["layers_0/attn/o_proj/kernel"], 0.1,
                        jax.random.fold_in(KEY, site_id("layers_0/attn/o_proj/kernel")))
    np.testing.assert_allclose(np.asarray(out["layers_0/attn/o_proj/kernel"]), np.asarray(expect),
                               rtol=1e-5, atol=1e-7)


def test_per_tensor_intensity_mapping_and_traced_intensity():
    params = tiny_params()
    paths = [p for p in flatten_params(params) if p.endswith("_proj/kernel")]
    amounts = {p: 0.01 * (i + 1) for i, p in enumerate(paths)}
    out = flatten_params(perturb_params(params, ((PAT, Gaussian()),), amounts, KEY))
    for p in paths:
        np.testing.assert_allclose(rel(flatten_params(params)[p], out[p]), amounts[p], rtol=1e-5)
    jitted = jax.jit(lambda a: perturb_params(params, ((PAT, Gaussian()),), a, KEY))(0.07)
    eager = perturb_params(params, ((PAT, Gaussian()),), 0.07, KEY)
    eager = flatten_params(eager)
    for p, a in flatten_params(jitted).items():
        np.testing.assert_allclose(np.asarray(a), np.asarray(eager[p]), rtol=1e-5, atol=1e-7, err_msg=p)


def test_bad_inputs():
    params = tiny_params()
    with pytest.raises(ValueError, match="matched no parameter"):
        perturb_params(params, ((PAT, Gaussian()), (r"layers_7/.*", Gaussian())), 0.1, KEY)
    with pytest.raises(ValueError, match="no entry for matched leaf"):
        perturb_params(params, ((PAT, Gaussian()),), {"layers_0/attn/q_proj/kernel": 0.1}, KEY)
    with pytest.raises(ValueError, match="intensity must be in"):
        perturb_params(params, ((PAT, Gaussian()),), -0.5, KEY)
    with pytest.raises(ValueError, match="expected an \\(in, out\\) kernel"):
        GridRoundTrip(WeightQuantSpec(4))(jnp.ones((3, 4, 5)))


def np_rtn(w, bits, group, symmetric):
    """Independent numpy RTN (GPTQ / llm-compressor conventions, fp16 scales), groups of input rows."""
    w = np.asarray(w, np.float64)
    maxq = 2 ** bits - 1
    out = np.empty_like(w)
    for r0 in range(0, w.shape[0], group):
        g = w[r0:r0 + group]
        if symmetric:
            scale = np.float16(2 * np.abs(g).max(0) / maxq).astype(np.float64)
            zero = 2 ** (bits - 1)
        else:
            lo, hi = np.minimum(g.min(0), 0), np.maximum(g.max(0), 0)
            scale = np.float16((hi - lo) / maxq).astype(np.float64)
            zero = np.clip(np.round(-lo / scale), 0, maxq)
        q = np.clip(np.round(g / scale + zero), 0, maxq)
        out[r0:r0 + group] = scale * (q - zero)
    return out


def np_companded(w, bits, group, power=1 / 3):
    w = np.asarray(w, np.float64)
    maxq = 2 ** bits - 1
    out = np.empty_like(w)
    for r0 in range(0, w.shape[0], group):
        g = w[r0:r0 + group]
        scale = np.float16(np.abs(g).max(0)).astype(np.float64)
        u = np.clip(g / scale, -1, 1)
        q = np.clip(np.round((np.sign(u) * np.abs(u) ** power + 1) / 2 * maxq), 0, maxq)
        v = 2 * q / maxq - 1
        out[r0:r0 + group] = scale * np.sign(v) * np.abs(v) ** (1 / power)
    return out


@pytest.mark.parametrize("bits,group,symmetric", [(4, 32, False), (3, 64, True), (4, 128, False)])
def test_grid_round_trip_matches_numpy_rtn(bits, group, symmetric):
    w = np.asarray(jax.random.normal(jax.random.key(2), (128, 24)), np.float32)
    got = np.asarray(GridRoundTrip(WeightQuantSpec(bits, group, symmetric))(w))
    np.testing.assert_allclose(got, np_rtn(w, bits, group, symmetric), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [3, 4])
def test_companded_round_trip_matches_numpy(bits):
    w = np.asarray(jax.random.normal(jax.random.key(3), (128, 24)), np.float32)
    spec = WeightQuantSpec(bits, 32, symmetric=True, grid="companded")
    np.testing.assert_allclose(np.asarray(GridRoundTrip(spec)(w)), np_companded(w, bits, 32),
                               rtol=1e-5, atol=1e-6)


def test_quantization_error_and_quantize_params():
    params = tiny_params()
    rt = GridRoundTrip(WeightQuantSpec(4, 16))
    errs = quantization_error(params, PAT, rt)
    qparams = flatten_params(quantize_params(params, PAT, rt))
    for path, leaf in flatten_params(params).items():
        if path in errs:
            ref = np_rtn(leaf, 4, 16, False)
            np.testing.assert_allclose(float(errs[path]), rel(leaf, ref), rtol=1e-4)
            np.testing.assert_allclose(np.asarray(qparams[path]), ref, rtol=1e-5, atol=1e-6)
        else:
            assert path not in qparams or np.array_equal(np.asarray(qparams[path]), np.asarray(leaf))
    assert len(errs) == 7
