"""measure_efficiency: bytes against hand counts; speeds and peaks are positive and finite."""

from __future__ import annotations

import numpy as np
import pytest

from qjax.eval.efficiency import measure_efficiency
from qjax.ops import Runtime
from qjax.quant.kv import QuantKVSpec

from runtime_tiny import tiny_config, tiny_params


def test_bytes_and_speeds():
    config = tiny_config()
    params = tiny_params(config)
    n_params = sum(int(np.prod(np.shape(x))) for x in __import__("jax").tree_util.tree_leaves(params))
    float_run = measure_efficiency(params, config, prompt_tokens=24, new_tokens=6, batch_size=2)
    assert float_run["weight_bytes"] == 4 * n_params
    # 2 layers x K and V x 2 rows x 30 slots x 2 heads x 16 dims x 4 bytes
    assert float_run["kv_bytes"] == 2 * 2 * 2 * 30 * 2 * 16 * 4
    kv4 = measure_efficiency(params, config, prompt_tokens=24, new_tokens=6, batch_size=2,
                             runtime=Runtime(kv_cache=QuantKVSpec(4, group_size=8)))
    # per (token, head): 16 dims x 4 bits = 8 bytes + 2 groups x (scale + min) x 2 bytes = 16 bytes
    assert kv4["kv_bytes"] == 2 * 2 * 2 * 30 * 2 * 16 and kv4["kv_bytes_per_token"] == 2 * 2 * 2 * 16
    for run in (float_run, kv4):
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "prefill_peak_bytes", "decode_peak_bytes"):
            assert 0 < run[key] < float("inf")
        assert run["decode_peak_bytes"] >= run["weight_bytes"]
    with pytest.raises(ValueError, match="exceeds the model's context"):
        measure_efficiency(params, config, prompt_tokens=250, new_tokens=10)


def test_weight_bytes_count_packed_codes_and_statistics():
    from qjax.eval.efficiency import tree_nbytes
    from qjax.quant.rtn import quantize_rtn
    from qjax.formats.spec import WeightQuantSpec

    w = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    qa = quantize_rtn(w, WeightQuantSpec(bits=3, group_size=32, symmetric=False))
    tree = {"norm": np.ones(64, np.float32), "kernel": qa}
    stat_bytes = 2 * (64 // 32) * 128 * qa.scale.dtype.itemsize  # scale and zero per (group, column)
    assert tree_nbytes(tree) == 64 * 4 + 64 * 128 * 3 // 8 + stat_bytes
