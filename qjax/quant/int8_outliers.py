"""LLM.int8()-style outlier-aware int8 linears (Dettmers et al., 2022), with static outlier channels.

For a kernel W (in, out) the input channels whose calibration activations reach |x| >= threshold
(6.0, the paper's) anywhere are outlier channels O. The layer computes
    y = x[..., O] @ W[O, :]                      (fp16 weight rows, in x's dtype)
      + int8 part: x with the O channels zeroed, times W with the O rows zeroed, quantized to 8 bits
        per output channel (the core's symmetric 8-bit grid: scale = 2 absmax / 255 over the
        non-outlier rows, signed codes in [-128, 127])
With `quantize_activations` (LLM.int8's vector-wise scheme) the int8 part is an integer matmul:
the non-outlier activations are quantized per token, x_q = round(x / s_x) with s_x = absmax / 127,
and y_int8 = s_x * s_w * (x_q @ c) with int32 accumulation; otherwise x is multiplied by the
dequantized int8 weights (weight-only). O is fixed at calibration (LLM.int8 picks it per batch at run
time); `Int8OutlierWeight.nbytes` counts the int8 QArray, the outlier rows' indices and fp16 rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from qjax.quant.calibration import copy_tree, site_node
from qjax.formats.qarray import QArray
from qjax.quant.registry import Method, register
from qjax.quant.rtn import check_weight, quantize_rtn
from qjax.formats.spec import WeightQuantSpec

INT8_SPEC = WeightQuantSpec(bits=8, group_size=None, symmetric=True)


@dataclasses.dataclass(frozen=True)
class Int8Config:
    """threshold: activation magnitude marking an outlier input channel (6.0);
    quantize_activations: int8 per-token activations in the int8 part (LLM.int8) or weight-only."""

    threshold: float = 6.0
    quantize_activations: bool = True

    def __post_init__(self):
        if not float(self.threshold) > 0:
            raise ValueError(f"Int8Config: threshold must be > 0, got {self.threshold!r}")


@struct.dataclass
class Int8OutlierWeight:
    """A kernel (in, out) as an int8 part and fp16 outlier input rows (module docstring).

    int8: QArray (8-bit symmetric per output channel) of W with the outlier rows zeroed.
    rows: (k,) int32 sorted outlier input channels; weight: (k, out) float16 W[rows, :].
    """

    int8: QArray
    rows: jax.Array
    weight: jax.Array
    quantize_activations: bool = struct.field(pytree_node=False, default=True)

    @property
    def shape(self) -> tuple:
        return self.int8.shape

    @property
    def numel(self) -> int:
        return self.int8.numel

    @property
    def nbytes(self) -> int:
        return int(self.int8.nbytes + self.rows.size * self.rows.dtype.itemsize
                   + self.weight.size * self.weight.dtype.itemsize)

    @property
    def bits_per_param(self) -> float:
        return 8.0 * self.nbytes / self.numel

    def dequantize(self) -> jax.Array:
        """(in, out) float32: the int8 reconstruction with the outlier rows put back."""
        return self.int8.dequantize().at[self.rows].set(self.weight.astype(jnp.float32))

    def matmul(self, x: jax.Array) -> jax.Array:
        """x (..., in) -> (..., out) in x's dtype (module docstring)."""
        if x.shape[-1] != self.shape[0]:
            raise ValueError(f"Int8OutlierWeight.matmul: x has {x.shape[-1]} features, the weight expects "
                             f"{self.shape[0]}")
        y_out = jnp.matmul(x[..., self.rows], self.weight.astype(x.dtype), preferred_element_type=x.dtype)
        x_rest = x.at[..., self.rows].set(0)
        if not self.quantize_activations:
            return jnp.matmul(x_rest, self.int8.dequantize().astype(x.dtype),
                              preferred_element_type=x.dtype) + y_out
        xf = x_rest.astype(jnp.float32)
        sx = jnp.max(jnp.abs(xf), axis=-1, keepdims=True) / 127.0
        sx = jnp.where(sx > 0, sx, 1.0)
        xq = jnp.clip(jnp.round(xf / sx), -127, 127).astype(jnp.int8)
        codes = (self.int8.unpacked_codes().astype(jnp.int16) - 128).astype(jnp.int8)
        acc = jnp.matmul(xq, codes, preferred_element_type=jnp.int32)
        scale_w = self.int8.stats()[0][0]  # (out,)
        return (acc.astype(jnp.float32) * sx * scale_w).astype(x.dtype) + y_out


def int8_outlier_weight(w, outlier_rows, cfg: Int8Config = Int8Config(), *, path: str = "weight",
                        scale_dtype: str = "float16") -> Int8OutlierWeight:
    """Build the weight object from a float kernel (in, out) and its outlier input channels."""
    a = check_weight(w, path).astype(np.float32)
    rows = np.unique(np.asarray(outlier_rows, np.int64))
    if rows.size and (rows[0] < 0 or rows[-1] >= a.shape[0]):
        raise ValueError(f"{path}: outlier channel index outside [0, {a.shape[0]})")
    rest = a.copy()
    rest[rows] = 0.0
    spec = dataclasses.replace(INT8_SPEC, scale_dtype=scale_dtype)
    return Int8OutlierWeight(int8=quantize_rtn(rest, spec, path=path), rows=jnp.asarray(rows, jnp.int32),
                             weight=jnp.asarray(a[rows], jnp.float16),
                             quantize_activations=cfg.quantize_activations)


def check_spec(spec: WeightQuantSpec) -> None:
    """The int8 part is 8-bit symmetric per output channel: ValueError for any other spec."""
    if (spec.bits, spec.group_size, spec.symmetric, spec.grid) != (8, None, True, "uniform"):
        raise ValueError(f"int8 outliers quantize the int8 part 8-bit symmetric per output channel "
                         f"(recipe 'int8:w8sym'), got {spec}")


def int8_block(capture, specs: Mapping[str, WeightQuantSpec], cfg: Int8Config = Int8Config()):
    """Block function for `calibration.quantize_blockwise`: outlier channels from the calibration
    inputs' per-channel max |x|, then the int8 + fp16 decomposition of every site of `specs`
    (site -> spec, 8-bit symmetric per channel; its scale_dtype is used)."""
    stats = capture.channel_stats()
    params = copy_tree(capture.params)
    infos = {}
    for site, spec in specs.items():
        check_spec(spec)
        path = capture.path(site)
        node = site_node(params, site)
        rows = np.nonzero(stats[site].absmax >= cfg.threshold)[0]
        node["kernel"] = int8_outlier_weight(node["kernel"], rows, cfg, path=path, scale_dtype=spec.scale_dtype)
        infos[path] = {"outlier_channels": int(rows.size), "max_abs": float(stats[site].absmax.max())}
    return params, {"linears": infos}


register(Method("int8", Int8Config, block_fn=int8_block, check_spec=check_spec,
                doc="LLM.int8()-style: int8 per-channel weights, fp16 rows of the outlier input channels"))


# ------------------------------------------------------------------------------------------------
# Storage: `qjax.quant.storage` saves QArrays and plain arrays; these map the weight object to and
# from a dict of them.

_KEYS = {"int8", "quantize_activations"}
_OUTLIER_KEYS = {"outlier_rows", "outlier_weight"}


def to_storable(params):
    """Params with every Int8OutlierWeight replaced by {int8: QArray, quantize_activations (bool
    array), and when it has outlier channels outlier_rows, outlier_weight} (savable by
    `qjax.quant.storage.save_params`; Orbax refuses empty arrays)."""
    if isinstance(params, Int8OutlierWeight):
        out = {"int8": params.int8, "quantize_activations": np.asarray(params.quantize_activations)}
        if params.rows.size:
            out.update(outlier_rows=params.rows, outlier_weight=params.weight)
        return out
    if isinstance(params, Mapping):
        return {k: to_storable(v) for k, v in params.items()}
    return params


def from_storable(params):
    """Inverse of `to_storable` (on what `restore_params` returns)."""
    if isinstance(params, Mapping):
        if set(params) in (_KEYS, _KEYS | _OUTLIER_KEYS):
            qa = params["int8"]
            rows = params.get("outlier_rows", np.zeros((0,), np.int32))
            weight = params.get("outlier_weight", np.zeros((0, qa.shape[1]), np.float16))
            return Int8OutlierWeight(int8=qa, rows=jnp.asarray(rows), weight=jnp.asarray(weight),
                                     quantize_activations=bool(np.asarray(params["quantize_activations"])))
        return {k: from_storable(v) for k, v in params.items()}
    return params


__all__ = ["Int8Config", "Int8OutlierWeight", "int8_outlier_weight", "int8_block", "to_storable",
           "from_storable", "INT8_SPEC", "check_spec"]
