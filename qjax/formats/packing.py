"""Bit packing of b-bit integer codes (b in 2, 3, 4, 8) into uint8 arrays, along axis 0.

Layout (one little-endian bit stream per trailing index, e.g. per output column of a kernel):
  code i of a column occupies stream bits [i*b, (i+1)*b), its least significant bit first; stream bit
  t is bit (t % 8) of byte t // 8 (bit 0 = least significant). So
    b=8: byte i is code i;
    b=4: byte k holds code 2k in its low nibble and code 2k+1 in its high nibble;
    b=2: byte k holds codes 4k..4k+3 from the low bits up;
    b=3: every 8 codes fill exactly 3 bytes (no padding bits):
         byte 0 = c0 | c1<<3 | (c2 & 0b11)<<6
         byte 1 = c2>>2 | c3<<1 | c4<<4 | (c5 & 0b1)<<7
         byte 2 = c5>>1 | c6<<2 | c7<<5
n codes take ceil(n*b/8) bytes; the unused high bits of the last byte are zero. Unpacking needs n.
The functions are jnp-traceable (static loops over the 8 codes of a chunk) and run under jit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from qjax.formats.spec import SUPPORTED_BITS


def packed_length(n: int, bits: int) -> int:
    """Bytes taken by n codes of `bits` bits: ceil(n*bits/8)."""
    _check_bits(bits)
    return -(-n * bits // 8)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"packing: bits must be one of {SUPPORTED_BITS}, got {bits!r}")


def _overlaps(bits: int):
    """(code j, byte k, shift) for each of the 8 codes of a chunk and each byte of the chunk it
    touches; shift = j*bits - 8*k (positive: the code sits above bit 0 of the byte)."""
    for j in range(8):
        lo, hi = j * bits, (j + 1) * bits  # stream bits [lo, hi)
        for k in range(lo // 8, (hi - 1) // 8 + 1):
            yield j, k, lo - 8 * k


def pack(codes: jax.Array, bits: int) -> jax.Array:
    """Pack codes along axis 0 (jit-compiled once per shape and width).

    Args:
      codes: (n, ...) integer array with values in [0, 2**bits - 1] (not checked: values are masked).
      bits: 2, 3, 4 or 8.
    Returns:
      (ceil(n*bits/8), ...) uint8.
    """
    _check_bits(bits)
    return _pack(jnp.asarray(codes), bits)


@functools.partial(jax.jit, static_argnums=1)
def _pack(codes: jax.Array, bits: int) -> jax.Array:
    n, rest = codes.shape[0], codes.shape[1:]
    mask = (1 << bits) - 1
    if bits == 8:
        return (codes.astype(jnp.uint32) & mask).astype(jnp.uint8)
    chunks = -(-n // 8)
    c = jnp.zeros((chunks * 8,) + rest, jnp.uint32).at[:n].set(codes.astype(jnp.uint32) & mask)
    c = c.reshape((chunks, 8) + rest)
    out = [jnp.zeros((chunks,) + rest, jnp.uint32) for _ in range(bits)]
    for j, k, shift in _overlaps(bits):
        part = c[:, j] << shift if shift >= 0 else c[:, j] >> (-shift)
        out[k] = out[k] | (part & 0xFF)
    packed = jnp.stack(out, axis=1).reshape((chunks * bits,) + rest).astype(jnp.uint8)
    return packed[:packed_length(n, bits)]


def unpack(packed: jax.Array, bits: int, n: int) -> jax.Array:
    """Inverse of `pack`: (ceil(n*bits/8), ...) uint8 -> (n, ...) uint8 codes."""
    _check_bits(bits)
    packed = jnp.asarray(packed)
    if packed.shape[0] != packed_length(n, bits):
        raise ValueError(
            f"unpack: {n} codes of {bits} bits take {packed_length(n, bits)} bytes, got {packed.shape[0]}")
    if packed.dtype != jnp.uint8:
        raise ValueError(f"unpack: packed codes must be uint8, got {packed.dtype}")
    return _unpack(packed, bits, n)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _unpack(packed: jax.Array, bits: int, n: int) -> jax.Array:
    if bits == 8:
        return packed
    rest = packed.shape[1:]
    chunks = -(-n // 8)
    p = jnp.zeros((chunks * bits,) + rest, jnp.uint32).at[:packed.shape[0]].set(packed.astype(jnp.uint32))
    p = p.reshape((chunks, bits) + rest)
    mask = (1 << bits) - 1
    codes = [jnp.zeros((chunks,) + rest, jnp.uint32) for _ in range(8)]
    for j, k, shift in _overlaps(bits):
        part = p[:, k] >> shift if shift >= 0 else p[:, k] << (-shift)
        codes[j] = codes[j] | part
    out = (jnp.stack(codes, axis=1) & mask).reshape((chunks * 8,) + rest).astype(jnp.uint8)
    return out[:n]
