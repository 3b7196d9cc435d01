"""Rotary position embeddings in the Hugging Face layout (rotate-half, not interleaved)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from qjax.models.config import ModelConfig


def inverse_frequencies(config: ModelConfig, *, local: bool = False) -> np.ndarray:
    """(rotary_dim // 2,) float64 inverse frequencies, with `linear` or `llama3` scaling applied.

    local: the frequencies of a sliding-window layer, which use `local_rope_theta` unscaled when the
    config sets one (Gemma 3)."""
    dim = config.rotary_dim
    if local and config.local_rope_theta is not None:
        return 1.0 / (config.local_rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type == "llama3":
        old_len = scaling.original_max_position_embeddings
        low_wavelen = old_len / scaling.low_freq_factor
        high_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor)
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(is_medium, smoothed, scaled)
    raise ValueError(f"unsupported rope_scaling type {scaling.rope_type!r} (supported: linear, llama3)")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates x: (batch, T, heads, head_dim) at integer positions (batch, T). With fewer
    frequencies than head_dim // 2 (partial rotary), only the leading 2 * len(inv_freq) dims of each
    head rotate; the rest pass through."""
    rot = 2 * len(inv_freq)
    if rot < x.shape[-1]:
        return jnp.concatenate([apply_rope(x[..., :rot], positions, inv_freq), x[..., rot:]], axis=-1)
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # (B, T, 1, head_dim)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)
