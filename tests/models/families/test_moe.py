"""MoE families: the experts chosen per token equal transformers' routing; GPTQ W4 calibrates every
expert on the tokens routed to it (QArrays, tokens per expert reported), an expert with no
calibration token falls back to its siblings' mean Hessian and is reported, routers stay float."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from qjax.checkpoints import load_model
from qjax.formats.qarray import QArray
from qjax.models.decoder import forward_with_intermediates
from qjax.quant.quantize import QuantizeConfig, quantize

from family_tiny import MOE_FAMILIES, VOCAB, save_family


def _hf_router_logits(model, tokens):
    with torch.no_grad():
        out = model(torch.from_numpy(tokens).long(), output_router_logits=True)
    return [np.asarray(r.float().numpy()) for r in out.router_logits]


@pytest.mark.parametrize("name", [n if n in ("mixtral", "qwen2_moe") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in MOE_FAMILIES])
def test_routing_matches_transformers(tmp_path, name):
    model = save_family(name, tmp_path)
    config, params, _ = load_model(str(tmp_path))
    tokens = np.random.default_rng(1).integers(0, VOCAB, size=(2, 10)).astype(np.int32)
    _, inter = forward_with_intermediates(params, tokens, config)
    k = config.num_experts_per_tok
    for i, hf_logits in enumerate(_hf_router_logits(model, tokens)):
        ours = np.asarray(inter[f"layers_{i}"]["moe"]["routing"][0]).reshape(-1, config.num_experts)
        hf_top = np.sort(np.argsort(-hf_logits.reshape(-1, config.num_experts), axis=-1)[:, :k], axis=-1)
        our_top = np.sort(np.argsort(-ours, axis=-1)[:, :k], axis=-1)
        np.testing.assert_array_equal(our_top, hf_top)
        assert np.all(np.sum(ours > 0, axis=-1) == k)
        if config.norm_topk_prob:
            np.testing.assert_allclose(ours.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.slow  # ~3 min on 2 busy cores: GPTQ compiles per weight shape
def test_gptq_w4_quantizes_every_expert(tmp_path):
    """Three calibration tokens, top-2 of 4 experts: some expert of layer 0 gets no token. The
    expected tokens per expert come from transformers' router on the same tokens (layer 0 sees the
    float embeddings, so its routing during calibration is the float model's)."""
    model = save_family("qwen2_moe", tmp_path)
    config, params, _ = load_model(str(tmp_path))
    tokens = np.array([[11, 60, 97]], np.int32)
    top = np.argsort(-_hf_router_logits(model, tokens)[0], axis=-1)[:, :config.num_experts_per_tok]
    expected = np.bincount(top.reshape(-1), minlength=config.num_experts)
    assert (expected == 0).any()
    cfg = QuantizeConfig(method="gptq", bits=4, group_size=16)
    new, report = quantize(params, config, cfg, tokens, progress=False)
    for i in range(config.num_layers):
        moe = new[f"layers_{i}"]["moe"]
        for e in range(config.num_experts):
            for p in ("gate_proj", "up_proj", "down_proj"):
                assert isinstance(moe[f"experts_{e}"][p]["kernel"], QArray), (i, e, p)
        for p in ("gate_proj", "up_proj", "down_proj"):
            assert isinstance(moe["shared_expert"][p]["kernel"], QArray)
        assert not isinstance(moe["router"]["kernel"], QArray)
        assert not isinstance(moe["shared_expert_gate"]["kernel"], QArray)
    block0 = report["blocks"][0]
    counts = block0["expert_tokens"]
    for e in range(config.num_experts):
        for p in ("gate_proj", "up_proj", "down_proj"):
            assert counts[f"moe/experts_{e}/{p}"] == expected[e], (e, p)
    empty = {f"moe/experts_{e}/{p}" for e in np.flatnonzero(expected == 0) for p in ("gate_proj", "up_proj", "down_proj")}
    assert set(block0["experts_without_tokens"]) == empty
