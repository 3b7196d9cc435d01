"""Mamba (Gu & Dao, 2023): a selective state-space language model, no attention.

Block i: x += out_proj(ssm(conv(in_proj(norm(x))_x)) * silu(in_proj(norm(x))_gate)), where
  conv    a causal depthwise convolution of width conv_kernel over time, then silu;
  ssm     per channel c and state n: h_t = exp(dt_t,c A_c,n) h_{t-1} + dt_t,c B_t,n u_t,c,
          y_t,c = sum_n h_t,c,n C_t,n + D_c u_t,c, with (dt_raw, B, C) = x_proj(u_t),
          dt = softplus(dt_proj(dt_raw)) and A = -exp(A_log).
Prefill runs the recurrence as one `lax.scan` over time (`selective_scan`); decoding feeds one token
at a time through the same step (`ssm_step`) from the cached state.

Parameter pytree (kernels (in, out)):
  embed/embedding (vocab, hidden); final_norm/scale (hidden,); lm_head/kernel (absent when tied)
  layers_{i}/input_norm/scale (hidden,)
  layers_{i}/mixer/in_proj/kernel (hidden, 2 inner)   [x | gate] columns (+bias when use_bias)
  layers_{i}/mixer/conv1d/kernel (conv_kernel, inner), conv1d/bias (inner,)
  layers_{i}/mixer/x_proj/kernel (inner, dt_rank + 2 state)   [dt | B | C] columns
  layers_{i}/mixer/dt_proj/kernel (dt_rank, inner), dt_proj/bias (inner,)
  layers_{i}/mixer/A_log (inner, state), layers_{i}/mixer/D (inner,)
  layers_{i}/mixer/out_proj/kernel (inner, hidden)
Every projection is a `layers.Linear` site (layers_3/mixer/x_proj); the conv kernel may be a
quantized array too (it is dequantized before the convolution).

Cache (`init_state`): {"layers": [{"conv": (B, conv_kernel - 1, inner), "ssm": (B, inner, state)
float32}] * L, "length": int32, "key_mask": (B, max_len) bool}; padding slots (key_mask False) feed
zeros into the convolution and the state (left padding leaves the state at 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from qjax.models.layers import Linear, Norm
from qjax.ops import Runtime, tied_logits


@dataclasses.dataclass(frozen=True)
class MambaConfig:
    """Hyper-parameters of a Mamba model (transformers' MambaConfig names in brackets). Frozen,
    hashable: a static argument of jitted functions."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int  # inner = expand * hidden
    num_layers: int
    state_size: int
    conv_kernel: int = 4
    dt_rank: int = 1  # [time_step_rank]
    rms_norm_eps: float = 1e-5  # [layer_norm_epsilon]
    use_bias: bool = False
    use_conv_bias: bool = True
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 1 << 20  # no positional limit; generation checks against it
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    architecture: str = "mamba"
    sliding_window: Optional[int] = None  # the decoder's interface: no attention at all

    def is_sliding(self, layer: int) -> bool:
        return False

    def is_moe(self, layer: int) -> bool:
        return False

    @property
    def uniform_layers(self) -> bool:
        return True

    @property
    def recurrent(self) -> bool:
        """True: one state carries everything before a token, so a row cannot hold several
        sequences (packing), and padding may only lead a row that starts from an empty state."""
        return True


def _dtype(runtime: Runtime):
    return jnp.bfloat16 if runtime.compute_dtype == "bfloat16" else jnp.float32


def ssm_step(state, u, dt, b, c, a):
    """One recurrence step. state (B, inner, N) float32; u, dt (B, inner); b, c (B, N); a (inner, N)
    (= -exp(A_log)). Returns (new state, y (B, inner)) without the D skip."""
    state = jnp.exp(dt[..., None] * a) * state + (dt * u)[..., None] * b[:, None, :]
    return state, jnp.einsum("bin,bn->bi", state, c)


def selective_scan(state, u, dt, b, c, a):
    """`ssm_step` over time: u, dt (B, T, inner); b, c (B, T, N). Returns (final state, y (B, T, inner))."""
    def step(s, inputs):
        return ssm_step(s, *inputs, a)

    state, ys = jax.lax.scan(step, state, (u.swapaxes(0, 1), dt.swapaxes(0, 1), b.swapaxes(0, 1),
                                           c.swapaxes(0, 1)))
    return state, ys.swapaxes(0, 1)


class CausalConv1d(nn.Module):
    """Depthwise causal convolution over time: out_t = sum_j kernel[j] * window[t + j] (+ bias), for
    window (B, k - 1 + T, C) = the k - 1 inputs before the chunk, then its T inputs. The kernel
    (k, C) may be a quantized array (dequantized here)."""

    kernel_size: int
    use_bias: bool

    @nn.compact
    def __call__(self, window):
        k, c = self.kernel_size, window.shape[-1]
        if self.has_variable("params", "kernel"):
            w = self.get_variable("params", "kernel")
            w = w.dequantize() if hasattr(w, "dequantize") and not isinstance(w, jax.Array) else w
        else:
            w = self.param("kernel", nn.initializers.normal(0.1), (k, c))
        w = w.astype(jnp.float32)
        t = window.shape[1] - (k - 1)
        out = sum(window[:, j:j + t].astype(jnp.float32) * w[j] for j in range(k))
        if self.use_bias:
            out = out + self.param("bias", nn.initializers.zeros, (c,)).astype(jnp.float32)
        return out


class MambaMixer(nn.Module):
    config: MambaConfig
    runtime: Runtime

    @nn.compact
    def __call__(self, x, valid, layer_cache, runtime_state):
        """x (B, T, hidden); valid (B, T) bool (False: padding); layer_cache None or the layer's
        {"conv", "ssm"}. Returns (out (B, T, hidden), new layer cache or None)."""
        cfg, rt = self.config, self.runtime
        inner, n, k = cfg.intermediate_size, cfg.state_size, cfg.conv_kernel
        b, t, _ = x.shape
        u, gate = jnp.split(Linear(2 * inner, rt, cfg.use_bias, name="in_proj")(x, runtime_state), 2, axis=-1)
        keep = valid[..., None].astype(u.dtype)
        u = u * keep
        past = (jnp.zeros((b, k - 1, inner), u.dtype) if layer_cache is None
                else layer_cache["conv"].astype(u.dtype))
        window = jnp.concatenate([past, u], axis=1)  # (B, k - 1 + T, inner)
        conv = CausalConv1d(k, cfg.use_conv_bias, name="conv1d")(window)
        u = (nn.silu(conv) * keep).astype(x.dtype)
        params = Linear(cfg.dt_rank + 2 * n, rt, name="x_proj")(u, runtime_state)
        dt_raw, bmat, cmat = jnp.split(params, [cfg.dt_rank, cfg.dt_rank + n], axis=-1)
        dt = jax.nn.softplus(Linear(inner, rt, True, name="dt_proj")(dt_raw, runtime_state).astype(jnp.float32))
        a = -jnp.exp(self.param("A_log", nn.initializers.zeros, (inner, n)).astype(jnp.float32))
        state = (jnp.zeros((b, inner, n), jnp.float32) if layer_cache is None else layer_cache["ssm"])
        u32 = u.astype(jnp.float32)
        if t == 1:  # decoding: the recurrent step itself
            state, y = ssm_step(state, u32[:, 0], dt[:, 0], bmat[:, 0].astype(jnp.float32),
                                cmat[:, 0].astype(jnp.float32), a)
            y = y[:, None]
        else:
            state, y = selective_scan(state, u32, dt, bmat.astype(jnp.float32), cmat.astype(jnp.float32), a)
        y = y + u32 * self.param("D", nn.initializers.ones, (inner,)).astype(jnp.float32)
        y = (y * nn.silu(gate.astype(jnp.float32))).astype(x.dtype)
        out = Linear(cfg.hidden_size, rt, cfg.use_bias, name="out_proj")(y, runtime_state)
        new_cache = None
        if layer_cache is not None:
            new_cache = {"conv": window[:, t:].astype(layer_cache["conv"].dtype), "ssm": state}
        return out, new_cache


class MambaBlock(nn.Module):
    """x + mixer(norm(x)); the call signature of `decoder.DecoderLayer` (positions unused; `mask`'s
    diagonal gives the valid tokens)."""

    config: MambaConfig
    runtime: Runtime

    @nn.compact
    def __call__(self, x, valid, layer_cache=None, runtime_state=None):
        h = Norm("rms", self.config.rms_norm_eps, name="input_norm")(x)
        out, layer_cache = MambaMixer(self.config, self.runtime, name="mixer")(h, valid, layer_cache, runtime_state)
        return x + out, layer_cache


class Mamba(nn.Module):
    config: MambaConfig
    runtime: Runtime = Runtime()

    @nn.compact
    def __call__(self, tokens, attention_mask=None, cache=None, runtime_state=None, logits_at=None):
        cfg = self.config
        b, t = tokens.shape
        if cache is None:
            valid = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        else:
            valid = jax.lax.dynamic_slice_in_dim(cache["key_mask"], cache["length"], t, axis=1)
        embedding = self.param("embed", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.hidden_size))
        x = jnp.take(embedding, tokens, axis=0).astype(_dtype(self.runtime))
        new_layers = []
        for i in range(cfg.num_layers):
            layer_cache = None if cache is None else cache["layers"][i]
            x, layer_cache = MambaBlock(cfg, self.runtime, name=f"layers_{i}")(x, valid, layer_cache, runtime_state)
            new_layers.append(layer_cache)
        if logits_at is not None:
            x = jnp.take(x.reshape(-1, x.shape[-1]), logits_at, axis=0)
        x = Norm("rms", cfg.rms_norm_eps, name="final_norm")(x)
        if cfg.tie_word_embeddings:
            logits = tied_logits(x, embedding.astype(x.dtype))
        else:
            logits = Linear(cfg.vocab_size, self.runtime, name="lm_head")(x, runtime_state)
        new_cache = None
        if cache is not None:
            new_cache = {"layers": new_layers, "length": cache["length"] + t, "key_mask": cache["key_mask"]}
        return logits.astype(jnp.float32), new_cache


def forward(params: dict, tokens: jax.Array, config: MambaConfig, runtime: Runtime = Runtime(),
            positions: Optional[jax.Array] = None, attention_mask: Optional[jax.Array] = None,
            cache: Optional[dict] = None, runtime_state: Any = None, pair_mask: Optional[jax.Array] = None,
            logits_at: Optional[jax.Array] = None):
    """`qjax.models.decoder.forward`'s contract for Mamba (positions are not used: order is the
    position); pair_mask (packed sequences) has no meaning for a recurrent model."""
    if pair_mask is not None:
        raise ValueError("Mamba cannot score packed sequences (pair_mask): its state runs through the whole row")
    if runtime.kv_cache is not None:
        raise ValueError("Mamba has no KV cache to quantize (its recurrent state is float32)")
    variables = {"params": {**{k: v for k, v in params.items() if k != "embed"}, "embed": params["embed"]["embedding"]}}
    return Mamba(config, runtime).apply(variables, tokens, attention_mask, cache, runtime_state, logits_at)


def init_params(config: MambaConfig, key: jax.Array) -> dict:
    """Random parameters in the qjax layout (module docstring)."""
    variables = Mamba(config).init(key, jnp.zeros((1, 2), jnp.int32))
    params = dict(variables["params"])
    params["embed"] = {"embedding": params["embed"]}
    return params


def init_state(config: MambaConfig, batch: int, max_len: int, *, dtype=jnp.float32,
               key_mask: Optional[jax.Array] = None) -> dict:
    """An empty recurrent cache (module docstring) for `batch` rows of up to `max_len` tokens."""
    layers = [{"conv": jnp.zeros((batch, config.conv_kernel - 1, config.intermediate_size), dtype),
               "ssm": jnp.zeros((batch, config.intermediate_size, config.state_size), jnp.float32)}
              for _ in range(config.num_layers)]
    if key_mask is None:
        key_mask = jnp.ones((batch, max_len), bool)
    return {"layers": layers, "length": jnp.zeros((), jnp.int32), "key_mask": key_mask}
