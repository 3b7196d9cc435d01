"""How the kernels read packed codes, and the block shapes they pick per platform.

Packed codes (the layout of `qjax.formats.packing`, restated here because this package imports
nothing of qjax): b-bit codes of an input column form one little-endian bit stream along the input
axis K, byte t holding stream bits [8t, 8t + 8). The kernels read it in *units*, the smallest run of
whole bytes holding whole codes:

  bits 8: 1 byte, 1 code      bits 4: 1 byte, 2 codes      bits 2: 1 byte, 4 codes
  bits 3: 3 bytes, 8 codes (code j of a unit = (b0 | b1 << 8 | b2 << 16) >> 3j & 7)

so code j of unit u is input row u * C + j (C codes per unit). Instead of interleaving unpacked
codes back into row order, a kernel multiplies *plane* j (code j of every unit, a (K / C, N) matrix)
by the matching activation plane x[:, j::C] and sums the C products: the weight is read as stored and
only the small activation is reordered (`split_planes`). A group of G input rows is G / C units
(G and K must be multiples of C).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

PLATFORMS = ("tpu", "gpu")
BITS = (2, 3, 4, 8)
MIN_GPU_DOT = 16  # Triton's tl.dot needs every dimension >= 16


def check_platform(platform: str) -> None:
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")


def code_unit(bits: int) -> tuple[int, int]:
    """(bytes per unit U, codes per unit C) of `bits`-bit packed codes."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    return (3, 8) if bits == 3 else (1, 8 // bits)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b


def pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def pow2_divisor(n: int, cap: int) -> int:
    """Largest power of two dividing n and at most cap."""
    d = n & -n
    return min(d, pow2_floor(cap))


def split_planes(x: jax.Array, bits: int, units: int) -> jax.Array:
    """x (M, K) -> (C, M, units) with [j, :, u] = x[:, u * C + j] (zero beyond K)."""
    _, c = code_unit(bits)
    m, k = x.shape
    x = jnp.pad(x, ((0, 0), (0, units * c - k)))
    return x.reshape(m, units, c).transpose(2, 0, 1)


def segment_units(block_units: int, group_units: int, n_groups: int) -> int:
    """Units of a run inside a block that shares one group's statistics (divides the block)."""
    return block_units if n_groups == 1 else math.gcd(block_units, group_units)


def supports_codes(k: int, n: int, bits: int, group_size: int, platform: str) -> bool:
    """Whether the packed-code kernels take a (k, n) weight of `bits`-bit codes in groups of
    `group_size` input rows (k for per-channel) on `platform` (`pick_blocks` then succeeds)."""
    check_platform(platform)
    _, c = code_unit(bits)
    if k % c or group_size % c or group_size < 1:
        return False
    if platform == "tpu":
        return True
    units, group_units = k // c, group_size // c
    block = pow2_divisor(units, 256)
    seg = segment_units(block, group_units, cdiv(k, group_size))
    return n % MIN_GPU_DOT == 0 and block >= MIN_GPU_DOT and seg >= MIN_GPU_DOT and seg & (seg - 1) == 0


def pick_blocks(m: int, k_units: int, n: int, group_units: int, n_groups: int, platform: str, *,
                block_m=None, block_n=None, block_k=None) -> tuple[int, int, int]:
    """(block_m, block_n, block_k in units) for an (m, k) x (k, n) product.

    TPU: rows a multiple of 8, columns 128-wide (or all of n), K blocks of up to 512 units that are a
    multiple of 128 or the whole K (edge blocks may be partial). GPU (Triton): powers of two that
    divide n and K exactly (Triton blocks are unmasked), at least 16 for the tensor-core dot.
    """
    if platform == "tpu":
        bm = block_m or (round_up(m, 8) if m <= 128 else 256)
        bn = block_n or (n if n <= 512 else 512)
        if block_k is None:
            block_k = k_units if k_units <= 512 else 512
            if n_groups > 1 and block_k % group_units and group_units % block_k:
                block_k = k_units if k_units <= 2048 else block_k
        return bm, bn, block_k
    bm = block_m or max(MIN_GPU_DOT, min(64, pow2_floor(round_up(m, MIN_GPU_DOT))) if m <= 64 else 64)
    bn = block_n or pow2_divisor(n, 128)
    bk = block_k or pow2_divisor(k_units, 256)
    return bm, bn, bk


def compiler_params(platform: str, semantics: tuple[str, ...], num_warps: int = 4, num_stages: int = 2):
    """Mosaic params (dimension semantics of the grid) or Triton params (warps, pipeline stages)."""
    if platform == "tpu":
        return pltpu.CompilerParams(dimension_semantics=semantics)
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
