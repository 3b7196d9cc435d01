"""The forward's runtime spec: what happens to activations and the KV cache inside the model.

A `Runtime` is frozen and hashable, and is passed to the model as a static argument, so every distinct
spec compiles once. Anything numeric that must vary without recompiling (a perturbation intensity, a
PRNG key, static activation scales from calibration) travels separately as `runtime_state`, a pytree
of arrays handed to every transform.

Sites. The model calls `Runtime.activation(site, x, state)` on the input of every linear layer, with
site names equal to the weight's parameter path without `/kernel`, e.g. `layers_3/attn/q_proj`,
`layers_3/mlp/down_proj`. Transforms are selected by regex (`re.fullmatch`) on the site; the first
matching rule wins; sites that match no rule are left untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Optional, Protocol

import jax


class ActivationTransform(Protocol):
    """A hashable callable applied to a linear layer's input: (..., in_features) -> same shape."""

    def __call__(self, x: jax.Array, *, site: str, state: Any) -> jax.Array:
        ...


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Static forward spec.

    Attributes:
      activations: ordered (regex over site names, transform) rules; the first match wins.
      kv_cache: a KV-cache spec object (see `qjax.models.kv_cache`); None stores the cache in the
        compute dtype.
      compute_dtype: "float32" or "bfloat16"; weights are cast to it at each matmul, logits are f32.
    """

    activations: tuple[tuple[str, ActivationTransform], ...] = ()
    kv_cache: Any = None
    compute_dtype: str = "float32"

    def __post_init__(self):
        for pattern, _ in self.activations:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"activation rule regex {pattern!r} does not compile: {e}") from e
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")

    def transform_for(self, site: str) -> Optional[ActivationTransform]:
        return _first_match(self.activations, site)

    def integer_activation(self, site: str):
        """The site's transform in integer form (`qjax.ops.act_quant.IntegerActivation`: symmetric
        per-token dynamic quantization a kernel can run as int8 x int8), or None."""
        return getattr(self.transform_for(site), "integer_form", None)

    def activation(self, site: str, x: jax.Array, state: Any) -> jax.Array:
        transform = self.transform_for(site)
        return x if transform is None else transform(x, site=site, state=state)


@functools.lru_cache(maxsize=None)
def _first_match(rules, site):
    for pattern, transform in rules:
        if re.fullmatch(pattern, site):
            return transform
    return None
