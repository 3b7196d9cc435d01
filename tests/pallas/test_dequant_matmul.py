"""The Pallas dequantizing matmul in interpret mode against the jnp reference and qjax's XLA
dequantizing path (independent unpacking), and lowered for TPU (Mosaic) and GPU (Triton)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_helpers import assert_close, exported_calls, lowered_kernel, random_qarray, xla_product
from pallas_kernels import dequant_matmul, layout, reference
from qjax.formats import pack


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_reference_unpack_matches_qjax_packing(bits):
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 2 ** bits, (40, 3))
    np.testing.assert_array_equal(np.asarray(reference.unpack_codes(pack(q, bits), bits, 40)), q)


def run(x, qa, platform, **kw):
    return dequant_matmul(x, qa.codes, qa.scale, qa.zero, qa.codebook, bits=qa.bits,
                          group_size=qa.rows_per_group, platform=platform, interpret=True, **kw)


# (platform, M, K, N, bits, group, asymmetric, grid, dtype, k_splits): partial last groups (576 at
# g128), per channel, codebooks, both activation dtypes, ragged N / M, split K
CASES = [
    ("tpu", 1, 576, 192, 4, 128, True, "uniform", jnp.float32, 2),
    ("tpu", 5, 256, 160, 3, 64, True, "uniform", jnp.bfloat16, 1),
    ("gpu", 17, 512, 64, 8, 32, True, "uniform", jnp.bfloat16, 1),
]
MORE_CASES = [  # the slow suite
    ("gpu", 2, 256, 128, 4, None, False, "companded", jnp.float32, 1),
    ("tpu", 3, 256, 128, 2, 32, False, "uniform", jnp.float32, 1),
    ("tpu", 64, 384, 128, 8, None, False, "uniform", jnp.bfloat16, 1),
    ("tpu", 2, 256, 128, 4, 64, False, "nf4", jnp.float32, 1),
    ("gpu", 1, 576, 192, 4, 128, True, "uniform", jnp.float32, 4),
]


@pytest.mark.parametrize("platform,m,k,n,bits,group,asym,grid,dtype,splits",
                         CASES + [pytest.param(*c, marks=pytest.mark.slow) for c in MORE_CASES])
def test_dequant_matmul_interpret(platform, m, k, n, bits, group, asym, grid, dtype, splits):
    rng = np.random.default_rng(m * k + bits)
    qa = random_qarray(rng, k, n, bits, group, asymmetric=asym, grid=grid)
    x = jnp.asarray(rng.standard_normal((m, k)), dtype)
    y = run(x, qa, platform, k_splits=splits)
    assert y.shape == (m, n) and y.dtype == dtype
    rtol = 1e-5 if dtype == jnp.float32 else 1e-2
    ref = reference.dequant_matmul(x, qa.codes, qa.scale, qa.zero, qa.codebook, bits=bits,
                                   group_size=qa.rows_per_group)
    assert_close(y, np.asarray(ref.astype(jnp.float32)), rtol, "vs jnp reference")
    assert_close(y, xla_product(x.astype(jnp.float32), qa), rtol, "vs XLA dequantizing path")


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["tpu", "gpu"])
@pytest.mark.parametrize("bits,group", [(2, 64), (3, 128), (4, 32), (4, 128), (8, 128), (8, None)])
@pytest.mark.parametrize("m", [1, 8, 33, 64])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dequant_matmul_sweep(platform, bits, group, m, dtype):
    rng = np.random.default_rng(bits * 1000 + m)
    k, n = (576, 192) if layout.supports_codes(576, 192, bits, group or 576, platform) else (512, 192)
    qa = random_qarray(rng, k, n, bits, group, asymmetric=m % 2 == 1)
    x = jnp.asarray(rng.standard_normal((m, k)), dtype)
    assert_close(run(x, qa, platform, k_splits=2 if m == 1 else 1), xla_product(x.astype(jnp.float32), qa),
                 1e-5 if dtype == jnp.float32 else 1e-2)


def test_unsupported_shapes_are_named():
    rng = np.random.default_rng(0)
    qa = random_qarray(rng, 576, 192, 3, 128)  # 72 units of 3-bit codes: no Triton block of >= 16 divides it
    assert not layout.supports_codes(576, 192, 3, 128, "gpu") and layout.supports_codes(576, 192, 3, 128, "tpu")
    with pytest.raises(ValueError, match="not supported on gpu"):
        run(jnp.ones((1, 576)), qa, "gpu")
    with pytest.raises(ValueError, match="platform must be one of"):
        run(jnp.ones((1, 576)), qa, "cpu")
    with pytest.raises(ValueError, match="codes must be uint8"):
        dequant_matmul(jnp.ones((1, 512)), qa.codes, qa.scale, qa.zero, bits=3, group_size=128, platform="tpu")


LOWER = [(1, 4096, 4096, 4, 128, True, None, 4), (256, 4096, 11008, 4, 128, False, None, 1),
         (16, 11008, 4096, 8, None, False, None, 1), (1, 576, 1536, 2, 64, True, None, 1),
         (8, 576, 192, 4, 64, False, "nf4", 1)]


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
@pytest.mark.parametrize("m,k,n,bits,group,asym,codebook,splits", LOWER)
def test_dequant_matmul_lowers(platform, m, k, n, bits, group, asym, codebook, splits):
    """Llama-2-7B and SmolLM2 shapes export for the real hardware (the kernel serialized into the module)."""
    group = group or k
    sd = jax.ShapeDtypeStruct
    ng = -(-k // group)
    stats = sd((ng, n), jnp.float16)
    args = [sd((m, k), jnp.bfloat16), sd((-(-k * bits // 8), n), jnp.uint8), stats, stats if asym else None,
            sd((16,), jnp.float32) if codebook else None]
    fn = functools.partial(dequant_matmul, bits=bits, group_size=group, platform=platform, k_splits=splits)
    assert lowered_kernel(platform) in exported_calls(fn, args, "tpu" if platform == "tpu" else "cuda")
