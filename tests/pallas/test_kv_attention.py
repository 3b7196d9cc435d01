"""Quantized-KV flash-decoding attention: interpret mode against qjax's own cache decoding followed by
`grouped_attention` (and the jnp reference), and lowering for TPU and GPU."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_helpers import assert_close, exported_calls, lowered_kernel
from pallas_kernels import quantized_kv_decode_attention, reference
from qjax.ops.attention import grouped_attention
from qjax.quant.kv import QuantKVSpec


def run_case(platform, b, s, h, kvh, d, bits, group, symmetric, num_keys, splits, dtype):
    rng = np.random.default_rng(bits * 100 + s)
    spec = QuantKVSpec(bits, group, symmetric)
    ek = spec.encode(jnp.asarray(rng.standard_normal((b, s, kvh, d)), jnp.float32))
    ev = spec.encode(jnp.asarray(rng.standard_normal((b, s, kvh, d)), jnp.float32))
    q = jnp.asarray(rng.standard_normal((b, h, d)), dtype)
    mask = (jnp.asarray(rng.random((b, s)) < 0.85) & (jnp.arange(s)[None] < num_keys)).at[:, 0].set(True)
    y = quantized_kv_decode_attention(q, ek["codes"], ek["scale"], ek.get("min"), ev["codes"], ev["scale"],
                                      ev.get("min"), mask, num_keys, bits=bits, group_size=group,
                                      platform=platform, interpret=True, s_splits=splits)
    assert y.shape == (b, h, d) and y.dtype == dtype
    k, v = spec.decode(ek, d, jnp.float32), spec.decode(ev, d, jnp.float32)
    expected = grouped_attention(q.astype(jnp.float32)[:, None], k, v, mask[:, None, None, :])[:, 0]
    rtol = 1e-5 if dtype == jnp.float32 else 1e-2
    assert_close(y, np.asarray(expected), rtol, "vs qjax decode + grouped_attention")
    ref = reference.quantized_kv_decode_attention(q, ek["codes"], ek["scale"], ek.get("min"), ev["codes"],
                                                  ev["scale"], ev.get("min"), jnp.full((b,), num_keys),
                                                  bits=bits, group_size=group)
    if bool(jnp.all(mask[:, :num_keys])):
        assert_close(y, np.asarray(ref.astype(jnp.float32)), rtol, "vs jnp reference")


@pytest.mark.parametrize("platform,b,s,h,kvh,d,bits,group,symmetric,num_keys,splits,dtype", [
    ("gpu", 1, 64, 4, 2, 64, 8, 32, True, 64, 1, jnp.bfloat16),   # KV8 symmetric (TPU KV4: test_end_to_end)
    pytest.param("tpu", 2, 64, 9, 3, 64, 4, 32, False, 40, 2, jnp.float32, marks=pytest.mark.slow),  # split S
    pytest.param("tpu", 3, 64, 8, 2, 64, 2, 64, False, 33, 1, jnp.bfloat16, marks=pytest.mark.slow),
    pytest.param("gpu", 2, 128, 8, 8, 128, 4, 32, False, 100, 4, jnp.float32, marks=pytest.mark.slow),
])
def test_kv_decode_attention_interpret(platform, b, s, h, kvh, d, bits, group, symmetric, num_keys, splits, dtype):
    run_case(platform, b, s, h, kvh, d, bits, group, symmetric, num_keys, splits, dtype)


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
@pytest.mark.parametrize("b,s,h,kvh,d,bits,group,asym,splits", [(1, 2048, 32, 8, 128, 4, 32, True, 4),
                                                                 (8, 1024, 9, 3, 64, 8, 32, False, 1)])
def test_kv_decode_attention_lowers(platform, b, s, h, kvh, d, bits, group, asym, splits):
    sd = jax.ShapeDtypeStruct
    codes, stats = sd((b, s, kvh, d * bits // 8), jnp.uint8), sd((b, s, kvh, d // group), jnp.float16)
    args = [sd((b, h, d), jnp.bfloat16), codes, stats, stats if asym else None, codes, stats,
            stats if asym else None, sd((b, s), jnp.bool_), sd((), jnp.int32)]
    fn = functools.partial(quantized_kv_decode_attention, bits=bits, group_size=group, platform=platform,
                           s_splits=splits)
    assert lowered_kernel(platform) in exported_calls(fn, args, "tpu" if platform == "tpu" else "cuda")
