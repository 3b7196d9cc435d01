"""Rotary position embeddings in the Hugging Face layout (rotate-half, not interleaved)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from qjax.models.config import ModelConfig


def inverse_frequencies(config: ModelConfig, *, local: bool = False, long: bool = False) -> np.ndarray:
    """(rotary_dim // 2,) float64 inverse frequencies, with `linear`, `llama3` or `longrope` scaling
    applied (longrope: the short factors, or the long ones when `long`).

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
    if scaling.rope_type == "longrope":
        factors = np.asarray(scaling.long_factor if long else scaling.short_factor, np.float64)
        if factors.shape != inv_freq.shape:
            raise ValueError(f"longrope factors have {factors.size} entries, the rotary dim needs {inv_freq.size}")
        return inv_freq / factors
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
    raise ValueError(f"unsupported rope_scaling type {scaling.rope_type!r} (supported: linear, llama3, longrope)")


def rope_frequencies(config: ModelConfig, positions: jax.Array, *, local: bool = False):
    """(inverse frequencies, cos/sin scale) of a forward at `positions` (B, T), for `apply_rope`.

    Without longrope: (`inverse_frequencies`, 1.0). With longrope: per row (B, rotary_dim // 2), the
    long factors where the row's largest position + 1 exceeds original_max_position_embeddings, and
    the scale attention_factor. This is transformers' (and Microsoft's Phi-3 code's) choice per
    forward call: a decode step past that length uses the long factors while the cached keys keep
    the ones they were written with. So qjax equals transformers wherever the calls cut the sequence
    alike (one forward over a window or request; generation whose prompt fits one prefill chunk);
    for sequences that cross the original length, a prompt prefilled in several chunks, a packed row
    holding requests on both sides of it, or a context scored through the KV cache apart from its
    continuation can get other factors than one transformers forward over the whole sequence."""
    scaling = config.rope_scaling
    if scaling is None or scaling.rope_type != "longrope" or (local and config.local_rope_theta is not None):
        return inverse_frequencies(config, local=local), 1.0
    short = jnp.asarray(inverse_frequencies(config, local=local), jnp.float32)
    long = jnp.asarray(inverse_frequencies(config, local=local, long=True), jnp.float32)
    use_long = jnp.max(positions, axis=-1) + 1 > scaling.original_max_position_embeddings  # (B,)
    return jnp.where(use_long[:, None], long, short), scaling.attention_factor


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq, scale: float = 1.0) -> jax.Array:
    """Rotates x: (batch, T, heads, head_dim) at integer positions (batch, T). inv_freq: (n,) or per
    row (batch, n). With fewer frequencies than head_dim // 2 (partial rotary), only the leading
    2 n dims of each head rotate; the rest pass through. scale multiplies cos and sin (longrope's
    attention factor)."""
    inv = jnp.asarray(inv_freq, jnp.float32)
    rot = 2 * inv.shape[-1]
    if rot < x.shape[-1]:
        return jnp.concatenate([apply_rope(x[..., :rot], positions, inv, scale), x[..., rot:]], axis=-1)
    if inv.ndim == 2:
        inv = inv[:, None, :]
    angles = positions[..., None].astype(jnp.float32) * inv
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # (B, T, 1, head_dim)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)
