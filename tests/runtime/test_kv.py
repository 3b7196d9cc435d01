"""Quantized KV cache: storage, error, bytes, the cache path through the model, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.models.nll import window_nll
from qjax.models import forward, init_cache
from qjax.models.kv_cache import cache_nbytes
from qjax.ops import Runtime
from qjax.quant.kv import QuantKVSpec, bytes_per_token, kv_spec, kv_window_nll

from runtime_tiny import tiny_config, tiny_params


def _f16(x, direction):
    """float16 rounded towards `direction` (+inf or -inf), as float64."""
    h = x.astype(np.float16)
    wrong = h > x if direction < 0 else h < x
    return np.where(wrong, np.nextafter(h, np.float16(direction)), h).astype(np.float64)


def _numpy_group_quant(x, bits, group):
    """Reference: per-token asymmetric min/max quantization in groups along the last axis, with the
    scale and the minimum stored as float16: x ≈ q * scale + min."""
    g = x.reshape(*x.shape[:-1], -1, group).astype(np.float64)
    lo, hi = g.min(-1, keepdims=True), g.max(-1, keepdims=True)
    scale = _f16(np.maximum((hi - lo) / (2 ** bits - 1), 1e-8), np.inf)
    lo = _f16(lo, -np.inf)
    q = np.clip(np.round((g - lo) / scale), 0, 2 ** bits - 1)
    return (q * scale + lo).reshape(x.shape)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_write_read_matches_numpy_and_stores_packed(bits):
    spec = QuantKVSpec(bits, group_size=8)
    rng = np.random.default_rng(bits)
    layer = spec.init_layer(2, 10, 3, 16, jnp.float32)
    assert layer["k_codes"].shape == (2, 10, 3, 16 * bits // 8) and layer["k_codes"].dtype == jnp.uint8
    assert layer["k_scale"].shape == (2, 10, 3, 2) and layer["k_scale"].dtype == jnp.float16
    k1, v1 = (rng.standard_normal((2, 4, 3, 16)).astype(np.float32) * 4 for _ in range(2))
    k2, v2 = (rng.standard_normal((2, 1, 3, 16)).astype(np.float32) * 4 for _ in range(2))
    layer = spec.write_layer(layer, jnp.asarray(k1), jnp.asarray(v1), 0)
    codes_before = np.asarray(layer["k_codes"][:, :4])
    layer = spec.write_layer(layer, jnp.asarray(k2), jnp.asarray(v2), 4)
    np.testing.assert_array_equal(layer["k_codes"][:, :4], codes_before)  # quantized once, when written
    k, v = spec.read_layer(layer, jnp.float32)
    for got, want in ((k[:, :4], k1), (k[:, 4:5], k2), (v[:, :4], v1), (v[:, 4:5], v2)):
        ref = _numpy_group_quant(want, bits, 8)
        step = (np.ptp(want.reshape(2, -1, 3, 2, 8), -1) / (2 ** bits - 1)).max()
        np.testing.assert_allclose(got, ref, atol=1e-4 * step + 1e-5)
        assert np.abs(np.asarray(got) - want).max() <= step * 0.502
    assert float(jnp.abs(k[:, 5:]).max()) == 0.0


def test_error_ordered_by_bits_and_symmetric_mode():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 64, 2, 32)), jnp.float32)
    errors = []
    for bits in (2, 3, 4, 8):
        spec = QuantKVSpec(bits, group_size=16)
        errors.append(float(jnp.abs(spec.decode(spec.encode(x), 32, jnp.float32) - x).mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01
    sym = QuantKVSpec(4, group_size=16, symmetric=True)
    enc = sym.encode(x)
    assert "min" not in enc
    assert float(jnp.abs(sym.decode(enc, 32, jnp.float32) - x).max()) <= float(
        jnp.abs(x).max()) / 7 / 2 * 1.01


def test_nbytes_hand_computed():
    config = tiny_config(head_dim=64, num_heads=2, num_kv_heads=1, hidden_size=64)
    spec = kv_spec(4, group_size=32)
    cache = init_cache(config, batch=2, max_len=10, spec=spec)
    # per (token, head): 64 codes * 4 bits = 32 bytes, 2 groups x (scale + zero) x 2 bytes = 8 bytes
    per_layer = 2 * 10 * 1 * (32 + 8) * 2  # batch * slots * heads * bytes * (K and V)
    assert cache_nbytes(cache, spec) == per_layer * config.num_layers
    assert bytes_per_token(spec, config) == (32 + 8) * 2 * config.num_layers
    assert bytes_per_token(None, config) == 64 * 4 * 2 * config.num_layers


def test_cache_path_through_model():
    config = tiny_config()
    params = tiny_params(config)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 24)), jnp.int32)
    plain = np.asarray(window_nll(params, tokens, config))
    np.testing.assert_allclose(kv_window_nll(params, tokens, config, Runtime()), plain, rtol=1e-5)
    gaps = [float(np.abs(kv_window_nll(params, tokens, config, Runtime(kv_cache=kv_spec(b, 16))) - plain).sum())
            for b in (8, 4, 2)]
    assert 0 < gaps[0] < gaps[1] < gaps[2]
    # a decode step reads the quantized cache written by the prefill
    spec = kv_spec(8, 16)
    rt = Runtime(kv_cache=spec)
    cache = init_cache(config, 2, 25, spec=spec)
    _, cache = forward(params, tokens, config, rt, cache=cache)
    step, _ = forward(params, tokens[:, :1], config, rt, cache=cache)
    full, _ = forward(params, jnp.concatenate([tokens, tokens[:, :1]], 1), config)
    np.testing.assert_allclose(step[:, 0], full[:, -1], atol=0.05 * float(jnp.abs(full[:, -1]).max()))


def test_bad_input():
    with pytest.raises(ValueError, match="kvbits must be one of"):
        kv_spec(5)
    with pytest.raises(ValueError, match="bits must be one of"):
        QuantKVSpec(16)
    assert kv_spec(16) is None
    with pytest.raises(ValueError, match="does not divide head_dim 16"):
        init_cache(tiny_config(), 1, 4, spec=QuantKVSpec(4, group_size=12))
