"""`stack_layers`: the scanned forward equals the unrolled one (no cache, cache prefill + decode,
quantized KV cache); layers of different structure are not stacked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qjax.models import ModelConfig, forward, init_cache, init_params, stack_cache, stack_layers
from qjax.ops import Runtime
from qjax.quant.kv import QuantKVSpec
from qjax.quant.rtn import quantize_rtn
from qjax.formats.spec import WeightQuantSpec

CONFIG = ModelConfig("qwen2", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
                     num_kv_heads=2, head_dim=8, max_position_embeddings=128, tie_word_embeddings=False,
                     attention_bias=True)


def _params():
    return jax.tree_util.tree_map(lambda x: x * 8.0, init_params(CONFIG, jax.random.key(0)))


def test_scanned_forward_matches_unrolled_with_and_without_cache():
    params = _params()
    stacked = stack_layers(params, CONFIG)
    assert stacked is not None and "layers_0" not in stacked
    assert stacked["layers"]["mlp"]["down_proj"]["kernel"].shape == (3, 48, 32)
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 64)
    np.testing.assert_allclose(forward(stacked, tokens, CONFIG)[0], forward(params, tokens, CONFIG)[0],
                               rtol=1e-5, atol=1e-5)
    runtime = Runtime(kv_cache=QuantKVSpec(4, group_size=8))  # packed codes + scales per layer leaf
    cache = init_cache(CONFIG, 2, 12, spec=runtime.kv_cache)
    ref, ref_cache = forward(params, tokens, CONFIG, runtime, cache=cache)
    out, out_cache = forward(stacked, tokens, CONFIG, runtime, cache=stack_cache(cache))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    step = jnp.array([[5], [7]])
    ref_step, _ = forward(params, step, CONFIG, runtime, cache=ref_cache)
    out_step, _ = forward(stacked, step, CONFIG, runtime, cache=out_cache)
    np.testing.assert_allclose(out_step, ref_step, rtol=1e-5, atol=1e-5)


def test_layers_of_different_structure_are_not_stacked():
    params = _params()
    node = params["layers_1"]["mlp"]["down_proj"]
    node["kernel"] = quantize_rtn(node["kernel"], WeightQuantSpec(bits=4, group_size=16))
    assert stack_layers(params, CONFIG) is None
