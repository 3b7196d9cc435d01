"""Integer W8A8 / W4A8: activation codes equal qjax's fake quantization; the kernel in interpret mode
equals the exact-integer reference and the simulated float path; it lowers for TPU and GPU."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_helpers import assert_close, exported_calls, lowered_kernel, random_qarray, xla_product
from pallas_kernels import int8_matmul, quantize_rows, reference
from qjax.ops import act_quant


def test_quantize_rows_is_the_fake_quant_grid():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((7, 96)) * 3, jnp.float32)
    codes, scale = quantize_rows(x)
    assert codes.dtype == jnp.int8 and scale.shape == (7, 1)
    np.testing.assert_array_equal(np.asarray(codes, np.float32) * np.asarray(scale),
                                  np.asarray(act_quant.fake_quant(x, 8, True, "token")))


@pytest.mark.parametrize("platform,m,k,n,bits,group,asym", [
    ("gpu", 5, 576, 192, 4, 128, True),     # W4A8 g128, partial last group (TPU W8A8: test_kernel_seam)
    pytest.param("tpu", 3, 576, 192, 8, None, False, marks=pytest.mark.slow),  # W8A8 per channel
    pytest.param("tpu", 33, 512, 128, 8, 64, True, marks=pytest.mark.slow),
    pytest.param("gpu", 1, 512, 128, 8, None, False, marks=pytest.mark.slow),
])
def test_int8_matmul_interpret(platform, m, k, n, bits, group, asym):
    rng = np.random.default_rng(m + bits)
    qa = random_qarray(rng, k, n, bits, group, asymmetric=asym)
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    xq, xs = quantize_rows(x)
    y = int8_matmul(xq, xs, qa.codes, qa.scale, qa.zero, bits=bits, group_size=qa.rows_per_group,
                    platform=platform, interpret=True)
    exact = reference.int8_matmul(xq, xs, qa.codes, qa.scale, qa.zero, bits=bits, group_size=qa.rows_per_group)
    assert_close(y, np.asarray(exact), 1e-6, "vs exact-integer reference")
    assert_close(y, xla_product(act_quant.fake_quant(x, 8, True, "token"), qa), 1e-5, "vs simulated W8A8")


def test_int8_matmul_rejects_float_and_codebooks():
    rng = np.random.default_rng(1)
    qa = random_qarray(rng, 256, 128, 8, None, asymmetric=False)
    with pytest.raises(ValueError, match="must be int8"):
        int8_matmul(jnp.ones((1, 256)), jnp.ones((1, 1)), qa.codes, qa.scale, bits=8, group_size=256, platform="tpu")
    with pytest.raises(ValueError, match="weight bits must be one of"):
        int8_matmul(jnp.ones((1, 256), jnp.int8), jnp.ones((1, 1)), qa.codes, qa.scale, bits=2, group_size=256,
                    platform="tpu")


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
@pytest.mark.parametrize("m,k,n,bits,group", [(256, 4096, 11008, 8, None), (1, 11008, 4096, 4, 128)])
def test_int8_matmul_lowers(platform, m, k, n, bits, group):
    group = group or k
    sd = jax.ShapeDtypeStruct
    stats = sd((-(-k // group), n), jnp.float16)
    args = [sd((m, k), jnp.int8), sd((m, 1), jnp.float32), sd((k * bits // 8, n), jnp.uint8), stats]
    fn = functools.partial(int8_matmul, bits=bits, group_size=group, platform=platform)
    assert lowered_kernel(platform) in exported_calls(fn, args, "tpu" if platform == "tpu" else "cuda")
