"""Logits parity with transformers + torch for tiny random Llama, Mistral and Qwen2 checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from qjax.checkpoints import load_model
from qjax.models import forward
from qjax.models.llama import FUSE_MIN_ROWS

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-6)

CASES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(rope_theta=10000.0)),
    "llama_tied_llama3_rope": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
        tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "llama_linear_rope": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
        rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, dict(sliding_window=None)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(tie_word_embeddings=False)),
}


def _save_tiny(tmp_path, name):
    config_cls, model_cls, extra = CASES[name]
    torch.manual_seed(0)
    model = model_cls(config_cls(**COMMON, **extra)).eval()
    with torch.no_grad():  # make biases and norms non-trivial so a dropped term shows
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / name, safe_serialization=True)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_word_level_tokenizer(COMMON["vocab_size"] - 16), unk_token="<unk>")
    tok.save_pretrained(tmp_path / name)
    return model


def _word_level_tokenizer(vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


# (2, 48): 96 token rows, at least FUSE_MIN_ROWS, so q/k/v and gate/up run as fused matmuls;
# (1, 8): below it, so every projection runs on its own.
@pytest.mark.parametrize("shape", [(2, 48), (1, 8)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_transformers(tmp_path, name, shape):
    assert (shape[0] * shape[1] >= FUSE_MIN_ROWS) == (shape == (2, 48))
    model = _save_tiny(tmp_path, name)
    config, params, _ = load_model(str(tmp_path / name))
    tokens = np.random.default_rng(0).integers(0, COMMON["vocab_size"], size=shape).astype(np.int32)
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens).long()).logits.numpy()
    logits, _ = forward(params, tokens, config)
    assert np.max(np.abs(np.asarray(logits) - expected)) <= 1e-4


def test_sharded_checkpoint_matches_unsharded(tmp_path):
    model = _save_tiny(tmp_path, "llama")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB", safe_serialization=True)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "sharded" / "tokenizer.json").write_bytes((tmp_path / "llama" / "tokenizer.json").read_bytes())
    _, whole, _ = load_model(str(tmp_path / "llama"))
    _, sharded, _ = load_model(str(tmp_path / "sharded"))
    for a, b in zip(*(map(np.asarray, __import__("jax").tree_util.tree_leaves(p)) for p in (whole, sharded))):
        np.testing.assert_array_equal(a, b)
