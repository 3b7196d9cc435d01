"""The (platform, weight type) kernel table and its switch (QJAX_KERNELS / use_kernels): which kernel
each mode picks, that the CPU kernels are never consulted off CPU, and that the seam's Pallas paths
equal the XLA path (interpret mode) and lower for TPU and GPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_helpers import assert_close, exported_calls, lowered_kernel, random_qarray, xla_product
from qjax import native
from qjax.formats import Outliers
from qjax.ops import act_quant, float_matmul, kernels, linear, quantized
from qjax.ops.attention import causal_attention


@pytest.fixture
def qa():
    return random_qarray(np.random.default_rng(0), 576, 192, 4, 128)


def test_mode_from_env_and_context(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "xla")
    assert kernels.mode() == "xla"
    with kernels.use_kernels("interpret"):
        assert kernels.mode() == "interpret" and kernels.kernel_platform() == "interpret"
    assert kernels.mode() == "xla" and kernels.kernel_platform() is None
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(ValueError, match="kernel mode must be one of"):
        kernels.mode()
    with pytest.raises(ValueError, match="kernel mode must be one of"):
        with kernels.use_kernels("cuda"):
            pass


def test_table_picks_by_platform_and_weight_type(qa, monkeypatch):
    x1, x32 = jnp.ones((1, 576)), jnp.ones((32, 576), jnp.bfloat16)
    assert quantized.select_kernel(x1, qa, "tpu").name == "pallas_tpu"
    assert quantized.select_kernel(x32, qa, "gpu").name == "pallas_gpu"
    assert quantized.select_kernel(x1, qa, None).name in ("native_matvec", "xla")  # auto on CPU
    assert quantized.select_kernel(x1, qa, "interpret").name == "pallas_tpu_interpret"
    with_outliers = qa.replace(outliers=Outliers.from_coo([3], [5], [1.5], qa.shape))
    assert quantized.weight_type(with_outliers) == "outliers"
    assert quantized.select_kernel(x1, with_outliers, "tpu").name == "xla"
    three_bit = random_qarray(np.random.default_rng(1), 576, 192, 3, 128)  # no Triton blocking
    assert quantized.select_kernel(x1, three_bit, "gpu").name == "xla"
    with kernels.use_kernels("xla"):
        assert quantized.select_kernel(x1, qa).name == "xla"


def test_cpu_kernels_are_not_consulted_off_cpu(qa, monkeypatch):
    """On a GPU backend, auto picks Pallas (Triton) for quantized products and XLA for float ones and
    attention, and native mode falls back to XLA, without ever asking the C++ kernels (asking would
    compile them at trace time)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(native, "available", lambda: pytest.fail("C++ kernels consulted off CPU"))
    x = jnp.ones((1, 576))
    assert kernels.kernel_platform() == "gpu" and quantized.select_kernel(x, qa).name == "pallas_gpu"
    jax.make_jaxpr(float_matmul)(x, jnp.ones((576, 64)))  # float products and attention ask nothing either
    q = jnp.ones((1, 8, 4, 64))
    jax.make_jaxpr(causal_attention)(q, q, q, jnp.tril(jnp.ones((8, 8), bool))[None, None])
    with kernels.use_kernels("native"):
        assert kernels.kernel_platform() is None and quantized.select_kernel(x, qa).name == "xla"


def test_linear_through_pallas_interpret_equals_xla(qa):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, 576)), jnp.float32)
    with kernels.use_kernels("interpret"):
        y = jax.jit(linear)(x, qa)
        assert "pallas_call" in str(jax.make_jaxpr(linear)(x, qa))
    assert y.shape == (2, 3, 192)
    assert_close(y.reshape(6, 192), xla_product(x.reshape(6, 576), qa), 1e-5)


def test_w8a8_linear_runs_integer_kernel_and_equals_simulation():
    qa = random_qarray(np.random.default_rng(3), 576, 192, 8, None, asymmetric=False)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((4, 576)), jnp.float32)
    a8 = act_quant.IntegerActivation(8)
    with kernels.use_kernels("interpret"):
        y = linear(x, qa, integer=a8)
        assert "int8" in str(jax.make_jaxpr(lambda x: linear(x, qa, integer=a8))(x))
    with kernels.use_kernels("xla"):
        simulated = linear(x, qa, integer=a8)
    assert_close(y, np.asarray(simulated), 1e-5)
    assert_close(simulated, xla_product(act_quant.fake_quant(x, 8, True, "token"), qa), 1e-5)


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
def test_pallas_mode_lowers_through_the_seam(qa, platform):
    """Under QJAX_KERNELS=pallas the seam dispatches per lowering platform: exporting `linear` for TPU
    or CUDA from this CPU host embeds the Mosaic / Triton kernel (weight and W8A8 products)."""
    q8 = random_qarray(np.random.default_rng(5), 576, 192, 8, None, asymmetric=False)
    x = jax.ShapeDtypeStruct((1, 576), jnp.bfloat16)
    target = "tpu" if platform == "tpu" else "cuda"
    with kernels.use_kernels("pallas"):
        assert lowered_kernel(platform) in exported_calls(lambda x: linear(x, qa), [x], target)
        a8 = act_quant.IntegerActivation(8)
        assert lowered_kernel(platform) in exported_calls(lambda x: linear(x, q8, integer=a8), [x], target)


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
def test_pallas_mode_lowers_quantized_kv_decode(platform):
    """A decode step's attention over a KV4 cache exports with the flash-decoding kernel under
    QJAX_KERNELS=pallas; under xla it reads the cache back (no kernel)."""
    from qjax.ops.kv_attention import quantized_cache_attention
    from qjax.quant.kv import QuantKVSpec

    spec = QuantKVSpec(4, 32)
    layer = spec.init_layer(2, 64, 3, 64, jnp.bfloat16)
    q = jnp.ones((2, 1, 9, 64), jnp.bfloat16)
    mask = jnp.ones((2, 1, 1, 64), bool)

    def attend(q, layer, mask):
        return quantized_cache_attention(q, layer, spec, mask, 40)

    with kernels.use_kernels("pallas"):
        calls = exported_calls(attend, [q, layer, mask], "tpu" if platform == "tpu" else "cuda")
        assert lowered_kernel(platform) in calls
    with kernels.use_kernels("xla"):
        assert attend(q, layer, mask) is None
