"""Dequantizing matmul: y = x @ W for W stored as b-bit packed codes (read as stored, never unpacked
to memory) with per-group statistics.

  W[i, n] = scale[i // G, n] * (q[i, n] - zero[i // G, n])   uniform asymmetric
  W[i, n] = scale[i // G, n] * (q[i, n] - 2**(b-1))          uniform symmetric (zero=None)
  W[i, n] = scale[i // G, n] * codebook[q[i, n]]             codebook grids (NF4, companded)

Shapes: x (M, K) float32 or bfloat16; codes uint8 (ceil(K * b / 8), N) in the layout of
`pallas_kernels.layout`; scale and zero (ceil(K / G), N) of any float dtype (the last group may be
partial, e.g. K = 576 at G = 128; per-channel is G = K); codebook (2**b,) float32. Returns (M, N)
in x's dtype; products accumulate in float32.

Inside a K block the kernel walks runs of units that share one group (`layout.segment_units`). The
GPU variant (and every integer product), per run and plane, multiplies the activation plane by the
integer codes (or codebook levels) and applies the group's scale once to the (M, N) partial product,
with the zero point folded in as zero * sum(x): the per-element work on the weight is a shift, a mask
and a conversion. The TPU variant of the float product dequantizes the block's tile run by run and
makes one MXU dot per plane over the whole block (no lane-unaligned slices of x, full-depth dots). Decode shapes
(few rows) may split K across `k_splits` programs whose float32 partial sums are added afterwards.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import layout


def _plane_codes(words, bits: int, j: int, units_per_word: int, codes_per_unit: int):
    """Code j of each unit of an int32 word block."""
    if codes_per_unit == 1:
        return words
    return (words >> (bits * j)) & ((1 << bits) - 1)


def _levels(q, bits, codebook_ref):
    """Codebook lookup q -> codebook[q] as float32, by a chain of selects (no gathers in kernels)."""
    out = jnp.zeros(q.shape, jnp.float32)
    for level in range(1 << bits):
        out = jnp.where(q == level, codebook_ref[level], out)
    return out


def _run_product(x_plane, load_words, load_stats, codebook_ref, *, bits, asymmetric, integer, lo, size,
                 unit0, group_units, n_groups, precision):
    """float32 (bm, bn) contribution of the `size` units [lo, lo + size) of the current block.

    integer: x planes hold int8 codes and the weight enters the dot as int8 levels q - 2**(b-1)
    (int32 products); the zero point then enters as (zero - 2**(b-1)) * sum(x)."""
    unit_bytes, c = layout.code_unit(bits)
    words = load_words(lo, size)
    half = 1 << (bits - 1)
    part, xsum = None, None
    for j in range(c):
        q = _plane_codes(words, bits, j, unit_bytes, c)
        xj = x_plane(j, lo, size)
        if integer:
            d = jnp.dot(xj, (q - half).astype(jnp.int8), preferred_element_type=jnp.int32)
        else:
            if codebook_ref is not None:
                w = _levels(q, bits, codebook_ref)
            elif asymmetric:
                w = q
            else:
                w = q - half
            d = jnp.dot(xj, w.astype(xj.dtype), preferred_element_type=jnp.float32, precision=precision)
        part = d if part is None else part + d
        if asymmetric:
            s = jnp.sum(xj.astype(jnp.int32 if integer else jnp.float32), axis=1, keepdims=True)
            xsum = s if xsum is None else xsum + s
    part = part.astype(jnp.float32)
    g = jnp.minimum(jax.lax.div(unit0 + lo, group_units), n_groups - 1)  # lax.div: no sign op (Mosaic)
    scale, zero = load_stats(g)
    if asymmetric:
        part = part - xsum.astype(jnp.float32) * (zero - half if integer else zero)
    return part * scale


def _block_product(x_plane, load_words, load_stats, codebook_ref, *, block_units, unit0, **kw):
    seg = layout.segment_units(block_units, kw["group_units"], kw["n_groups"])
    acc = None
    for lo in range(0, block_units, seg):
        p = _run_product(x_plane, load_words, load_stats, codebook_ref, lo=lo, size=seg, unit0=unit0, **kw)
        acc = p if acc is None else acc + p
    return acc


def _dequantized_tile_product(x_block, load_words, load_stats, codebook_ref, *, bits, asymmetric, block_units,
                              unit0, group_units, n_groups, precision, **_):
    """float32 (bm, bn) product of a whole K block, TPU style: each plane's (block_units, bn) tile is
    dequantized run by run (scale and zero applied per element, rows concatenated on sublanes), then
    one MXU dot with the block's (bm, block_units) activation plane: no lane slicing of x, and the dot
    contracts the whole block. Weights enter the dot in x's dtype, as on the XLA path."""
    _, c = layout.code_unit(bits)
    seg = layout.segment_units(block_units, group_units, n_groups)
    half = 1 << (bits - 1)
    runs = []
    for lo in range(0, block_units, seg):
        g = jnp.minimum(jax.lax.div(unit0 + lo, group_units), n_groups - 1)  # lax.div: no sign op (Mosaic)
        runs.append((load_words(lo, seg),) + load_stats(g))
    acc = None
    for j in range(c):
        tiles = []
        for words, scale, zero in runs:
            q = _plane_codes(words, bits, j, 0, c)
            if codebook_ref is not None:
                w = _levels(q, bits, codebook_ref) * scale
            else:
                w = (q.astype(jnp.float32) - (zero if asymmetric else half)) * scale
            tiles.append(w)
        w = tiles[0] if len(tiles) == 1 else jnp.concatenate(tiles, axis=0)
        xj = x_block(j)
        d = jnp.dot(xj, w.astype(xj.dtype), preferred_element_type=jnp.float32, precision=precision)
        acc = d if acc is None else acc + d
    return acc


def _unpack_refs(refs, asymmetric, has_codebook):
    refs = list(refs)
    x_ref, codes_ref, scale_ref = refs[:3]
    rest = refs[3:]
    zero_ref = rest.pop(0) if asymmetric else None
    codebook_ref = rest.pop(0) if has_codebook else None
    return x_ref, codes_ref, scale_ref, zero_ref, codebook_ref, rest


def _stats_loader(scale_ref, zero_ref):
    def load(g):
        s = scale_ref[pl.ds(g, 1), :].astype(jnp.float32)
        z = None if zero_ref is None else zero_ref[pl.ds(g, 1), :].astype(jnp.float32)
        return s, z
    return load


def _words_loader(codes_ref, base, unit_bytes):
    """load(lo, size) -> int32 (size, bn) words of units [base + lo, base + lo + size) of codes_ref."""
    def load(lo, size):
        if unit_bytes == 1:
            return codes_ref[pl.ds(base + lo, size), :].astype(jnp.int32)
        words = None
        for u in range(unit_bytes):
            b = codes_ref[pl.ds((base + lo) * unit_bytes + u, size, stride=unit_bytes), :].astype(jnp.int32)
            words = b if words is None else words | (b << (8 * u))
        return words
    return load


def _tpu_kernel(*refs, asymmetric, has_codebook, k_blocks, blocks_per_split, block_units, **kw):
    x_ref, codes_ref, scale_ref, zero_ref, codebook_ref, (o_ref, acc_ref) = _unpack_refs(
        refs, asymmetric, has_codebook)
    split, k = pl.program_id(0), pl.program_id(3)
    kb = split * blocks_per_split + k

    @pl.when(k == 0)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(kb < k_blocks)
    def _():
        unit_bytes, _ = layout.code_unit(kw["bits"])
        words, stats = _words_loader(codes_ref, 0, unit_bytes), _stats_loader(scale_ref, zero_ref)
        if kw["integer"]:  # int8 dots per run of one group; scales after each
            acc_ref[...] += _block_product(
                lambda j, lo, size: x_ref[j, :, pl.ds(lo, size)], words, stats, codebook_ref,
                block_units=block_units, unit0=kb * block_units, asymmetric=asymmetric, **kw)
        else:
            acc_ref[...] += _dequantized_tile_product(
                lambda j: x_ref[j], words, stats, codebook_ref, block_units=block_units,
                unit0=kb * block_units, asymmetric=asymmetric, **kw)

    @pl.when(k == blocks_per_split - 1)
    def _():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def _gpu_kernel(*refs, asymmetric, has_codebook, k_blocks, blocks_per_split, block_units, **kw):
    x_ref, codes_ref, scale_ref, zero_ref, codebook_ref, (o_ref,) = _unpack_refs(refs, asymmetric, has_codebook)
    split = pl.program_id(0)
    unit_bytes, _ = layout.code_unit(kw["bits"])
    bm, bn = o_ref.shape

    def body(k, acc):
        unit0 = (split * blocks_per_split + k) * block_units
        return acc + _block_product(
            lambda j, lo, size: x_ref[j, :, pl.ds(unit0 + lo, size)],
            _words_loader(codes_ref, unit0, unit_bytes), _stats_loader(scale_ref, zero_ref), codebook_ref,
            block_units=block_units, unit0=unit0, asymmetric=asymmetric, **kw)

    n = jnp.minimum(blocks_per_split, k_blocks - split * blocks_per_split)
    acc = jax.lax.fori_loop(0, n, body, jnp.zeros((bm, bn), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def dequant_matmul(x: jax.Array, codes: jax.Array, scale: jax.Array, zero: Optional[jax.Array] = None,
                   codebook: Optional[jax.Array] = None, *, bits: int, group_size: int, platform: str,
                   interpret: bool = False, k_splits: int = 1, block_m: Optional[int] = None,
                   block_n: Optional[int] = None, block_k: Optional[int] = None) -> jax.Array:
    """x (M, K) float @ W (K, N) -> (M, N) in x's dtype, W given by its packed codes (module docstring).

    group_size: input rows per statistics row (K for per-channel). k_splits: programs the K blocks
    are divided among (decode: more programs than N blocks alone would give); block_k is in units
    (`pallas_kernels.layout`). ValueError when `layout.supports_codes` rejects the shape.
    """
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"dequant_matmul: x must be float32 or bfloat16, got {x.dtype}")
    return packed_matmul(x, codes, scale, zero, codebook, bits=bits, group_size=group_size, platform=platform,
                         interpret=interpret, k_splits=k_splits, block_m=block_m, block_n=block_n,
                         block_k=block_k).astype(x.dtype)


def packed_matmul(x: jax.Array, codes: jax.Array, scale: jax.Array, zero: Optional[jax.Array] = None,
                  codebook: Optional[jax.Array] = None, *, bits: int, group_size: int, platform: str,
                  interpret: bool = False, k_splits: int = 1, block_m: Optional[int] = None,
                  block_n: Optional[int] = None, block_k: Optional[int] = None) -> jax.Array:
    """The kernel behind `dequant_matmul` and `int8_matmul`: x float (float products) or int8 (int8 x
    int8 -> int32 products per group; uniform grids only). Returns float32 (M, N) for int8 x, else
    x's dtype (float32 when k_splits > 1)."""
    layout.check_platform(platform)
    integer = x.dtype == jnp.int8
    if integer and codebook is not None:
        raise ValueError("packed_matmul: integer products need a uniform grid, not a codebook")
    m, k = x.shape
    unit_bytes, c = layout.code_unit(bits)
    n = codes.shape[1]
    n_groups = layout.cdiv(k, group_size)
    if codes.shape[0] != layout.cdiv(k * bits, 8) or codes.dtype != jnp.uint8:
        raise ValueError(f"dequant_matmul: codes must be uint8 ({layout.cdiv(k * bits, 8)}, {n}) for "
                         f"K={k} at {bits} bits, got {codes.dtype} {codes.shape}")
    if scale.shape != (n_groups, n) or (zero is not None and zero.shape != scale.shape):
        raise ValueError(f"dequant_matmul: scale/zero must be ({n_groups}, {n}) for K={k}, group "
                         f"{group_size}; got {scale.shape}, {None if zero is None else zero.shape}")
    if codebook is not None and (zero is not None or codebook.shape != (1 << bits,)):
        raise ValueError(f"dequant_matmul: a codebook grid has {1 << bits} levels and no zero point")
    if not layout.supports_codes(k, n, bits, group_size, platform):
        raise ValueError(f"dequant_matmul: a ({k}, {n}) weight of {bits}-bit codes in groups of "
                         f"{group_size} is not supported on {platform} (see layout.supports_codes)")
    units, group_units = k // c, group_size // c
    bm, bn, bk = layout.pick_blocks(m, units, n, group_units, n_groups, platform, block_m=block_m,
                                    block_n=block_n, block_k=block_k)
    k_blocks = layout.cdiv(units, bk)
    k_splits = max(1, min(k_splits, k_blocks))
    per_split = layout.cdiv(k_blocks, k_splits)
    mp = layout.round_up(m, bm)
    xp = layout.split_planes(jnp.pad(x, ((0, mp - m), (0, 0))), bits, k_blocks * bk)
    out_dtype = x.dtype if k_splits == 1 and not integer else jnp.float32
    precision = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
    kw = dict(asymmetric=zero is not None, integer=integer, has_codebook=codebook is not None, k_blocks=k_blocks,
              blocks_per_split=per_split, block_units=bk, bits=bits, group_units=group_units,
              n_groups=n_groups, precision=precision)
    operands = [xp, codes, scale] + ([zero] if zero is not None else []) + \
               ([codebook.astype(jnp.float32)] if codebook is not None else [])
    out_shape = jax.ShapeDtypeStruct((k_splits, mp, n), out_dtype)
    if platform == "tpu":
        def kblock(s, kk):
            return jnp.minimum(s * per_split + kk, k_blocks - 1)
        stats_spec = pl.BlockSpec((n_groups, bn), lambda s, i, j, kk: (0, j))
        in_specs = [pl.BlockSpec((c, bm, bk), lambda s, i, j, kk: (0, i, kblock(s, kk))),
                    pl.BlockSpec((bk * unit_bytes, bn), lambda s, i, j, kk: (kblock(s, kk), j)),
                    stats_spec] + ([stats_spec] if zero is not None else []) + \
                   ([pl.BlockSpec(memory_space=pltpu.SMEM)] if codebook is not None else [])
        call = pl.pallas_call(
            functools.partial(_tpu_kernel, **kw), out_shape=out_shape,
            grid=(k_splits, mp // bm, layout.cdiv(n, bn), per_split), in_specs=in_specs,
            out_specs=pl.BlockSpec((None, bm, bn), lambda s, i, j, kk: (s, i, j)),
            scratch_shapes=[pltpu.VMEM((bm, bn), jnp.float32)],
            compiler_params=layout.compiler_params(platform, ("parallel", "parallel", "parallel", "arbitrary")),
            interpret=interpret, name=f"dequant_matmul_w{bits}")
    else:
        stats_spec = pl.BlockSpec((n_groups, bn), lambda s, i, j: (0, j))
        in_specs = [pl.BlockSpec((c, bm, xp.shape[2]), lambda s, i, j: (0, i, 0)),
                    pl.BlockSpec((codes.shape[0], bn), lambda s, i, j: (0, j)),
                    stats_spec] + ([stats_spec] if zero is not None else []) + \
                   ([pl.BlockSpec((1 << bits,), lambda s, i, j: (0,))] if codebook is not None else [])
        call = pl.pallas_call(
            functools.partial(_gpu_kernel, **kw), out_shape=out_shape,
            grid=(k_splits, mp // bm, n // bn), in_specs=in_specs,
            out_specs=pl.BlockSpec((None, bm, bn), lambda s, i, j: (s, i, j)),
            compiler_params=layout.compiler_params(platform, ()), interpret=interpret,
            name=f"dequant_matmul_w{bits}")
    out = call(*operands)
    out = out[0] if k_splits == 1 else jnp.sum(out, axis=0)
    return out[:m]
