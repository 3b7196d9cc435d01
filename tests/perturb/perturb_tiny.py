"""A tiny random Llama for perturbation tests (fast on CPU)."""

from __future__ import annotations

import jax

from qjax.models import init_params
from qjax.models.config import ModelConfig

CONFIG = ModelConfig(architecture="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                     num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True)


def tiny_params(seed: int = 0) -> dict:
    return init_params(CONFIG, jax.random.key(seed))


def tiny_windows(num: int = 4, seqlen: int = 16, seed: int = 1):
    return jax.random.randint(jax.random.key(seed), (num, seqlen), 0, CONFIG.vocab_size)
