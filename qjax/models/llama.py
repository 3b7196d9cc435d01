"""Llama-family decoder (Llama, Mistral, SmolLM2, Qwen2) in Flax linen.

Parameter pytree (a plain nested dict; weights are Dense kernels, shape (in, out)):
  embed/embedding                       (vocab, hidden)
  layers_{i}/input_norm/scale           (hidden,)
  layers_{i}/attn/{q,k,v}_proj/kernel   (hidden, heads * head_dim) / (hidden, kv_heads * head_dim)
  layers_{i}/attn/{q,k,v}_proj/bias     (Qwen2 only)
  layers_{i}/attn/o_proj/kernel         (heads * head_dim, hidden)
  layers_{i}/post_attn_norm/scale       (hidden,)
  layers_{i}/mlp/{gate,up}_proj/kernel  (hidden, intermediate)
  layers_{i}/mlp/down_proj/kernel       (intermediate, hidden)
  final_norm/scale                      (hidden,)
  lm_head/kernel                        (hidden, vocab)   absent when embeddings are tied
Any kernel may be replaced by a quantized array (anything with `matmul`); see `qjax.ops.linear`.

Every linear layer sows its input into the `intermediates` collection under `input` when that
collection is mutable (calibration uses this); otherwise the sow is free.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from qjax.models import kv_cache as kv_cache_lib
from qjax.ops.attention import blocked_attention, causal_attention, grouped_attention
from qjax.models.config import ModelConfig
from qjax.models.rope import apply_rope, inverse_frequencies
from qjax.ops import Runtime, linear, linear_many, runs_natively, tied_logits

BLOCKED_MIN_QUERIES = 64  # cached forwards of at least this many tokens use blocked_attention
FUSE_MIN_ROWS = 64  # on the pure-XLA path, sibling projections are concatenated from this many tokens (sibling_linears)


def _dtype(runtime: Runtime):
    return jnp.bfloat16 if runtime.compute_dtype == "bfloat16" else jnp.float32


class Linear(nn.Module):
    """Dense layer whose weight may be a quantized array; applies the runtime's activation transform."""

    features: int
    runtime: Runtime
    use_bias: bool = False

    @nn.compact
    def __call__(self, x, runtime_state=None):
        site = "/".join(self.scope.path)
        x = self.runtime.activation(site, x, runtime_state)
        self.sow("intermediates", "input", x)
        if self.has_variable("params", "kernel"):  # may be a QArray: skip linen's shape check
            kernel = self.get_variable("params", "kernel")
        else:
            kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
        return linear(x, kernel, bias)


def sibling_linears(parent: nn.Module, x, runtime_state, linears: Sequence[Linear]) -> list:
    """Outputs of `linears` (children of `parent`) that all read the same input x (..., in).

    When every kernel is a plain array, no activation transform applies to any of them and the
    `intermediates` collection is not being collected, the kernels are multiplied together: through
    `linear_many` (one native CPU call for all of them, each weight read in place) when the native
    kernels apply or x has fewer than FUSE_MIN_ROWS tokens (a decode step, where a concatenation
    would copy every weight per token); otherwise concatenated along the output dim and multiplied
    once (one wide XLA matmul runs closer to the machine's peak than several narrow ones: q/k/v of
    SmolLM2 are 576, 192 and 192 wide). Otherwise (quantized kernels, calibration) each linear runs
    on its own. Same values either way up to the float summation order; the parameter layout is
    unchanged.
    """
    sites = ["/".join(parent.scope.path + (m.name,)) for m in linears]
    shared = (not parent.is_initializing() and not parent.is_mutable_collection("intermediates")
              and all(parent.runtime.transform_for(site) is None for site in sites))
    if shared:
        params = parent.variables["params"]
        kernels = [params[m.name]["kernel"] for m in linears]
        shared = all(isinstance(k, jax.Array) for k in kernels)  # QArrays multiply themselves
    if not shared:
        return [m(x, runtime_state) for m in linears]
    biases = [params[m.name]["bias"] for m in linears] if linears[0].use_bias else None
    if math.prod(x.shape[:-1]) < FUSE_MIN_ROWS or runs_natively(x, kernels):
        return linear_many(x, kernels, biases)
    y = linear(x, jnp.concatenate(kernels, axis=1), None if biases is None else jnp.concatenate(biases))
    splits = list(itertools.accumulate(m.features for m in linears))[:-1]
    return jnp.split(y, splits, axis=-1)


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (scale.astype(jnp.float32) * x32).astype(x.dtype)


def causal_mask(query_slots, key_slots, key_mask, sliding_window: Optional[int]):
    """Boolean (batch, 1, T, S) mask: causal over cache slots, padding keys removed.

    query_slots: (T,) slot index of each query; key_slots: (S,); key_mask: (batch, S) bool.
    """
    allowed = key_slots[None, :] <= query_slots[:, None]
    if sliding_window is not None:
        allowed &= key_slots[None, :] > query_slots[:, None] - sliding_window
    return allowed[None, None, :, :] & key_mask[:, None, None, :]


class Attention(nn.Module):
    config: ModelConfig
    runtime: Runtime

    @nn.compact
    def __call__(self, x, positions, mask, layer_cache, cache_start, runtime_state):
        cfg, rt = self.config, self.runtime
        b, t, _ = x.shape
        bias = cfg.attention_bias
        q, k, v = sibling_linears(self, x, runtime_state, [
            Linear(cfg.q_size, rt, bias, name="q_proj"), Linear(cfg.kv_size, rt, bias, name="k_proj"),
            Linear(cfg.kv_size, rt, bias, name="v_proj")])
        q = q.reshape(b, t, cfg.num_heads, cfg.head_dim)
        k = k.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = v.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        inv_freq = inverse_frequencies(cfg)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        if layer_cache is not None:
            spec = kv_cache_lib.resolve_spec(rt.kv_cache)
            layer_cache = spec.write_layer(layer_cache, k, v, cache_start)
            k, v = spec.read_layer(layer_cache, x.dtype)
            if t >= BLOCKED_MIN_QUERIES:  # a prefill chunk: only the slots written so far
                out = blocked_attention(q, k, v, mask, num_keys=cache_start + t)
            else:
                out = grouped_attention(q, k, v, mask)
        else:
            out = causal_attention(q, k, v, mask)
        out = Linear(cfg.hidden_size, rt, name="o_proj")(out.reshape(b, t, cfg.q_size), runtime_state)
        return out, layer_cache


class MLP(nn.Module):
    config: ModelConfig
    runtime: Runtime

    @nn.compact
    def __call__(self, x, runtime_state):
        cfg, rt = self.config, self.runtime
        gate, up = sibling_linears(self, x, runtime_state, [
            Linear(cfg.intermediate_size, rt, name="gate_proj"), Linear(cfg.intermediate_size, rt, name="up_proj")])
        return Linear(cfg.hidden_size, rt, name="down_proj")(nn.silu(gate) * up, runtime_state)


class DecoderLayer(nn.Module):
    config: ModelConfig
    runtime: Runtime

    @nn.compact
    def __call__(self, x, positions, mask, layer_cache=None, cache_start=0, runtime_state=None):
        cfg = self.config
        h, layer_cache = Attention(cfg, self.runtime, name="attn")(
            RMSNorm(cfg.rms_norm_eps, name="input_norm")(x), positions, mask, layer_cache,
            cache_start, runtime_state)
        x = x + h
        x = x + MLP(cfg, self.runtime, name="mlp")(
            RMSNorm(cfg.rms_norm_eps, name="post_attn_norm")(x), runtime_state)
        return x, layer_cache


def decoder_inputs(cfg: ModelConfig, shape: tuple[int, int], positions, attention_mask, cache,
                   pair_mask=None):
    """(cache start, key_mask (B, S), positions (B, T), mask (B, 1, T, S)) of a forward on `shape`
    = (B, T) tokens: S is T without a cache, else the cache's slots (its key_mask). pair_mask
    (B, T, T) bool, only without a cache, further restricts which key each query may attend."""
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
    mask = causal_mask(query_slots, jnp.arange(num_slots, dtype=jnp.int32), key_mask, cfg.sliding_window)
    if pair_mask is not None:
        if cache is not None:
            raise ValueError("pair_mask applies to a forward without a KV cache")
        mask = mask & pair_mask[:, None]
    return start, key_mask, positions, mask


class Decoder(nn.Module):
    """Tokens -> logits, optionally reading and writing a KV cache (see `qjax.models.kv_cache`).

    scan_layers: the layers' params arrive stacked under "layers" (`stack_layers`) and run in one
    `lax.scan` (one layer body compiled instead of num_layers); the cache's "layers" is then the
    stacked tree too (`stack_cache`).
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

        embedding = self.param("embed", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.hidden_size))
        x = jnp.take(embedding, tokens, axis=0).astype(dtype)
        if self.scan_layers:
            layer = DecoderLayer(cfg, self.runtime, parent=None)

            def body(x, inputs):
                layer_params, layer_cache = inputs
                return layer.apply({"params": layer_params}, x, positions, mask, layer_cache, start,
                                   runtime_state)

            x, new_layers = jax.lax.scan(body, x, (self.variables["params"]["layers"],
                                                   None if cache is None else cache["layers"]))
        else:
            new_layers = []
            for i in range(cfg.num_layers):
                layer_cache = None if cache is None else cache["layers"][i]
                x, layer_cache = DecoderLayer(cfg, self.runtime, name=f"layers_{i}")(
                    x, positions, mask, layer_cache, start, runtime_state)
                new_layers.append(layer_cache)
        if logits_at is not None:  # only these flat (batch * T) positions reach the LM head
            x = jnp.take(x.reshape(-1, x.shape[-1]), logits_at, axis=0)
        x = RMSNorm(cfg.rms_norm_eps, name="final_norm")(x)
        if cfg.tie_word_embeddings:
            logits = tied_logits(x, embedding.astype(dtype))
        else:
            logits = Linear(cfg.vocab_size, self.runtime, name="lm_head")(x, runtime_state)
        new_cache = None
        if cache is not None:
            new_cache = {"layers": new_layers, "length": start + tokens.shape[1], "key_mask": key_mask}
        return logits.astype(jnp.float32), new_cache



def linen_variables(params: dict) -> dict:
    """qjax params -> the variables of `Decoder.apply` ({"params": ...}; the embedding is a direct param of
    the Decoder), for callers that apply the module themselves (e.g. to read sown intermediates)."""
    linen = {k: v for k, v in params.items() if k != "embed"}
    linen["embed"] = params["embed"]["embedding"]
    return {"params": linen}


def stack_layers(params: dict, config: ModelConfig, runtime: Runtime = Runtime()) -> Optional[dict]:
    """params with layers_0 .. layers_{L-1} replaced by one tree "layers" whose leaves carry a
    leading (L,) axis, for a `forward` that scans over the layers; None when scanning cannot
    reproduce the unrolled forward: layers of different structure (e.g. quantized by different
    rules) or a runtime whose activation transforms select sites by their layers_i path."""
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

    tokens: (batch, T) int32. positions: (batch, T) RoPE positions (default: cache length + arange).
    attention_mask: (batch, T) with 0 for padding keys, used when there is no cache (with a cache the
    mask lives in `cache["key_mask"]`). pair_mask: (batch, T, T) bool, without a cache: query t may
    attend key s only where it is True (and s <= t), e.g. several sequences packed in one row.
    logits_at: int32 indices of any shape into the flattened (batch * T) positions; the logits are
    then `logits_at.shape + (vocab,)`, computed for those positions only. params in the stacked
    layout of `stack_layers` (a "layers" entry) run the layers in one `lax.scan`, with a
    `stack_cache` cache. One compilation per (shapes, config, runtime).
    """
    decoder = Decoder(config, runtime, scan_layers="layers" in params)
    return decoder.apply(linen_variables(params), tokens, positions, attention_mask, cache, runtime_state, pair_mask,
                         logits_at)


def init_params(config: ModelConfig, key: jax.Array) -> dict:
    """Random parameters (normal, std 0.02; norms at 1) in the qjax layout."""
    variables = Decoder(config).init(key, jnp.zeros((1, 2), jnp.int32))
    params = dict(variables["params"])
    params["embed"] = {"embedding": params["embed"]}
    return params
