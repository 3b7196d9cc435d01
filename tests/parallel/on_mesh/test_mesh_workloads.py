"""On 8 devices (data:4, model:2): sharded loading, model/data-parallel forward and decode,
QArray sharding, perplexity, MC scoring, perturbation sweeps and calibration equal one device."""

from __future__ import annotations

import glob

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import qjax.parallel as qp
from qjax.checkpoints.mesh_loader import load_hf_dir_on_mesh
from qjax.models import forward

from conftest import random_tokens


def _leaves(tree):
    from qjax.formats import QArray

    return dict(jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, QArray))[0])


def test_sharded_load_equals_torch_reader(tiny_dir, mesh42):
    """Each shard of each parameter is the HF tensor (transposed for kernels) as safetensors' own
    torch reader gives it, in bf16 and in f32; kernels are laid out by the partition rules."""
    from safetensors.torch import load_file

    reference = {}
    for f in glob.glob(str(tiny_dir / "*.safetensors")):
        reference.update(load_file(f))
    assert len(glob.glob(str(tiny_dir / "*.safetensors"))) >= 3
    for dtype in ("bfloat16", "float32"):
        config, params = load_hf_dir_on_mesh(tiny_dir, mesh42, dtype=dtype)
        q = params["layers_1"]["attn"]["q_proj"]["kernel"]
        assert q.sharding.spec == P(None, "model") and q.dtype == jnp.dtype(dtype)
        assert q.addressable_shards[0].data.shape == (64, 32)
        assert params["layers_0"]["mlp"]["down_proj"]["kernel"].sharding.spec == P("model")
        assert params["embed"]["embedding"].sharding.spec == P("model")
        assert params["final_norm"]["scale"].sharding.spec == P()
        torch_name = {"layers_1/attn/q_proj/kernel": "model.layers.1.self_attn.q_proj.weight",
                      "layers_0/mlp/down_proj/kernel": "model.layers.0.mlp.down_proj.weight",
                      "lm_head/kernel": "lm_head.weight", "embed/embedding": "model.embed_tokens.weight",
                      "layers_1/post_attn_norm/scale": "model.layers.1.post_attention_layernorm.weight"}
        for path, name in torch_name.items():
            node = params
            for k in path.split("/"):
                node = node[k]
            want = reference[name].float().numpy()
            want = want.T if path.endswith("kernel") else want
            for shard in node.addressable_shards:
                np.testing.assert_array_equal(np.asarray(shard.data, np.float32), want[shard.index])


def test_model_and_data_parallel_forward(tiny, mesh42):
    config, params = tiny
    tokens = random_tokens((8, 24), config.vocab_size)
    want, _ = forward(params, tokens, config)
    sharded = qp.shard_params(params, mesh42)
    got, _ = forward(sharded, qp.shard_batch(tokens, mesh42), config)
    assert got.sharding.spec[0] == "data"
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    model8 = qp.make_mesh("model:8")  # 8-way: q (64, 64) and mlp split, k/v (64, 32) 8-way too
    got8, _ = forward(qp.shard_params(params, model8), tokens, config)
    np.testing.assert_allclose(np.asarray(got8), np.asarray(want), rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_greedy_decode_with_sharded_cache(tiny, mesh42):
    from qjax.eval.generate import generate_ids

    config, params = tiny
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(0, config.vocab_size, size=n)) for n in (5, 9, 3, 12, 7, 4)]
    want = generate_ids(params, config, prompts, max_new_tokens=12, batch_size=4, prefill_chunk=8)
    with qp.use_mesh(mesh42):
        got = generate_ids(qp.shard_params(params, mesh42), config, prompts, max_new_tokens=12, batch_size=4,
                           prefill_chunk=8)
    assert got == want
    cache = qp.shard_cache(__import__("qjax.models.kv_cache", fromlist=["init_cache"]).init_cache(config, 8, 16),
                           mesh42)
    assert cache["layers"][0]["k"].sharding.spec == P("data", None, "model")


def test_sharded_qarray_dequantizes_to_sharded_weight(tiny, mesh42):
    from qjax.formats import QArray, WeightQuantSpec
    from qjax.quant.rtn import quantize_rtn

    config, params = tiny
    spec = WeightQuantSpec(bits=4, group_size=16)
    down = params["layers_0"]["mlp"]["down_proj"]["kernel"]  # (128, 64): row-parallel
    gate = params["layers_0"]["mlp"]["gate_proj"]["kernel"]  # (64, 128): column-parallel
    qparams = jax.tree_util.tree_map(lambda x: x, params)
    qparams["layers_0"]["mlp"]["down_proj"]["kernel"] = quantize_rtn(down, spec)
    qparams["layers_0"]["mlp"]["gate_proj"]["kernel"] = quantize_rtn(gate, WeightQuantSpec(bits=3, group_size=32))
    sharded = qp.shard_params(qparams, mesh42)
    qd = sharded["layers_0"]["mlp"]["down_proj"]["kernel"]
    qg = sharded["layers_0"]["mlp"]["gate_proj"]["kernel"]
    assert isinstance(qd, QArray)
    assert qd.codes.sharding.spec == P("model") and qd.scale.sharding.spec == P("model")
    assert qg.codes.sharding.spec == P(None, "model") and qg.zero.sharding.spec == P(None, "model")
    # each device's codes/scales dequantize alone to its block of the float weight
    for q_full, q_sh in ((qparams["layers_0"]["mlp"]["down_proj"]["kernel"], qd),
                         (qparams["layers_0"]["mlp"]["gate_proj"]["kernel"], qg)):
        want = np.asarray(q_full.dequantize())
        got = q_sh.dequantize()
        np.testing.assert_array_equal(np.asarray(got), want)
    rows = qd.codes.addressable_shards[0].data.shape[0] * 2  # 4-bit: 2 codes per byte
    local = QArray(codes=qd.codes.addressable_shards[0].data, scale=qd.scale.addressable_shards[0].data,
                   zero=qd.zero.addressable_shards[0].data, codebook=None, outliers=None, spec=spec,
                   shape=(rows, 64))
    block = qd.codes.addressable_shards[0].index[0]
    start = block.start or 0
    np.testing.assert_array_equal(np.asarray(local.dequantize()),
                                  np.asarray(qparams["layers_0"]["mlp"]["down_proj"]["kernel"].dequantize())[
                                      start * 2:start * 2 + rows])
    want_logits, _ = forward(qparams, random_tokens((4, 16), config.vocab_size), config)
    got_logits, _ = forward(sharded, qp.shard_batch(random_tokens((4, 16), config.vocab_size), mesh42), config)
    np.testing.assert_allclose(np.asarray(got_logits), np.asarray(want_logits), rtol=1e-5,
                               atol=1e-5 * float(jnp.abs(want_logits).max()))


def test_perplexity_data_parallel(tiny, mesh42):
    from qjax.eval.perplexity import perplexity_of_windows

    config, params = tiny
    windows = random_tokens((10, 32), config.vocab_size, seed=5)  # 10 windows: the last batch is padded
    want = perplexity_of_windows(params, config, windows, batch_size=4, progress=False)
    with qp.use_mesh(mesh42):
        got = perplexity_of_windows(qp.shard_params(params, mesh42), config, windows, batch_size=4, progress=False)
    assert got["tokens"] == want["tokens"] == 10 * 31
    assert abs(got["nll"] - want["nll"]) <= 1e-5 * abs(want["nll"])


def test_multiple_choice_scoring_data_parallel(tiny, mesh42):
    from qjax.eval.loglikelihood import score_requests

    config, params = tiny
    rng = np.random.default_rng(7)
    requests = []
    for _ in range(6):
        context = list(rng.integers(0, config.vocab_size, size=rng.integers(4, 12)))
        for _ in range(4):
            requests.append((context, list(rng.integers(0, config.vocab_size, size=rng.integers(1, 4)))))
    want = score_requests(params, config, requests, batch_size=8)
    with qp.use_mesh(mesh42):
        got = score_requests(qp.shard_params(params, mesh42), config, requests, batch_size=8)
    assert [g for _, g in got] == [g for _, g in want]
    np.testing.assert_allclose([x for x, _ in got], [x for x, _ in want], rtol=1e-5)


def test_perturbation_sweep_points_over_data(tiny, mesh42):
    from qjax.perturb.kinds import Gaussian
    from qjax.perturb.sweep import NLLEvaluator, WeightTarget, sweep

    config, params = tiny
    windows = jnp.asarray(random_tokens((2, 16), config.vocab_size, seed=9))
    evaluate = NLLEvaluator(config, window_batch=2)
    args = dict(kinds=[Gaussian()], amounts=[0.0, 0.05, 0.1], seeds=[0, 1], target=WeightTarget(), data=windows)
    want = sweep(evaluate, params, **args)  # 6 points: padded to 8 over the 4 data shards
    with qp.use_mesh(mesh42):
        got = sweep(evaluate, qp.shard_params(params, mesh42), **args)
    np.testing.assert_allclose(got.values, want.values, rtol=1e-5)
    assert want.values[0, 0, 0] != want.values[0, 1, 0]


def test_calibration_statistics_reduce_over_data(tiny, mesh42):
    """Hessians and channel statistics of a block, its windows split over the data axis (each batch
    takes windows from every data shard), equal one device's up to float summation order."""
    from qjax.quant.calibration import BlockCapture, embed

    config, params = tiny
    tokens = random_tokens((8, 32), config.vocab_size, seed=11)

    def stats(p):
        x = qp.place_batch(embed(p, tokens, config))
        capture = BlockCapture(0, p["layers_0"], x, config, batch_size=4)
        return capture.hessians(), capture.channel_stats(), capture.forward(p["layers_0"])

    want_h, want_c, want_y = stats(params)
    with qp.use_mesh(mesh42):
        got_h, got_c, got_y = stats(qp.shard_params(params, mesh42))
    assert got_y.sharding.spec[0] == "data"
    for site in want_h:
        scale = float(jnp.abs(want_h[site]).max())
        np.testing.assert_allclose(np.asarray(got_h[site]), np.asarray(want_h[site]), rtol=1e-5, atol=1e-6 * scale)
        np.testing.assert_allclose(got_c[site].absmean, want_c[site].absmean, rtol=1e-5)
        np.testing.assert_allclose(got_c[site].absmax, want_c[site].absmax, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got_y), np.asarray(want_y), rtol=1e-5, atol=1e-5)


def test_gptq_calibration_on_mesh(tiny, mesh42):
    """GPTQ on the mesh: Hessians summed over data shards (another order of the float sums), solves
    of column-parallel kernels split over the model axis. Codes equal one device's except where the
    rounding of the sums moves a weight across a rounding boundary (and GPTQ's error feedback then
    carries the change along its row): the share is measured and bounded, and the two quantized
    models' NLL agree."""
    from qjax.eval.perplexity import perplexity_of_windows
    from qjax.quant.quantize import quantize
    from qjax.quant.recipe import Recipe

    config, params = tiny
    tokens = random_tokens((8, 32), config.vocab_size, seed=11)
    recipe = Recipe.parse("gptq:w4g16")  # 4-bit asymmetric groups of 16, GPTQConfig's defaults
    want, _ = quantize(params, config, recipe, tokens, batch_size=8, progress=False)
    with qp.use_mesh(mesh42):
        got, _ = quantize(qp.shard_params(params, mesh42), config, recipe, tokens, batch_size=8, progress=False)
    differ, total = 0, 0
    for path, leaf in _leaves(want).items():
        if hasattr(leaf, "unpacked_codes"):
            other = _leaves(got)[path]
            a, b = np.asarray(leaf.unpacked_codes()), np.asarray(other.unpacked_codes())
            differ += int(np.sum(a != b))
            total += a.size
    print(f"gptq codes differing from one device: {differ} of {total}")
    assert total > 0 and differ <= 0.02 * total
    windows = random_tokens((4, 32), config.vocab_size, seed=12)
    nll = [perplexity_of_windows(p, config, windows, batch_size=4, progress=False)["nll"] for p in (want, got)]
    assert abs(nll[0] - nll[1]) <= 1e-3 * nll[0]
