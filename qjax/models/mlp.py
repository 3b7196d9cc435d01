"""Feed-forward parts: the dense MLP (gated or plain, fused or not) and the sparse MoE block.

Parameter layout (kernels (in, out)):
  mlp/{gate,up}_proj/kernel (hidden, f), mlp/down_proj/kernel (f, hidden)    gated
  mlp/gate_up_proj/kernel (hidden, 2 f): [gate | up] columns                 gated, fused (Phi-3)
  mlp/{up,down}_proj/{kernel,bias}                                           plain (act(up) -> down)
  mlp/act_scale (f,)   plain, optional: act(up(x)) / act_scale feeds down (absent in checkpoints;
                       AWQ adds it where no op before down_proj can absorb its scales)
  moe/router/kernel (hidden, E)                                              MoE router (no bias)
  moe/experts_{e}/{gate,up,down}_proj/kernel                                 expert e, a gated MLP
  moe/shared_expert/{gate,up,down}_proj/kernel, moe/shared_expert_gate/kernel (hidden, 1)
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from qjax.models.config import ModelConfig
from qjax.models.layers import Linear, activation, sibling_linears
from qjax.ops import Runtime


class MLP(nn.Module):
    """config.mlp / activation / fused_gate_up / mlp_bias decide the form; width f (default
    intermediate_size). token_mask: the tokens this MLP serves (a MoE expert), sown by its linears."""

    config: ModelConfig
    runtime: Runtime
    width: Optional[int] = None

    @nn.compact
    def __call__(self, x, runtime_state, token_mask: Optional[jax.Array] = None):
        cfg, rt = self.config, self.runtime
        f = self.width or cfg.intermediate_size
        act = activation(cfg.activation)
        bias = cfg.mlp_bias
        if cfg.mlp == "plain":
            h = act(Linear(f, rt, bias, name="up_proj")(x, runtime_state, token_mask))
            if self.has_variable("params", "act_scale"):  # AWQ's scaled activation
                h = h / self.get_variable("params", "act_scale").astype(h.dtype)
        elif cfg.fused_gate_up:
            gate, up = jnp.split(Linear(2 * f, rt, bias, name="gate_up_proj")(x, runtime_state, token_mask), 2,
                                 axis=-1)
            h = act(gate) * up
        else:
            gate, up = sibling_linears(self, x, runtime_state, [
                Linear(f, rt, bias, name="gate_proj"), Linear(f, rt, bias, name="up_proj")], token_mask)
            h = act(gate) * up
        return Linear(cfg.hidden_size, rt, bias, name="down_proj")(h, runtime_state, token_mask)


def route(router_logits: jax.Array, top_k: int, normalise: bool) -> jax.Array:
    """(..., E) dense routing weights from router logits (..., E): softmax (float32) over every
    expert, the top_k kept (renormalised to sum 1 when `normalise`), the others 0."""
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
    top_values, top_index = jax.lax.top_k(probs, top_k)
    if normalise:
        top_values = top_values / jnp.sum(top_values, axis=-1, keepdims=True)
    one_hot = jax.nn.one_hot(top_index, probs.shape[-1], dtype=jnp.float32)  # (..., k, E)
    return jnp.einsum("...k,...ke->...e", top_values, one_hot)


class MoE(nn.Module):
    """Sparse mixture of gated experts (config docstring for the routing).

    Every expert runs on every token and its output is weighted by the token's routing weight (0
    for the experts not chosen), so each expert's linears are plain `linear` sites that quantization
    rules address one by one; each expert sows which tokens were routed to it (calibration takes
    its statistics over those tokens only). The routing weights are sown as `routing` (..., E).
    """

    config: ModelConfig
    runtime: Runtime

    @nn.compact
    def __call__(self, x, runtime_state):
        cfg, rt = self.config, self.runtime
        logits = Linear(cfg.num_experts, rt, name="router")(x, runtime_state)
        weights = route(logits, cfg.num_experts_per_tok, cfg.norm_topk_prob)
        self.sow("intermediates", "routing", weights)
        out = jnp.zeros(x.shape, jnp.float32)
        for e in range(cfg.num_experts):
            w_e = weights[..., e]
            y = MLP(cfg, rt, cfg.moe_intermediate_size, name=f"experts_{e}")(x, runtime_state, w_e > 0)
            out = out + y.astype(jnp.float32) * w_e[..., None]
        if cfg.shared_expert_size:
            shared = MLP(cfg, rt, cfg.shared_expert_size, name="shared_expert")(x, runtime_state)
            gate = Linear(1, rt, name="shared_expert_gate")(x, runtime_state)
            out = out + jax.nn.sigmoid(gate.astype(jnp.float32)) * shared.astype(jnp.float32)
        return out.astype(x.dtype)
