"""The leaf parts every decoder is assembled from: `Linear` (the one site where a weight is
applied), sibling linears multiplied together, norms by kind, activations by name.

Every `Linear` sows its input into the `intermediates` collection under `input` when that
collection is mutable (calibration uses this); otherwise the sow is free. A linear that sees only
some tokens (a MoE expert) also sows `token_mask` (..., ) bool: the tokens routed to it.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from qjax.formats.qarray import QArray
from qjax.ops import Runtime, linear, linear_many, runs_natively

FUSE_MIN_ROWS = 64  # on the pure-XLA path, sibling projections are concatenated from this many tokens (sibling_linears)


class Linear(nn.Module):
    """Dense layer whose weight may be a quantized array; applies the runtime's activation transform.

    Site name: the module path, e.g. layers_3/attn/q_proj (its kernel is at site + "/kernel")."""

    features: int
    runtime: Runtime
    use_bias: bool = False

    @nn.compact
    def __call__(self, x, runtime_state=None, token_mask: Optional[jax.Array] = None):
        site = "/".join(self.scope.path)
        x_in, x = x, self.runtime.activation(site, x, runtime_state)
        self.sow("intermediates", "input", x)
        if token_mask is not None:
            self.sow("intermediates", "token_mask", token_mask)
        if self.has_variable("params", "kernel"):  # may be a QArray: skip linen's shape check
            kernel = self.get_variable("params", "kernel")
        else:
            kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
        integer = self.runtime.integer_activation(site)
        if integer is not None and isinstance(kernel, QArray):  # W8A8: qjax.ops may run it in integers
            return linear(x_in, kernel, bias, integer=integer)
        return linear(x, kernel, bias)


def sibling_linears(parent: nn.Module, x, runtime_state, linears: Sequence[Linear],
                    token_mask: Optional[jax.Array] = None) -> list:
    """Outputs of `linears` (children of `parent`) that all read the same input x (..., in).

    When every kernel is a plain array, no activation transform applies to any of them and the
    `intermediates` collection is not being collected, the kernels are multiplied together: through
    `linear_many` (one native CPU call for all of them, each weight read in place) when the native
    kernels apply or x has fewer than FUSE_MIN_ROWS tokens (a decode step, where a concatenation
    would copy every weight per token); otherwise concatenated along the output dim and multiplied
    once (one wide XLA matmul runs closer to the machine's peak than several narrow ones: q/k/v of
    SmolLM2 are 576, 192 and 192 wide). Otherwise (quantized kernels, calibration) each linear runs
    on its own. Same values either way up to the float summation order; the parameter layout is
    unchanged. The linears must agree on `use_bias`. token_mask: as `Linear`'s, sown by each.
    """
    sites = ["/".join(parent.scope.path + (m.name,)) for m in linears]
    shared = (not parent.is_initializing() and not parent.is_mutable_collection("intermediates")
              and all(parent.runtime.transform_for(site) is None for site in sites))
    if shared:
        params = parent.variables["params"]
        kernels = [params[m.name]["kernel"] for m in linears]
        shared = all(isinstance(k, jax.Array) for k in kernels)  # QArrays multiply themselves
    if not shared:
        return [m(x, runtime_state, token_mask) for m in linears]
    biases = [params[m.name]["bias"] for m in linears] if linears[0].use_bias else None
    if math.prod(x.shape[:-1]) < FUSE_MIN_ROWS or runs_natively(x, kernels):
        return linear_many(x, kernels, biases)
    y = linear(x, jnp.concatenate(kernels, axis=1), None if biases is None else jnp.concatenate(biases))
    splits = list(itertools.accumulate(m.features for m in linears))[:-1]
    return jnp.split(y, splits, axis=-1)


class Norm(nn.Module):
    """Normalisation over the last axis, computed in float32, by kind (`config.NORMS`):
      rms           x / rms(x) * scale                  (param scale)
      rms_one_plus  x / rms(x) * (1 + scale)            (param scale, stored as in Gemma's checkpoints)
      layer         (x - mean) / std(x) * scale + bias  (params scale, bias; no bias when not use_bias)
    with eps added to the mean square / variance."""

    kind: str
    eps: float
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        if self.kind == "layer":
            scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
            mean = jnp.mean(x32, axis=-1, keepdims=True)
            centred = x32 - mean
            y = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
            y = y * scale.astype(jnp.float32)
            if self.use_bias:
                y = y + self.param("bias", nn.initializers.zeros, (x.shape[-1],)).astype(jnp.float32)
            return y.astype(x.dtype)
        init = nn.initializers.zeros if self.kind == "rms_one_plus" else nn.initializers.ones
        scale = self.param("scale", init, (x.shape[-1],)).astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return ((1.0 + scale if self.kind == "rms_one_plus" else scale) * y).astype(x.dtype)


class PerHeadNorm(nn.Module):
    """A bias-free LayerNorm with its own weights per head (StableLM's qk_layernorm): x (..., heads,
    head_dim); params heads_{h}/scale (head_dim,)."""

    eps: float

    @nn.compact
    def __call__(self, x):
        return jnp.stack([Norm("layer", self.eps, use_bias=False, name=f"heads_{h}")(x[..., h, :])
                          for h in range(x.shape[-2])], axis=-2)


def activation(name: str):
    """The elementwise function of `config.ACTIVATIONS` `name` (gelu: exact erf form)."""
    return {"silu": nn.silu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
            "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True), "relu": jax.nn.relu}[name]
