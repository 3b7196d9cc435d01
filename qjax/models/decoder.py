"""One decoder for every transformer family, assembled from the parts its `ModelConfig` declares
(norm kind, MLP kind, attention variant, positional scheme, residual layout, dense or MoE).

Parameter pytree (a plain nested dict; weights are Dense kernels, shape (in, out)); a part that the
config does not declare has no parameters:
  embed/embedding                       (vocab, embed_dim)   embed_dim: hidden unless embed_proj_dim
  project_in/kernel, project_out/kernel (embed_dim, hidden), (hidden, embed_dim)     embed_proj_dim
  pos_embed/embedding                   (max_positions + position_offset, hidden)   learned positions
  embed_norm/{scale,bias}               (hidden,)                                    word-embedding norm
  layers_{i}/input_norm/scale (+bias)   (hidden,)                                    before attention
  layers_{i}/attn/{q,k,v}_proj/kernel   (hidden, heads * head_dim) / (hidden, kv_heads * head_dim)
  layers_{i}/attn/qkv_proj/kernel       (hidden, q + 2 kv) [q | k | v] columns       fused_qkv
  layers_{i}/attn/{q,k,v,qkv}_proj/bias                                              attention_bias
  layers_{i}/attn/o_proj/kernel (+bias) (heads * head_dim, hidden)
  layers_{i}/attn/{q,k}_norm/scale      (head_dim,) or (q / kv size,)                qk_norm
  layers_{i}/attn/{q,k}_norm/heads_{h}/scale  (head_dim,)                            qk_norm per_head
  layers_{i}/post_attn_norm/scale       (hidden,)   the MLP's input norm (absent: parallel, shared)
  layers_{i}/attn_output_norm/scale, layers_{i}/mlp_output_norm/scale                sandwich
  layers_{i}/mlp/...  or  layers_{i}/moe/...                                         see qjax.models.mlp
  final_norm/scale (+bias)              (hidden,)                                    final_norm
  lm_head/kernel                        (embed_dim, vocab)   absent when embeddings are tied
Any kernel may be replaced by a quantized array (anything with `matmul`); see `qjax.ops.linear`.
Every linear is a `layers.Linear` whose site name is its path (layers_3/mlp/down_proj).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qjax.models import kv_cache as kv_cache_lib
from qjax.ops.attention import blocked_attention, causal_attention, grouped_attention
from qjax.ops.kv_attention import quantized_cache_attention
from qjax.parallel.rules import CACHE_AXES
from qjax.models.config import ModelConfig
from qjax.models import mamba
from qjax.models.layers import FUSE_MIN_ROWS, Linear, Norm, PerHeadNorm, sibling_linears
from qjax.models.mlp import MLP, MoE
from qjax.models.rope import apply_rope, rope_frequencies
from qjax.ops import Runtime, tied_logits

BLOCKED_MIN_QUERIES = 64  # cached forwards of at least this many tokens use blocked_attention


def _dtype(runtime: Runtime):
    return jnp.bfloat16 if runtime.compute_dtype == "bfloat16" else jnp.float32


def alibi_slopes(num_heads: int) -> np.ndarray:
    """(num_heads,) float32 ALiBi slopes (Press et al.; BLOOM's `build_alibi_tensor`): a geometric
    sequence 2^(-8 i / n) over the largest power of two n <= num_heads, the rest interleaved from
    the sequence for 2 n."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = base ** np.arange(1, closest + 1, dtype=np.float64)
    if closest != num_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        extra = min(closest, num_heads - closest)
        slopes = np.concatenate([slopes, extra_base ** np.arange(1, 1 + 2 * extra, 2, dtype=np.float64)])
    return slopes.astype(np.float32)


def causal_mask(query_slots, key_slots, key_mask, sliding_window: Optional[int]):
    """Boolean (batch, 1, T, S) mask: causal over cache slots, padding keys removed.

    query_slots: (T,) slot index of each query; key_slots: (S,); key_mask: (batch, S) bool.
    """
    allowed = key_slots[None, :] <= query_slots[:, None]
    if sliding_window is not None:
        allowed &= key_slots[None, :] > query_slots[:, None] - sliding_window
    return allowed[None, None, :, :] & key_mask[:, None, None, :]


class Attention(nn.Module):
    """Self-attention of one layer: MHA / GQA / MQA by num_kv_heads, fused or separate q/k/v,
    optional q/k norms and clamp, RoPE (partial, local theta on sliding layers) or ALiBi, soft-capped
    scores, the config's score scale. `sliding`: whether this layer's mask is the sliding one (only
    the RoPE base depends on it here)."""

    config: ModelConfig
    runtime: Runtime
    sliding: bool = False

    @nn.compact
    def __call__(self, x, positions, mask, layer_cache, cache_start, runtime_state):
        cfg, rt = self.config, self.runtime
        b, t, _ = x.shape
        bias = cfg.attention_bias
        if cfg.fused_qkv:
            qkv = Linear(cfg.q_size + 2 * cfg.kv_size, rt, bias, name="qkv_proj")(x, runtime_state)
            q, k, v = jnp.split(qkv, [cfg.q_size, cfg.q_size + cfg.kv_size], axis=-1)
        else:
            q, k, v = sibling_linears(self, x, runtime_state, [
                Linear(cfg.q_size, rt, bias, name="q_proj"), Linear(cfg.kv_size, rt, bias, name="k_proj"),
                Linear(cfg.kv_size, rt, bias, name="v_proj")])
        if cfg.qk_norm == "full":
            q = Norm(cfg.norm, cfg.rms_norm_eps, name="q_norm")(q)
            k = Norm(cfg.norm, cfg.rms_norm_eps, name="k_norm")(k)
        if cfg.clip_qkv is not None:
            q, k, v = (jnp.clip(a, -cfg.clip_qkv, cfg.clip_qkv) for a in (q, k, v))
        q = q.reshape(b, t, cfg.num_heads, cfg.head_dim)
        k = k.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = v.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm == "head":
            q = Norm(cfg.norm, cfg.rms_norm_eps, name="q_norm")(q)
            k = Norm(cfg.norm, cfg.rms_norm_eps, name="k_norm")(k)
        elif cfg.qk_norm == "per_head":
            q = PerHeadNorm(cfg.rms_norm_eps, name="q_norm")(q)
            k = PerHeadNorm(cfg.rms_norm_eps, name="k_norm")(k)
        if cfg.positional == "rope":
            inv_freq, rope_scale = rope_frequencies(cfg, positions, local=self.sliding)
            q = apply_rope(q, positions, inv_freq, rope_scale)
            k = apply_rope(k, positions, inv_freq, rope_scale)
        if cfg.query_scale is not None:  # the attention functions scale by head_dim ** -0.5
            q = q * jnp.asarray(cfg.query_scale * math.sqrt(cfg.head_dim), q.dtype)
        mods = dict(softcap=cfg.attn_softcap,
                    alibi=alibi_slopes(cfg.num_heads) * cfg.alibi_scale if cfg.positional == "alibi" else None)
        if layer_cache is not None:
            spec = kv_cache_lib.resolve_spec(rt.kv_cache)
            layer_cache = spec.write_layer(layer_cache, k, v, cache_start)
            out = None  # a decode step over a packed quantized cache: a Pallas kernel where one is in force
            if mods["softcap"] is None and mods["alibi"] is None:
                out = quantized_cache_attention(q, layer_cache, spec, mask, cache_start + t, mesh_axes=CACHE_AXES)
            if out is None:
                k, v = spec.read_layer(layer_cache, x.dtype)
                if t >= BLOCKED_MIN_QUERIES:  # a prefill chunk: only the slots written so far
                    out = blocked_attention(q, k, v, mask, num_keys=cache_start + t, **mods)
                else:
                    out = grouped_attention(q, k, v, mask, **mods)
        else:
            out = causal_attention(q, k, v, mask, **mods)
        out = Linear(cfg.hidden_size, rt, cfg.o_bias, name="o_proj")(out.reshape(b, t, cfg.q_size), runtime_state)
        return out, layer_cache


class DecoderLayer(nn.Module):
    """One block: attention and feed-forward (dense `MLP` or `MoE`) joined by the config's residual
    layout. `sliding` / `moe`: this layer's kind (`layer_kind`)."""

    config: ModelConfig
    runtime: Runtime
    sliding: bool = False
    moe: bool = False

    @nn.compact
    def __call__(self, x, positions, mask, layer_cache=None, cache_start=0, runtime_state=None):
        cfg, rt = self.config, self.runtime

        def norm(name):
            return Norm(cfg.norm, cfg.rms_norm_eps, name=name)

        def feed_forward(h):
            if self.moe:
                return MoE(cfg, rt, name="moe")(h, runtime_state)
            return MLP(cfg, rt, name="mlp")(h, runtime_state)

        if cfg.residual == "post":
            h, layer_cache = Attention(cfg, rt, self.sliding, name="attn")(
                x, positions, mask, layer_cache, cache_start, runtime_state)
            x = norm("input_norm")(x + h)
            return norm("post_attn_norm")(x + feed_forward(x)), layer_cache
        normed = norm("input_norm")(x)
        h, layer_cache = Attention(cfg, rt, self.sliding, name="attn")(
            normed, positions, mask, layer_cache, cache_start, runtime_state)
        if cfg.residual == "parallel":
            mlp_in = normed if cfg.parallel_shared_norm else norm("post_attn_norm")(x)
            return x + h + feed_forward(mlp_in), layer_cache
        if cfg.residual == "sandwich":
            x = x + norm("attn_output_norm")(h)
            return x + norm("mlp_output_norm")(feed_forward(norm("post_attn_norm")(x))), layer_cache
        x = x + h
        return x + feed_forward(norm("post_attn_norm")(x)), layer_cache


def layer_kind(config: ModelConfig, layer: int) -> dict:
    """The static attributes of layer `layer`'s DecoderLayer: {"sliding": bool, "moe": bool}."""
    return {"sliding": config.is_sliding(layer), "moe": config.is_moe(layer)}


def decoder_inputs(cfg: ModelConfig, shape: tuple[int, int], positions, attention_mask, cache,
                   pair_mask=None, sliding: bool = False):
    """(cache start, key_mask (B, S), positions (B, T), mask (B, 1, T, S)) of a forward on `shape`
    = (B, T) tokens: S is T without a cache, else the cache's slots (its key_mask). pair_mask
    (B, T, T) bool, only without a cache, further restricts which key each query may attend.
    sliding: the mask of the config's sliding-window layers (else of its full-attention ones)."""
    b, t = shape
    if cache is None:
        start = jnp.zeros((), jnp.int32)
        key_mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        num_slots = t
    else:
        start = cache["length"]
        key_mask = cache["key_mask"]
        num_slots = key_mask.shape[1]
    if positions is None:
        positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
    query_slots = start + jnp.arange(t, dtype=jnp.int32)
    mask = causal_mask(query_slots, jnp.arange(num_slots, dtype=jnp.int32), key_mask,
                       cfg.sliding_window if sliding else None)
    if pair_mask is not None:
        if cache is not None:
            raise ValueError("pair_mask applies to a forward without a KV cache")
        mask = mask & pair_mask[:, None]
    return start, key_mask, positions, mask


def embed_tokens(cfg: ModelConfig, embedding, tokens, positions, pos_embedding, dtype, project_in=None):
    """(B, T, hidden) inputs of the first layer: the token rows (times sqrt(hidden) when
    embed_scale; through `project_in`, a function (..., embed_dim) -> (..., hidden), when
    embed_proj_dim), plus the learned position rows at positions + position_offset."""
    x = jnp.take(embedding, tokens, axis=0).astype(dtype)
    if cfg.embed_scale:
        x = x * jnp.asarray(math.sqrt(cfg.hidden_size), dtype)
    if project_in is not None:
        x = project_in(x)
    if pos_embedding is not None:
        x = x + jnp.take(pos_embedding, positions + cfg.position_offset, axis=0).astype(dtype)
    return x


def embed_inputs(params: dict, config: ModelConfig, tokens, positions=None, dtype=jnp.float32):
    """(B, T, hidden) inputs of layer 0 from qjax params (the decoder's steps before its first
    block: `embed_tokens` (with project_in), then `embed_norm` when declared); positions default to
    arange(T)."""
    if isinstance(config, mamba.MambaConfig):
        return jnp.take(params["embed"]["embedding"], tokens, axis=0).astype(dtype)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    pos_table = params["pos_embed"]["embedding"] if config.positional == "learned" else None
    project_in = None
    if config.embed_proj_dim:
        project_in = functools.partial(Linear(config.hidden_size, Runtime()).apply, {"params": params["project_in"]})
    x = embed_tokens(config, params["embed"]["embedding"], tokens, positions, pos_table, dtype, project_in)
    if config.embed_norm:
        x = Norm(config.norm, config.rms_norm_eps).apply({"params": params["embed_norm"]}, x)
    return x


class Decoder(nn.Module):
    """Tokens -> logits, optionally reading and writing a KV cache (see `qjax.models.kv_cache`).

    scan_layers: the layers' params arrive stacked under "layers" (`stack_layers`) and run in one
    `lax.scan` (one layer body compiled instead of num_layers); the cache's "layers" is then the
    stacked tree too (`stack_cache`). Only for configs with `uniform_layers`.
    """

    config: ModelConfig
    runtime: Runtime = Runtime()
    scan_layers: bool = False

    @nn.compact
    def __call__(self, tokens, positions=None, attention_mask=None, cache=None, runtime_state=None,
                 pair_mask=None, logits_at=None):
        cfg = self.config
        dtype = _dtype(self.runtime)
        start, key_mask, positions, mask = decoder_inputs(cfg, tokens.shape, positions, attention_mask, cache,
                                                          pair_mask)
        masks = {False: mask}
        if any(cfg.is_sliding(i) for i in range(cfg.num_layers)):
            masks[True] = decoder_inputs(cfg, tokens.shape, positions, attention_mask, cache, pair_mask,
                                         sliding=True)[3]

        embedding = self.param("embed", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.embed_dim))
        pos_embedding = None
        if cfg.positional == "learned":
            pos_embedding = self.param("pos_embed", nn.initializers.normal(0.02),
                                       (cfg.max_position_embeddings + cfg.position_offset, cfg.hidden_size))
        project_in = None
        if cfg.embed_proj_dim:
            project_in = functools.partial(Linear(cfg.hidden_size, self.runtime, name="project_in"),
                                           runtime_state=runtime_state)
        x = embed_tokens(cfg, embedding, tokens, positions, pos_embedding, dtype, project_in)
        if cfg.embed_norm:
            x = Norm(cfg.norm, cfg.rms_norm_eps, name="embed_norm")(x)
        if self.scan_layers:
            kind = layer_kind(cfg, 0)
            layer = DecoderLayer(cfg, self.runtime, **kind, parent=None)

            def body(x, inputs):
                layer_params, layer_cache = inputs
                return layer.apply({"params": layer_params}, x, positions, masks[kind["sliding"]], layer_cache,
                                   start, runtime_state)

            x, new_layers = jax.lax.scan(body, x, (self.variables["params"]["layers"],
                                                   None if cache is None else cache["layers"]))
        else:
            new_layers = []
            for i in range(cfg.num_layers):
                kind = layer_kind(cfg, i)
                layer_cache = None if cache is None else cache["layers"][i]
                x, layer_cache = DecoderLayer(cfg, self.runtime, **kind, name=f"layers_{i}")(
                    x, positions, masks[kind["sliding"]], layer_cache, start, runtime_state)
                new_layers.append(layer_cache)
        if logits_at is not None:  # only these flat (batch * T) positions reach the LM head
            x = jnp.take(x.reshape(-1, x.shape[-1]), logits_at, axis=0)
        if cfg.final_norm:
            x = Norm(cfg.norm, cfg.rms_norm_eps, name="final_norm")(x)
        if cfg.embed_proj_dim:
            x = Linear(cfg.embed_dim, self.runtime, name="project_out")(x, runtime_state)
        if cfg.tie_word_embeddings:
            logits = tied_logits(x, embedding.astype(dtype))
        else:
            logits = Linear(cfg.vocab_size, self.runtime, name="lm_head")(x, runtime_state)
        logits = logits.astype(jnp.float32)
        if cfg.final_softcap is not None:
            logits = cfg.final_softcap * jnp.tanh(logits / cfg.final_softcap)
        new_cache = None
        if cache is not None:
            new_cache = {"layers": new_layers, "length": start + tokens.shape[1], "key_mask": key_mask}
        return logits, new_cache


_TABLES = ("embed", "pos_embed")  # embedding tables: direct params of the Decoder


def linen_variables(params: dict) -> dict:
    """qjax params -> linen variables: the embedding tables are direct params of the Decoder."""
    linen = {k: v for k, v in params.items() if k not in _TABLES}
    for name in _TABLES:
        if name in params:
            linen[name] = params[name]["embedding"]
    return {"params": linen}


def stack_layers(params: dict, config: ModelConfig, runtime: Runtime = Runtime()) -> Optional[dict]:
    """params with layers_0 .. layers_{L-1} replaced by one tree "layers" whose leaves carry a
    leading (L,) axis, for a `forward` that scans over the layers; None when scanning cannot
    reproduce the unrolled forward: layers of different kinds (sliding and full, MoE and dense) or
    structure (e.g. quantized by different rules) or a runtime whose activation transforms select
    sites by their layers_i path."""
    if not config.uniform_layers or isinstance(config, mamba.MambaConfig):
        return None
    layers = [params[f"layers_{i}"] for i in range(config.num_layers)]
    first = jax.tree_util.tree_structure(layers[0])
    if runtime.activations or any(jax.tree_util.tree_structure(t) != first for t in layers[1:]):
        return None
    shapes = [[(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(t)] for t in layers]
    if any(s != shapes[0] for s in shapes[1:]):
        return None
    stacked = {k: v for k, v in params.items() if not k.startswith("layers_")}
    stacked["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    return stacked


def stack_cache(cache: dict) -> dict:
    """A cache (`kv_cache.init_cache`) with its per-layer list stacked along a leading (L,) axis,
    for a `forward` on `stack_layers` params (the batch axis of a layer leaf becomes axis 1)."""
    return {**cache, "layers": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *cache["layers"])}


@functools.partial(jax.jit, static_argnames=("config", "runtime"))
def forward(params: dict, tokens: jax.Array, config: ModelConfig, runtime: Runtime = Runtime(),
            positions: Optional[jax.Array] = None, attention_mask: Optional[jax.Array] = None,
            cache: Optional[dict] = None, runtime_state: Any = None, pair_mask: Optional[jax.Array] = None,
            logits_at: Optional[jax.Array] = None):
    """Logits (batch, T, vocab) float32 and the updated cache (None without a cache).

    tokens: (batch, T) int32. positions: (batch, T) positions for RoPE or the learned table
    (default: cache length + arange). attention_mask: (batch, T) with 0 for padding keys, used when
    there is no cache (with a cache the mask lives in `cache["key_mask"]`). pair_mask: (batch, T, T)
    bool, without a cache: query t may attend key s only where it is True (and s <= t), e.g. several
    sequences packed in one row. logits_at: int32 indices of any shape into the flattened
    (batch * T) positions; the logits are then `logits_at.shape + (vocab,)`, computed for those
    positions only. params in the stacked layout of `stack_layers` (a "layers" entry) run the
    layers in one `lax.scan`, with a `stack_cache` cache. One compilation per (shapes, config,
    runtime). A `mamba.MambaConfig` runs `mamba.forward` (same contract).
    """
    if isinstance(config, mamba.MambaConfig):
        return mamba.forward(params, tokens, config, runtime, positions, attention_mask, cache, runtime_state,
                             pair_mask, logits_at)
    decoder = Decoder(config, runtime, scan_layers="layers" in params)
    return decoder.apply(linen_variables(params), tokens, positions, attention_mask, cache, runtime_state, pair_mask,
                         logits_at)


def forward_with_intermediates(params: dict, tokens: jax.Array, config: ModelConfig,
                               runtime: Runtime = Runtime()) -> tuple[jax.Array, dict]:
    """(logits, intermediates) of a cache-free forward, intermediates being the sown values by module
    path: each linear's `input`, a MoE block's `routing` weights (B, T, E) and its experts'
    `token_mask`, e.g. intermediates["layers_0"]["moe"]["routing"][0]. Not jitted (inspection)."""
    (logits, _), state = Decoder(config, runtime).apply(linen_variables(params), tokens, mutable=["intermediates"])
    return logits, state["intermediates"]


def init_params(config: ModelConfig, key: jax.Array) -> dict:
    """Random parameters (normal, std 0.02; norms at their identity) in the qjax layout (of
    `mamba.init_params` for a MambaConfig)."""
    if isinstance(config, mamba.MambaConfig):
        return mamba.init_params(config, key)
    variables = Decoder(config).init(key, jnp.zeros((1, 2), jnp.int32))
    params = dict(variables["params"])
    for name in _TABLES:
        if name in params:
            params[name] = {"embedding": params[name]}
    return params


__all__ = ["Decoder", "DecoderLayer", "Attention", "forward", "forward_with_intermediates", "init_params", "stack_layers", "stack_cache",
           "decoder_inputs", "causal_mask", "layer_kind", "embed_inputs", "alibi_slopes", "FUSE_MIN_ROWS", "BLOCKED_MIN_QUERIES"]
