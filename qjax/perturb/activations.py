"""Perturbations and fake quantization of linear-layer inputs, as `Runtime.activations` transforms.

A transform is a frozen, hashable dataclass holding only the kind and static options; the traced
numbers come through `runtime_state`:

    runtime_state = {"perturb": {"intensity": f32[], "key": PRNG key}}     (see `perturb_state`)

Each site (a linear layer's weight path without `/kernel`, e.g. `layers_3/mlp/down_proj`) draws
independent noise: the state's key is folded with `site_id(site)`, a stable 31-bit hash of the site
string (blake2b, not Python's per-process randomized `hash`), so results are reproducible across
runs and processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp

from qjax.models.config import ModelConfig
from qjax.ops import act_quant
from qjax.ops.runtime import Runtime
from qjax.perturb.kinds import Kind

STATE_KEY = "perturb"


def site_id(site: str) -> int:
    """Stable 31-bit integer id of a site name (identical in every process)."""
    digest = hashlib.blake2b(site.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def linear_sites(config: ModelConfig) -> list[str]:
    """Every linear-layer site of a model, in forward order (lm_head only when untied)."""
    names = [f"layers_{i}/{block}/{proj}" for i in range(config.num_layers)
             for block, projs in (("attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                  ("mlp", ("gate_proj", "up_proj", "down_proj")))
             for proj in projs]
    return names + ([] if config.tie_word_embeddings else ["lm_head"])


def matching_sites(pattern: str, config: ModelConfig) -> list[str]:
    """Sites whose name fully matches `pattern`; ValueError if there is none."""
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"activation pattern {pattern!r} does not compile: {e}") from e
    sites = [s for s in linear_sites(config) if regex.fullmatch(s)]
    if not sites:
        raise ValueError(f"activation pattern {pattern!r} matches no linear site of this model "
                         f"(sites look like {linear_sites(config)[0]!r})")
    return sites


@dataclasses.dataclass(frozen=True)
class PerturbActivation:
    """Runtime transform x -> kind(x, intensity, fold_in(key, site_id(site))).

    Reads `state[state_key]["intensity"]` (f32 scalar; the kind's amount, e.g. Clip's share) and
    `state[state_key]["key"]`. Use a kind with granularity "row" to normalise per token.
    """

    kind: Kind
    state_key: str = STATE_KEY

    def __call__(self, x: jax.Array, *, site: str, state: Any) -> jax.Array:
        if not isinstance(state, dict) or self.state_key not in state:
            raise ValueError(f"PerturbActivation at {site}: runtime_state needs a {self.state_key!r} "
                             "entry {'intensity': f32[], 'key': key} (see qjax.perturb.perturb_state)")
        s = state[self.state_key]
        return self.kind(x, s["intensity"], jax.random.fold_in(s["key"], site_id(site)))


@dataclasses.dataclass(frozen=True)
class FakeQuantActivation:
    """Runtime transform: per-token symmetric b-bit fake quantization of x (..., d), optionally companded
    (`qjax.ops.act_quant.fake_quant` with granularity "token" and `power`; p = 1/3 is the seed study's
    cube-root compander). Bits 2..16. Static: no runtime_state needed.
    """

    bits: int = 8
    power: float = 1.0

    def __post_init__(self):
        if not 2 <= self.bits <= 16:
            raise ValueError(f"FakeQuantActivation: bits must be in [2, 16], got {self.bits}")
        if not 0.0 < self.power <= 1.0:
            raise ValueError(f"FakeQuantActivation: power must be in (0, 1], got {self.power}")

    @property
    def name(self) -> str:
        return f"a{self.bits}" + ("" if self.power == 1.0 else f"-pow{self.power:.3g}")

    def __call__(self, x: jax.Array, *, site: str = "", state: Any = None) -> jax.Array:
        del site, state
        return act_quant.fake_quant(jnp.asarray(x), self.bits, True, "token", power=self.power)


def perturb_state(intensity: Any, key: jax.Array, base_state: Optional[dict] = None,
                  state_key: str = STATE_KEY) -> dict:
    """runtime_state carrying a perturbation's (traced) intensity and key, merged into `base_state`."""
    state = dict(base_state or {})
    state[state_key] = {"intensity": jnp.asarray(intensity, jnp.float32), "key": key}
    return state


def with_activation_rule(base: Runtime, pattern: str, transform: Any, config: ModelConfig) -> Runtime:
    """`base` with (pattern, transform) placed first among its activation rules.

    The pattern is checked against the model's sites: ValueError if it matches none.
    """
    matching_sites(pattern, config)
    return dataclasses.replace(base, activations=((pattern, transform),) + tuple(base.activations))


def perturb_runtime(kind: Kind, config: ModelConfig, pattern: str = ".*", base: Runtime = Runtime(),
                    state_key: str = STATE_KEY) -> Runtime:
    """A Runtime that perturbs the inputs of every linear site matching `pattern` with `kind`."""
    return with_activation_rule(base, pattern, PerturbActivation(kind, state_key), config)
