"""Tiny random Llama checkpoints (transformers + torch) shared by the runtime tests."""

from __future__ import annotations

import numpy as np
import torch
import transformers

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def word_tokenizer(vocab_size: int):
    """A whitespace word-level tokenizer over 'w0'..'w{vocab_size-1}' ('w2' is EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", pad_token="w0",
                                                eos_token="w2")


def save_tiny_llama(path, seed: int = 0, weight_scale: float = 6.0):
    """Saves a random LlamaForCausalLM with decisive logits (weights scaled up) and its tokenizer.

    Returns the torch model (eval mode).
    """
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
            else:
                p.mul_(weight_scale)
    model.save_pretrained(path, safe_serialization=True)
    word_tokenizer(TINY["vocab_size"]).save_pretrained(path)
    return model


def random_prompts(rng: np.random.Generator, lengths, vocab_size: int = TINY["vocab_size"]):
    """Token-id prompts avoiding the special ids 0..3."""
    return [rng.integers(4, vocab_size, size=n).tolist() for n in lengths]


def tiny_config(**overrides):
    """A small GQA Llama ModelConfig (4 query heads sharing 2 KV heads, head_dim 16)."""
    from qjax.models.config import ModelConfig

    fields = dict(architecture="llama", vocab_size=96, hidden_size=64, intermediate_size=128,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=256,
                  eos_token_id=2)
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_params(config, seed: int = 0, scale: float = 5.0):
    """Random params with weights scaled up (std 0.02 * scale) and non-trivial norm scales."""
    import jax
    import jax.numpy as jnp

    from qjax.models import init_params

    params = init_params(config, jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)

    def perturb(path, x):
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        if name.endswith("scale"):
            return jnp.asarray(1.0 + 0.3 * rng.standard_normal(x.shape), x.dtype)
        if name.endswith("bias"):
            return jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype)
        return x * scale

    return jax.tree_util.tree_map_with_path(perturb, params)
