"""Integer W8A8 / W4A8: int8 activation codes x int8 weight levels -> int32 on the MXU / tensor cores.

  y[m, n] = x_scale[m] * sum_g scale[g, n] * (sum_{i in g} x[m, i] * (q[i, n] - 2**(b-1))
                                              - (zero[g, n] - 2**(b-1)) * sum_{i in g} x[m, i])

x: int8 codes (M, K) of a per-token symmetric quantization (`quantize_rows`), x_scale float32 (M, 1);
the weight: 8- or 4-bit packed codes (uint8, layout of `pallas_kernels.layout`) with per-channel
(group_size = K) or per-group scales (n_groups, N) and, for asymmetric grids, zero points. Each
group's dot is exact in int32; scales apply in float32 once per group. Returns float32 (M, N).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from pallas_kernels.dequant_matmul import packed_matmul

INT_BITS = (4, 8)  # weight widths whose levels q - 2**(b-1) fit int8


def quantize_rows(x: jax.Array, bits: int = 8):
    """Per-row symmetric quantization of x (M, K): (int8 codes, float32 scale (M, 1)).

    scale = max(max|x_m| / (2**(b-1) - 1), 1e-8); code = clip(round(x / scale + 2**(b-1)), 0,
    2**b - 1) - 2**(b-1) (round half to even) — the grid of a symmetric per-token activation
    fake-quantization, so code * scale is its dequantized value.
    """
    x = x.astype(jnp.float32)
    half = 1 << (bits - 1)
    scale = jnp.maximum(jnp.max(jnp.abs(x), axis=-1, keepdims=True) / (half - 1), 1e-8)
    q = jnp.clip(jnp.round(x / scale + half), 0, 2 * half - 1) - half
    return q.astype(jnp.int8), scale


def int8_matmul(x_codes: jax.Array, x_scale: jax.Array, codes: jax.Array, scale: jax.Array,
                zero: Optional[jax.Array] = None, *, bits: int, group_size: int, platform: str,
                interpret: bool = False, k_splits: int = 1, block_m: Optional[int] = None,
                block_n: Optional[int] = None, block_k: Optional[int] = None) -> jax.Array:
    """(x_codes * x_scale) @ W -> float32 (M, N), integer products (module docstring)."""
    if x_codes.dtype != jnp.int8:
        raise ValueError(f"int8_matmul: activation codes must be int8, got {x_codes.dtype}")
    if bits not in INT_BITS:
        raise ValueError(f"int8_matmul: weight bits must be one of {INT_BITS}, got {bits}")
    if x_scale.shape != (x_codes.shape[0], 1):
        raise ValueError(f"int8_matmul: x_scale must be ({x_codes.shape[0]}, 1), got {x_scale.shape}")
    y = packed_matmul(x_codes, codes, scale, zero, None, bits=bits, group_size=group_size, platform=platform,
                      interpret=interpret, k_splits=k_splits, block_m=block_m, block_n=block_n, block_k=block_k)
    return y * x_scale.astype(jnp.float32)
