"""A tiny random Llama for the calibrated-quantization tests, built with numpy (no Flax init compile)."""

from __future__ import annotations

import numpy as np

from qjax.models.config import ModelConfig

CONFIG = ModelConfig(architecture="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True)


def tiny_params(config: ModelConfig = CONFIG, seed: int = 0, std: float = 0.1) -> dict:
    """qjax-layout params: normal(0, std) kernels and embedding, norm scales near 1."""
    rng = np.random.default_rng(seed)
    d, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim

    def w(*shape):
        return (rng.normal(size=shape) * std).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.normal(size=(d,))).astype(np.float32)

    params = {"embed": {"embedding": w(config.vocab_size, d) * 10}, "final_norm": {"scale": norm()}}
    for i in range(config.num_layers):
        params[f"layers_{i}"] = {
            "input_norm": {"scale": norm()}, "post_attn_norm": {"scale": norm()},
            "attn": {"q_proj": {"kernel": w(d, q)}, "k_proj": {"kernel": w(d, kv)},
                     "v_proj": {"kernel": w(d, kv)}, "o_proj": {"kernel": w(q, d)}},
            "mlp": {"gate_proj": {"kernel": w(d, f)}, "up_proj": {"kernel": w(d, f)},
                    "down_proj": {"kernel": w(f, d)}}}
    return params


def tiny_tokens(num: int = 4, seqlen: int = 16, seed: int = 1, config: ModelConfig = CONFIG) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, config.vocab_size, size=(num, seqlen)).astype(np.int32)
