"""On 8 devices (data:4, model:2): quantized products whose weights are laid out over the model axis
run one Pallas kernel per device (shard_map), equal the float64 product of the dequantized weight,
and lower for TPU (Mosaic) and CUDA (Triton); without a recorded layout they take the XLA path."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import qjax.parallel as qp
from qjax.formats import QArray, WeightQuantSpec
from qjax.models import forward
from qjax.ops import kernels
from qjax.ops.act_quant import IntegerActivation
from qjax.ops.quantized import integer_matmul, qarray_matmul
from qjax.quant.rtn import quantize_rtn

from conftest import random_tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "pallas"))
from pallas_helpers import DISABLED, assert_close, exported_calls, lowered_kernel, random_qarray, xla_product  # noqa: E402

# (parameter name, (in, out), bits, group, grid): column-parallel (None, model) and row-parallel (model, None)
CASES = [("q_proj", (256, 512), 4, 32, "uniform"), ("o_proj", (512, 256), 4, 32, "uniform"),
         ("down_proj", (512, 256), 8, None, "uniform"), ("gate_proj", (256, 512), 4, 64, "nf4")]


def _placed(mesh, name, qa, record=True):
    params = {"layers_0": {"block": {name: {"kernel": qa}}}}  # the partition rules go by the linear's name
    placed = (qp.shard_params(params, mesh) if record
              else jax.device_put(params, qp.param_shardings(params, mesh)))  # layout not recorded
    return jax.tree_util.tree_leaves(placed, is_leaf=lambda x: isinstance(x, QArray))[0]


def _jaxpr(fn, *args) -> str:
    return str(jax.make_jaxpr(fn)(*args))


# mode pallas: the native kernels on GPU / TPU (tpu's variant interpreted elsewhere)
@pytest.mark.parametrize("name,shape,bits,group,grid,mode",
                         [(*case, "interpret") for case in CASES[:2]]
                         + [pytest.param(*case, "interpret", marks=pytest.mark.slow) for case in CASES[2:]]
                         + [pytest.param(*case, "pallas", marks=pytest.mark.slow) for case in CASES[:2]])
def test_sharded_product_runs_a_pallas_kernel_per_device(mesh42, name, shape, bits, group, grid, mode):
    qa = random_qarray(np.random.default_rng(0), *shape, bits, group, grid=grid)
    sq = _placed(mesh42, name, qa)
    row_parallel = name in ("o_proj", "down_proj")
    assert sq.mesh_axes == (("model", None) if row_parallel else (None, "model"))
    x = jax.random.normal(jax.random.key(1), (8, 3, shape[0]), jnp.float32)
    xs = jax.device_put(x, NamedSharding(mesh42, P("data")))
    with kernels.use_kernels(mode):
        program = _jaxpr(qarray_matmul, xs, sq)
        y = jax.jit(qarray_matmul)(xs, sq)
    assert "shard_map" in program and "pallas_call" in program
    assert y.sharding.spec == (P("data") if row_parallel else P("data", None, "model"))
    assert_close(y, xla_product(x, qa), 1e-5, name)


def test_layout_not_recorded_takes_the_xla_path(mesh42):
    qa = random_qarray(np.random.default_rng(1), 256, 512, 4, 32)
    sq = _placed(mesh42, "q_proj", qa, record=False)
    assert sq.mesh_axes is None and sq.codes.sharding.spec == P(None, "model")
    x = jax.random.normal(jax.random.key(2), (8, 256), jnp.float32)
    with kernels.use_kernels("interpret"):
        program = _jaxpr(qarray_matmul, x, sq)
        y = qarray_matmul(x, sq)
    assert "pallas_call" not in program and "shard_map" not in program
    assert_close(y, xla_product(x, qa), 1e-5)


def test_layout_recorded_on_another_mesh_takes_the_xla_path(mesh42):
    """Recorded on data:4,model:2, moved to model:8, where a block of 512 / 8 rows would cut its groups
    of 128 (so the rules keep its rows whole): the record does not fit, the product takes XLA's path."""
    qa = random_qarray(np.random.default_rng(5), 512, 256, 4, 128)
    recorded = qp.shard_params({"layers_0": {"block": {"o_proj": {"kernel": qa}}}}, mesh42)
    moved = jax.device_put(recorded, qp.param_shardings(recorded, qp.make_mesh("model:8")))
    sq = moved["layers_0"]["block"]["o_proj"]["kernel"]
    assert sq.mesh_axes == ("model", None) and sq.codes.sharding.spec == P()
    x = jax.random.normal(jax.random.key(6), (8, 512), jnp.float32)
    with kernels.use_kernels("interpret"):
        program = _jaxpr(qarray_matmul, x, sq)
        y = qarray_matmul(x, sq)
    assert "pallas_call" not in program
    assert_close(y, xla_product(x, qa), 1e-5)


@pytest.mark.parametrize("name", [pytest.param("q_proj", marks=pytest.mark.slow), "o_proj"])
def test_sharded_integer_product_equals_one_device(mesh42, name):
    """W8A8 per shard: x quantized per token over all its features, as one device does."""
    shape = (256, 512) if name == "q_proj" else (512, 256)
    qa = random_qarray(np.random.default_rng(2), *shape, 8, None, asymmetric=False)
    sq = _placed(mesh42, name, qa)
    x = jax.random.normal(jax.random.key(3), (8, shape[0]), jnp.float32)
    act = IntegerActivation(bits=8)
    with kernels.use_kernels("interpret"):
        program = _jaxpr(lambda x, w: integer_matmul(x, w, act), x, sq)
        got = integer_matmul(jax.device_put(x, NamedSharding(mesh42, P("data"))), sq, act)
        want = integer_matmul(x, qa, act)  # one device, same kernel
    assert "shard_map" in program and "pallas_call" in program
    assert_close(got, want, 1e-6, name)


@pytest.mark.parametrize("stacked", [False, pytest.param(True, marks=pytest.mark.slow)])  # True: stack_layers, scanned
def test_sharded_quantized_forward_with_pallas_equals_one_device(tiny, mesh42, stacked):
    from qjax.models.decoder import stack_layers

    config, params = tiny
    spec = WeightQuantSpec(bits=4, group_size=16)
    qparams = jax.tree_util.tree_map_with_path(
        lambda path, w: quantize_rtn(w, spec) if "layers_" in jax.tree_util.keystr(path)
        and jax.tree_util.keystr(path).endswith("['kernel']") else w, params)
    tokens = random_tokens((4, 16), config.vocab_size)
    want, _ = forward(qparams, tokens, config)  # one device, the XLA path (CPU backend)
    sharded = qp.shard_params(stack_layers(qparams, config) if stacked else qparams, mesh42)
    with kernels.use_kernels("interpret"):
        program = _jaxpr(lambda p, t: forward(p, t, config)[0], sharded, qp.shard_batch(tokens, mesh42))
        got, _ = forward(sharded, qp.shard_batch(tokens, mesh42), config)
    linears = 7 if stacked else 7 * config.num_layers  # stacked: one scan body holds every layer's
    assert program.count("pallas_call") == linears, program.count("pallas_call")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("platform", ["tpu", pytest.param("cuda", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ["q_proj", "o_proj"])
def test_sharded_product_lowers_per_device_for_accelerators(mesh42, platform, name):
    shape = (256, 512) if name == "q_proj" else (512, 256)
    sq = _placed(mesh42, name, random_qarray(np.random.default_rng(4), *shape, 4, 32))
    xs = jax.device_put(jnp.ones((8, shape[0]), jnp.bfloat16), NamedSharding(mesh42, P("data")))
    with kernels.use_kernels("pallas"):
        calls = exported_calls(qarray_matmul, (xs, sq), platform)
    assert lowered_kernel("tpu" if platform == "tpu" else "gpu") in calls, calls


@pytest.mark.parametrize("platform", ["tpu", pytest.param("cuda", marks=pytest.mark.slow)])
def test_quantize_on_a_mesh_records_layouts_and_the_forward_lowers_one_kernel_per_linear(tiny, mesh42, platform):
    """A recipe applied to params on a mesh gives QArrays laid out by the partition rules, each with
    its layout recorded; the whole forward, exported for TPU / CUDA, then has every linear of every
    block as a Mosaic / Triton kernel inside its shard_map (none falls back to XLA)."""
    from qjax.quant.quantize import quantize
    from qjax.quant.recipe import Recipe

    config, params = tiny
    # groups of 32: the Triton variant needs K blocks of at least 16 packed units per group segment
    qparams, _ = quantize(qp.shard_params(params, mesh42), config, Recipe.parse("rtn:w4g32"), progress=False)
    is_q = lambda x: isinstance(x, QArray)  # noqa: E731
    layouts = dict(jax.tree_util.tree_leaves_with_path(qp.param_shardings(qparams, mesh42), is_leaf=is_q))
    quantized = [(path, qa) for path, qa in jax.tree_util.tree_leaves_with_path(qparams, is_leaf=is_q) if is_q(qa)]
    assert len(quantized) == 7 * config.num_layers
    for path, qa in quantized:
        row_parallel = any(name in jax.tree_util.keystr(path) for name in ("o_proj", "down_proj"))
        assert qa.mesh_axes == (("model", None) if row_parallel else (None, "model")), path
        assert qa.codes.sharding == layouts[path].codes and qa.scale.sharding == layouts[path].scale, path
    tokens = qp.shard_batch(random_tokens((8, 16), config.vocab_size), mesh42)
    with kernels.use_kernels("pallas"):
        exported = jax.export.export(jax.jit(lambda p, t: forward(p, t, config)[0]), platforms=[platform],
                                     disabled_checks=DISABLED)(qparams, tokens)
    kernel = lowered_kernel("tpu" if platform == "tpu" else "gpu")
    assert exported.mlir_module().count(f"custom_call @{kernel}") == 7 * config.num_layers


def test_quantized_kv_decode_runs_the_kernel_per_device(tiny, mesh42):
    """A decode step over a KV4 cache laid out by cache_shardings (batch over data, KV heads over
    model) runs the flash-decoding kernel per device and equals the same kernel on one device."""
    from qjax.models import init_cache
    from qjax.ops import Runtime
    from qjax.quant.kv import QuantKVSpec

    config, params = tiny
    spec = QuantKVSpec(4, 16)
    rt = Runtime(kv_cache=spec)
    tokens = random_tokens((8, 12), config.vocab_size, seed=5)

    def decode(params, tokens, cache):
        _, cache = forward(params, tokens, config, rt, cache=cache)  # prefill writes the cache
        return forward(params, tokens[:, :1], config, rt, cache=cache)[0]  # one step reads it

    with kernels.use_kernels("interpret"):
        want = decode(params, tokens, init_cache(config, 8, 16, spec=spec))
        sharded = (qp.shard_params(params, mesh42), qp.shard_batch(tokens, mesh42),
                   qp.shard_cache(init_cache(config, 8, 16, spec=spec), mesh42))
        program = _jaxpr(lambda p, t, c: forward(p, t[:, :1], config, rt, cache=c)[0], *sharded)
        got = decode(*sharded)
    assert "shard_map" in program and program.count("pallas_call") == config.num_layers
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    with kernels.use_kernels("pallas"):  # and it lowers for TPU: one Mosaic kernel per layer, per device
        exported = jax.export.export(jax.jit(lambda p, t, c: forward(p, t[:, :1], config, rt, cache=c)[0]),
                                     platforms=["tpu"])(*sharded)
    assert exported.mlir_module().count("custom_call @tpu_custom_call") == config.num_layers


def test_kv_decode_splitting_neither_batch_nor_heads_reads_the_cache_back(mesh42):
    """One sequence (batch 1 does not split over data:4) with one KV head (does not split over
    model:2): no per-device kernel, which would attend everything on every device; None tells the
    caller to read the cache back in XLA."""
    from qjax.ops.kv_attention import quantized_cache_attention
    from qjax.parallel.rules import CACHE_AXES
    from qjax.quant.kv import QuantKVSpec

    spec = QuantKVSpec(4, 16)
    layer = qp.shard_cache({"layers": [spec.init_layer(1, 16, 1, 16, jnp.float32)],
                            "key_mask": jnp.ones((1, 16), bool)}, mesh42)["layers"][0]
    q = jnp.ones((1, 1, 2, 16), jnp.float32)
    with kernels.use_kernels("interpret"):
        assert quantized_cache_attention(q, layer, spec, jnp.ones((1, 1, 1, 16), bool), 8, CACHE_AXES) is None
