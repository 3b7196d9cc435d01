"""Flash-decoding attention of one query token per sequence over a packed, quantized KV cache.

Cache (as `qjax.quant.kv` stores it): codes uint8 (B, S, KVH, D * b / 8), b-bit codes packed along
head_dim (layout of `pallas_kernels.layout`, bits 2, 4, 8); scale float16 (B, S, KVH, D / gs) per
token, KV head and group of gs head_dim entries; min (same shape) for the asymmetric grid,
x = code * scale + min, or None for the symmetric one, x = (code - 2**(b-1)) * scale.
Queries q (B, H, D), H a multiple of KVH (grouped-query heads); key_mask (B, S) bool, True for the
slots to attend; num_keys an int32 bound: slots from num_keys on are never read.

The kernel never dequantizes the cache to memory. With the G = H / KVH query heads of a KV head as
columns and key slots as rows, scores^T (bs, G) = sum over groups g of scale_g * (codes_g @ q_g^T)
+ min_g * sum(q_g), plane by plane (code j of each byte against q[j::C]); the output plane
(D / C, G) accumulates codes_g^T @ (p * scale_g) + sum(p * min_g). Online softmax (running max and
normaliser) over key blocks; `s_splits` programs per sequence each take a range of blocks and their
partial results are merged afterwards by their log-sum-exp weights (flash decoding).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import layout

KV_BITS = (2, 4, 8)
MASK_VALUE = -1e30


def supports_kv(bits: int, head_dim: int, group_size: int, platform: str, cache_len: int = 0) -> bool:
    """Whether the kernel reads a cache of `bits`-bit codes in groups of `group_size` on `platform`
    (on GPU the cache length must also be a multiple of 16: Triton's blocks are unmasked)."""
    layout.check_platform(platform)
    if bits not in KV_BITS or head_dim % group_size:
        return False
    _, c = layout.code_unit(bits)
    if group_size % c:
        return False
    gu = group_size // c
    return platform == "tpu" or (gu >= layout.MIN_GPU_DOT and gu & (gu - 1) == 0
                                 and cache_len % layout.MIN_GPU_DOT == 0)


def _block_update(carry, q_ref, qsum_ref, load_codes, load_stat, valid, *, kvh, c, n_groups, gu, bits,
                  asymmetric):
    """One key block for every KV head: carry = per-head (m (1, Gp), l (1, Gp), acc [C * n_groups] (gu, Gp))."""
    half = 1 << (bits - 1)
    mask = (1 << bits) - 1
    new = []
    for h in range(kvh):
        m, l, acc = carry[h]
        scores = None
        for g in range(n_groups):
            part = None
            words = load_codes("k", h, g * gu, gu)
            for j in range(c):
                qv = words if c == 1 else (words >> (bits * j)) & mask
                if not asymmetric:
                    qv = qv - half
                d = jnp.dot(qv.astype(jnp.float32), q_ref[h, j, pl.ds(g * gu, gu), :],
                            preferred_element_type=jnp.float32)
                part = d if part is None else part + d
            term = part * load_stat("k_scale", h, g)
            if asymmetric:
                term = term + load_stat("k_min", h, g) * qsum_ref[h, pl.ds(g, 1), :]
            scores = term if scores is None else scores + term
        scores = jnp.where(valid, scores, MASK_VALUE)  # (bs, Gp)
        m_new = jnp.maximum(m, jnp.max(scores, axis=0, keepdims=True))
        corr = jnp.exp(m - m_new)
        p = jnp.exp(scores - m_new)
        p = jnp.where(valid, p, 0.0)
        l_new = l * corr + jnp.sum(p, axis=0, keepdims=True)
        acc_new = []
        for g in range(n_groups):
            ps = p * load_stat("v_scale", h, g)
            shift = jnp.sum(p * load_stat("v_min", h, g), axis=0, keepdims=True) if asymmetric else \
                -half * jnp.sum(ps, axis=0, keepdims=True)
            words = load_codes("v", h, g * gu, gu)
            for j in range(c):
                qv = words if c == 1 else (words >> (bits * j)) & mask
                pv = jax.lax.dot_general(qv.astype(jnp.float32), ps, (((0,), (0,)), ((), ())),
                                         preferred_element_type=jnp.float32)  # (gu, Gp)
                acc_new.append(acc[g * c + j] * corr + pv + shift)
        new.append((m_new, l_new, acc_new))
    return new


def quantized_kv_decode_attention(q: jax.Array, k_codes: jax.Array, k_scale: jax.Array,
                                  k_min: Optional[jax.Array], v_codes: jax.Array, v_scale: jax.Array,
                                  v_min: Optional[jax.Array], key_mask: jax.Array, num_keys=None, *,
                                  bits: int, group_size: int, platform: str, interpret: bool = False,
                                  block_s: Optional[int] = None, s_splits: int = 1) -> jax.Array:
    """(B, H, D) attention outputs in q's dtype (module docstring); softmax in float32."""
    layout.check_platform(platform)
    b, h, d = q.shape
    _, s, kvh, dp = k_codes.shape
    asymmetric = k_min is not None
    if not supports_kv(bits, d, group_size, platform, s):
        raise ValueError(f"quantized_kv_decode_attention: {bits}-bit KV in groups of {group_size} over "
                         f"head_dim {d} is not supported on {platform}")
    if h % kvh or dp != d * bits // 8 or k_scale.shape != (b, s, kvh, d // group_size):
        raise ValueError(f"quantized_kv_decode_attention: q {q.shape}, codes {k_codes.shape}, scale "
                         f"{k_scale.shape} do not describe a {bits}-bit cache with groups of {group_size}")
    if (v_min is None) != (not asymmetric) or key_mask.shape != (b, s):
        raise ValueError("quantized_kv_decode_attention: k_min and v_min must both be given or both None, "
                         f"and key_mask must be {(b, s)}, got {key_mask.shape}")
    _, c = layout.code_unit(bits)
    g_heads = h // kvh
    n_groups, gu = d // group_size, group_size // c
    gp = layout.round_up(g_heads, 8 if platform == "tpu" else layout.MIN_GPU_DOT)
    bs = block_s or (min(512, layout.round_up(s, 8)) if platform == "tpu" else layout.pow2_divisor(s, 128))
    if platform == "gpu" and (s % bs or bs < layout.MIN_GPU_DOT):
        raise ValueError(f"quantized_kv_decode_attention: on gpu the cache length {s} needs a power-of-two "
                         f"block >= 16 dividing it")
    s_blocks = layout.cdiv(s, bs)
    s_splits = max(1, min(s_splits, s_blocks))
    per_split = layout.cdiv(s_blocks, s_splits)
    num_keys = jnp.asarray(s if num_keys is None else num_keys, jnp.int32).reshape(1)

    # q planes, transposed and pre-scaled: (B, KVH, C, D / C, Gp); per-group sums (B, KVH, n_groups, Gp)
    qf = q.astype(jnp.float32).reshape(b, kvh, g_heads, d) * d ** -0.5
    qf = jnp.pad(qf, ((0, 0), (0, 0), (0, gp - g_heads), (0, 0)))
    q_planes = qf.reshape(b, kvh, gp, d // c, c).transpose(0, 1, 4, 3, 2)
    q_sums = qf.reshape(b, kvh, gp, n_groups, group_size).sum(-1).transpose(0, 1, 3, 2)
    mask3 = key_mask.astype(jnp.int32)[:, :, None]
    stats = {"k_scale": k_scale, "v_scale": v_scale}
    if asymmetric:
        stats.update(k_min=k_min, v_min=v_min)
    names = list(stats)
    kw = dict(kvh=kvh, c=c, n_groups=n_groups, gu=gu, bits=bits, asymmetric=asymmetric)
    acc_shape = (b, s_splits, kvh, c, d // c, gp)
    out_shapes = (jax.ShapeDtypeStruct(acc_shape, jnp.float32),
                  jax.ShapeDtypeStruct((b, s_splits, kvh, 2, gp), jnp.float32))

    def init():
        return [(jnp.full((1, gp), -jnp.inf, jnp.float32), jnp.zeros((1, gp), jnp.float32),
                 [jnp.zeros((gu, gp), jnp.float32)] * (c * n_groups)) for _ in range(kvh)]

    def finish(carry, o_ref, ml_ref):
        for hh, (m, l, acc) in enumerate(carry):
            for g in range(n_groups):
                for j in range(c):
                    o_ref[hh, j, pl.ds(g * gu, gu), :] = acc[g * c + j]
            ml_ref[hh, pl.ds(0, 1), :] = m
            ml_ref[hh, pl.ds(1, 1), :] = l

    if platform == "tpu":
        def kernel(nk_ref, q_ref, qs_ref, mask_ref, kc_ref, vc_ref, *rest):
            stat_refs = dict(zip(names, rest[:len(names)]))
            o_ref, ml_ref, m_scr, l_scr, acc_scr = rest[len(names):]
            split, kb = pl.program_id(1), pl.program_id(2)
            block = split * per_split + kb

            @pl.when(kb == 0)
            def _():
                m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
                l_scr[...] = jnp.zeros_like(l_scr)
                acc_scr[...] = jnp.zeros_like(acc_scr)

            @pl.when((block < s_blocks) & (block * bs < nk_ref[0]))
            def _():
                slots = block * bs + jax.lax.broadcasted_iota(jnp.int32, (bs, 1), 0)
                valid = (mask_ref[...] != 0) & (slots < nk_ref[0]) & (slots < s)
                carry = [(m_scr[hh], l_scr[hh], [acc_scr[hh * c * n_groups + i] for i in range(c * n_groups)])
                         for hh in range(kvh)]
                codes = {"k": kc_ref, "v": vc_ref}
                carry = _block_update(
                    carry, q_ref, qs_ref, lambda name, hh, lo, size: codes[name][:, hh, pl.ds(lo, size)].astype(jnp.int32),
                    lambda name, hh, g: stat_refs[name][:, hh, pl.ds(g, 1)].astype(jnp.float32), valid, **kw)
                for hh, (m, l, acc) in enumerate(carry):
                    m_scr[hh], l_scr[hh] = m, l
                    for i, a in enumerate(acc):
                        acc_scr[hh * c * n_groups + i] = a

            @pl.when(kb == per_split - 1)
            def _():
                finish([(m_scr[hh], l_scr[hh], [acc_scr[hh * c * n_groups + i] for i in range(c * n_groups)])
                        for hh in range(kvh)], o_ref, ml_ref)

        def kv_block(bb, sp, kb, nk):
            last = jnp.maximum(jax.lax.div(nk[0] + bs - 1, bs) - 1, 0)  # lax.div: no sign op (Mosaic)
            return jnp.minimum(jnp.minimum(sp * per_split + kb, s_blocks - 1), last)

        cache_spec = lambda width: pl.BlockSpec((None, bs, kvh, width),  # noqa: E731
                                                lambda bb, sp, kb, nk: (bb, kv_block(bb, sp, kb, nk), 0, 0))
        grid_spec = pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(b, s_splits, per_split),
            in_specs=[pl.BlockSpec((None, kvh, c, d // c, gp), lambda bb, sp, kb, nk: (bb, 0, 0, 0, 0)),
                      pl.BlockSpec((None, kvh, n_groups, gp), lambda bb, sp, kb, nk: (bb, 0, 0, 0)),
                      pl.BlockSpec((None, bs, 1), lambda bb, sp, kb, nk: (bb, kv_block(bb, sp, kb, nk), 0)),
                      cache_spec(dp), cache_spec(dp)] + [cache_spec(n_groups)] * len(names),
            out_specs=[pl.BlockSpec((None, None, kvh, c, d // c, gp), lambda bb, sp, kb, nk: (bb, sp, 0, 0, 0, 0)),
                       pl.BlockSpec((None, None, kvh, 2, gp), lambda bb, sp, kb, nk: (bb, sp, 0, 0, 0))],
            scratch_shapes=[pltpu.VMEM((kvh, 1, gp), jnp.float32), pltpu.VMEM((kvh, 1, gp), jnp.float32),
                            pltpu.VMEM((kvh * c * n_groups, gu, gp), jnp.float32)])
        call = pl.pallas_call(kernel, out_shape=out_shapes, grid_spec=grid_spec, interpret=interpret,
                              compiler_params=layout.compiler_params("tpu", ("parallel", "parallel", "arbitrary")),
                              name=f"kv{bits}_decode_attention")
        acc, ml = call(num_keys, q_planes, q_sums, mask3, k_codes, v_codes, *stats.values())
    else:  # one program per (sequence, KV head, split): the KV heads are grid axes, not unrolled
        gkw = dict(kw, kvh=1)

        def kernel(nk_ref, q_ref, qs_ref, mask_ref, kc_ref, vc_ref, *rest):
            stat_refs = dict(zip(names, rest[:len(names)]))
            o_ref, ml_ref = rest[len(names):]
            split = pl.program_id(2)
            codes = {"k": kc_ref, "v": vc_ref}
            nk = nk_ref[0]
            per = 2 + c * n_groups

            def body(kb, flat):
                start = (split * per_split + kb) * bs
                slots = start + jax.lax.broadcasted_iota(jnp.int32, (bs, 1), 0)
                valid = (mask_ref[pl.ds(start, bs), :] != 0) & (slots < nk)
                (m, l, acc), = _block_update(
                    [(flat[0], flat[1], list(flat[2:]))], q_ref, qs_ref,
                    lambda name, hh, lo, size: codes[name][pl.ds(start, bs), 0, pl.ds(lo, size)].astype(jnp.int32),
                    lambda name, hh, g: stat_refs[name][pl.ds(start, bs), 0, pl.ds(g, 1)].astype(jnp.float32),
                    valid, **gkw)
                return (m, l, *acc)

            (m0, l0, acc0), = [init()[0]]
            blocks = jnp.clip(jax.lax.div(nk + bs - 1, bs) - split * per_split, 0, per_split)
            flat = jax.lax.fori_loop(0, blocks, body, (m0, l0, *acc0))
            assert len(flat) == per
            finish([(flat[0], flat[1], list(flat[2:]))], o_ref, ml_ref)

        def seq(shape):
            return pl.BlockSpec((None,) + shape, lambda bb, hh, sp: (bb,) + (0,) * len(shape))

        def head(shape):  # a (B, KVH, ...) array: this program's KV head
            return pl.BlockSpec((None, 1) + shape, lambda bb, hh, sp: (bb, hh) + (0,) * len(shape))

        def cache(width):  # (B, S, KVH, width): every slot of this program's KV head
            return pl.BlockSpec((None, s, 1, width), lambda bb, hh, sp: (bb, 0, hh, 0))

        call = pl.pallas_call(
            kernel, out_shape=out_shapes, grid=(b, kvh, s_splits),
            in_specs=[pl.BlockSpec((1,), lambda bb, hh, sp: (0,)), head((c, d // c, gp)), head((n_groups, gp)),
                      seq((s, 1)), cache(dp), cache(dp)] + [cache(n_groups)] * len(names),
            out_specs=[pl.BlockSpec((None, None, 1, c, d // c, gp), lambda bb, hh, sp: (bb, sp, hh, 0, 0, 0)),
                       pl.BlockSpec((None, None, 1, 2, gp), lambda bb, hh, sp: (bb, sp, hh, 0, 0))],
            compiler_params=layout.compiler_params("gpu", ()), interpret=interpret,
            name=f"kv{bits}_decode_attention")
        acc, ml = call(num_keys, q_planes, q_sums, mask3, k_codes, v_codes, *stats.values())
    return _merge_splits(acc, ml, b, h, d, kvh, g_heads, c).astype(q.dtype)


def _merge_splits(acc, ml, b, h, d, kvh, g_heads, c):
    """Combine the splits' (unnormalised output, running max m, normaliser l) by exp(m - max m)."""
    m, l = ml[:, :, :, 0, :], ml[:, :, :, 1, :]  # (B, splits, KVH, Gp)
    m_all = jnp.max(m, axis=1, keepdims=True)
    w = jnp.where(jnp.isfinite(m), jnp.exp(m - jnp.where(jnp.isfinite(m_all), m_all, 0.0)), 0.0)
    num = jnp.sum(acc * w[:, :, :, None, None, :], axis=1)  # (B, KVH, C, D/C, Gp)
    den = jnp.maximum(jnp.sum(l * w, axis=1), 1e-30)  # (B, KVH, Gp)
    out = num / den[:, :, None, None, :]
    out = out.transpose(0, 1, 4, 3, 2).reshape(b, kvh, -1, d)[:, :, :g_heads]  # (B, KVH, G, D)
    return out.reshape(b, h, d)
