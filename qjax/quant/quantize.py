"""One entry point for every weight quantization method: `quantize(params, config, method_config,
calibration_tokens)`.

Methods (`QuantizeConfig.method`):
  rtn        round to nearest on the uniform grid (`qjax.quant.rtn`)
  nf4        NF4 codebook grid (bits=4), rounding "rtn" or "gptq"
  companded  companded grid sign(u)|u|^p, rounding "rtn" or "gptq"
  gptq       GPTQ on the uniform grid (`qjax.quant.gptq`)
  spqr       SpQR: GPTQ with small groups, 3-bit second-level statistics and fp16 outliers
  awq        AWQ: activation-aware per-channel scales folded into the float model, then RTN
  int8       LLM.int8()-style: int8 per-output-channel weights, outlier input channels in fp16
Calibrated methods (gptq, spqr, awq, int8, and nf4/companded with rounding="gptq") run the shared
block-by-block loop of `qjax.quant.calibration` and need `calibration_tokens` (N, T); they quantize
the decoder-block linears that `pattern` (a regex over parameter paths, full match) selects. RTN-
rounded methods quantize every parameter `pattern` matches.

The report holds: method, bits, group_size, the number of quantized linears, their bytes and float
bytes, bits_per_param over the quantized linears (8 * bytes / weights, exact QArray bytes), the
whole model's bytes, the weight reconstruction error (`weight_rel_error`: relative Frobenius
error over all quantized linears), the wall seconds and process CPU seconds (all threads; on a
shared machine the wall time depends on the load), and per-block / per-linear details of
calibrated methods.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from qjax.models.config import ModelConfig
from qjax.ops.runtime import Runtime
from qjax.quant.calibration import quantize_blockwise
from qjax.quant.gptq import GPTQConfig
from qjax.quant.rules import DEFAULT_WEIGHT_PATTERN, flatten_params, map_params_by_rule
from qjax.formats.spec import WeightQuantSpec

METHODS = ("rtn", "nf4", "companded", "gptq", "spqr", "awq", "int8")
ROUNDINGS = ("rtn", "gptq")


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """Static description of one weight-quantization run.

    method: one of METHODS.
    bits, group_size, symmetric, clip_search, companding_power, scale_dtype: the first-level
      `WeightQuantSpec` (group_size None = per output channel, -1 = per tensor, k = groups of k
      input rows); nf4/companded are absmax grids (symmetric is forced True); int8 uses its own
      fixed int8 per-channel spec; spqr takes bits and group_size from here (its groups are small).
    rounding: nf4 / companded only: "rtn" or "gptq".
    pattern: regex (full match) over parameter paths selecting the quantized weights.
    batch_size: calibration windows per jitted call.
    gptq, spqr, awq, int8: per-method options (GPTQConfig, SpQRConfig, AWQConfig, Int8Config).
    """

    method: str = "rtn"
    bits: int = 4
    group_size: Optional[int] = 128
    symmetric: bool = False
    clip_search: bool = False
    companding_power: float = 1.0 / 3.0
    scale_dtype: str = "float16"
    rounding: str = "rtn"
    pattern: str = DEFAULT_WEIGHT_PATTERN
    batch_size: int = 8
    gptq: GPTQConfig = GPTQConfig()
    spqr: Any = None
    awq: Any = None
    int8: Any = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"QuantizeConfig: unknown method {self.method!r}; known: {METHODS}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"QuantizeConfig: rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"QuantizeConfig: pattern {self.pattern!r} does not compile: {e}") from e
        if self.method == "nf4" and self.bits != 4:
            raise ValueError(f"QuantizeConfig: nf4 is a 4-bit grid, got bits={self.bits}")
        from qjax.quant.awq import AWQConfig
        from qjax.quant.int8_outliers import Int8Config
        from qjax.quant.spqr import SpQRConfig

        for name, cls in (("spqr", SpQRConfig), ("awq", AWQConfig), ("int8", Int8Config)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, cls())
        if self.method == "spqr":
            self.spqr.check(self.bits, self.group_size)
        self.spec  # validates bits / group_size / grid

    @property
    def spec(self) -> WeightQuantSpec:
        """The first-level spec of the method (int8: 8-bit symmetric per channel)."""
        if self.method == "int8":
            return WeightQuantSpec(bits=8, group_size=None, symmetric=True, scale_dtype=self.scale_dtype)
        grid = {"nf4": "nf4", "companded": "companded"}.get(self.method, "uniform")
        return WeightQuantSpec(bits=self.bits, group_size=self.group_size,
                               symmetric=True if grid != "uniform" else self.symmetric, grid=grid,
                               companding_power=self.companding_power, clip_search=self.clip_search,
                               scale_dtype=self.scale_dtype)

    @property
    def calibrated(self) -> bool:
        return self.method in ("gptq", "spqr", "awq", "int8") or (
            self.method in ("nf4", "companded") and self.rounding == "gptq")

    @classmethod
    def from_dict(cls, d: Mapping) -> "QuantizeConfig":
        """From a (possibly nested) mapping, e.g. an ml_collections ConfigDict's `to_dict()`."""
        from qjax.quant.awq import AWQConfig
        from qjax.quant.int8_outliers import Int8Config
        from qjax.quant.spqr import SpQRConfig

        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"QuantizeConfig: unknown fields {sorted(unknown)}")
        for name, sub in (("gptq", GPTQConfig), ("spqr", SpQRConfig), ("awq", AWQConfig), ("int8", Int8Config)):
            if isinstance(d.get(name), Mapping):
                d[name] = sub(**d[name])
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _as_config(method_config) -> QuantizeConfig:
    if isinstance(method_config, QuantizeConfig):
        return method_config
    if hasattr(method_config, "to_dict"):
        method_config = method_config.to_dict()
    if isinstance(method_config, Mapping):
        return QuantizeConfig.from_dict(method_config)
    raise ValueError(f"method_config must be a QuantizeConfig or a mapping, got {type(method_config).__name__}")


def _block_sites(params: Mapping, config: ModelConfig, pattern: str) -> tuple[dict, list]:
    """({layer index: [sites matched]}, [matched paths outside the decoder blocks])."""
    regex = re.compile(pattern)
    per_layer: dict = {i: [] for i in range(config.num_layers)}
    outside = []
    for path, leaf in flatten_params(params).items():
        if not regex.fullmatch(path):
            continue
        m = re.fullmatch(r"layers_(\d+)/(.+)/kernel", path)
        if m and int(m.group(1)) < config.num_layers:
            per_layer[int(m.group(1))].append(m.group(2))
        else:
            outside.append(path)
    return per_layer, outside


def _leaf_bytes(leaf) -> int:
    if _is_weight_object(leaf):  # QArray or another weight object
        return int(leaf.nbytes)
    return int(np.prod(np.shape(leaf))) * np.dtype(leaf.dtype).itemsize


def _is_weight_object(leaf) -> bool:
    return hasattr(leaf, "dequantize") and hasattr(leaf, "nbytes")


def _summary(params: Mapping, before: Mapping) -> dict:
    """Bytes and bits/param of the quantized weights (leaves that became weight objects)."""
    new, old = flatten_params(params), flatten_params(before)
    changed = [p for p, leaf in new.items() if _is_weight_object(leaf) and not _is_weight_object(old.get(p))]
    q_bytes = sum(_leaf_bytes(new[p]) for p in changed)
    numel = int(sum(int(np.prod(np.shape(old[p]))) for p in changed))
    return {"quantized": len(changed), "quantized_bytes": q_bytes,
            "float_bytes": sum(_leaf_bytes(old[p]) for p in changed), "weights": numel,
            "bits_per_param": 8.0 * q_bytes / numel if numel else float("nan"),
            "model_bytes": sum(_leaf_bytes(v) for v in new.values()),
            "float_model_bytes": sum(_leaf_bytes(v) for v in old.values()),
            **_reconstruction_error([(old[p], new[p]) for p in changed])}


def _reconstruction_error(pairs: list) -> dict:
    """Weight reconstruction error of (float weight, weight object) pairs: the relative Frobenius
    error over all of them together, sqrt(sum ||W - dequantize(Q)||^2 / sum ||W||^2), and the mean
    of the per-tensor relative errors ||W - dequantize(Q)|| / ||W||."""
    if not pairs:
        return {"weight_rel_error": None, "weight_rel_error_mean": None}
    err_sq, norm_sq, per_tensor = 0.0, 0.0, []
    for w, q in pairs:
        w = np.asarray(w, np.float64)
        e = float(np.sum((w - np.asarray(q.dequantize(), np.float64)) ** 2))
        n = float(np.sum(w * w))
        err_sq, norm_sq = err_sq + e, norm_sq + n
        per_tensor.append(math.sqrt(e / n) if n else 0.0)
    return {"weight_rel_error": math.sqrt(err_sq / norm_sq) if norm_sq else 0.0,
            "weight_rel_error_mean": float(np.mean(per_tensor))}


def quantize(params: Mapping, config: ModelConfig, method_config,
             calibration_tokens: Optional[np.ndarray] = None, *, runtime: Runtime = Runtime(),
             progress: bool = True) -> tuple[dict, dict]:
    """Quantize `params` with one method (module docstring). Returns (new params, report).

    Args:
      params: float model params (qjax layout).
      config: the model's ModelConfig.
      method_config: QuantizeConfig, or a mapping / ConfigDict of its fields.
      calibration_tokens: (N, T) int windows (`calibration.calibration_tokens`); required by
        calibrated methods.
      runtime: forward runtime of the calibration passes.
    Raises:
      ValueError: unknown method, bad spec, missing calibration tokens, a pattern selecting
        non-block weights for a calibrated method or nothing at all, NaN weights, ...
    """
    cfg = _as_config(method_config)
    start, start_cpu = time.perf_counter(), time.process_time()
    per_layer, outside = _block_sites(params, config, cfg.pattern)
    if not outside and not any(per_layer.values()):
        raise ValueError(f"quantize: pattern {cfg.pattern!r} selects no parameter")
    details: dict = {}
    if not cfg.calibrated:
        from qjax.quant.rtn import quantize_rtn

        new, rule_report = map_params_by_rule(
            params, ((cfg.pattern, cfg.spec),), lambda path, w, spec: quantize_rtn(w, spec, path=path))
    else:
        if outside:
            raise ValueError(f"quantize: method {cfg.method!r} calibrates decoder-block linears only; the "
                             f"pattern also selects {outside[:4]}")
        if calibration_tokens is None:
            raise ValueError(f"quantize: method {cfg.method!r} needs calibration_tokens (N, T)")
        block_fn = _block_fn(cfg, per_layer)
        new, infos = quantize_blockwise(params, config, calibration_tokens, block_fn,
                                        batch_size=cfg.batch_size, runtime=runtime, progress=progress)
        details["blocks"] = infos
        details["calibration"] = {"windows": int(calibration_tokens.shape[0]),
                                  "seqlen": int(calibration_tokens.shape[1])}
    report = {"method": cfg.method, "bits": cfg.spec.bits, "group_size": cfg.spec.group_size,
              "rounding": cfg.rounding if cfg.method in ("nf4", "companded") else None,
              **_summary(new, params), "seconds": time.perf_counter() - start,
              "cpu_seconds": time.process_time() - start_cpu, **details}
    if cfg.method == "spqr":
        from qjax.quant.spqr import spqr_summary

        report.update(spqr_summary(report["blocks"], cfg))
    return new, report


def _block_fn(cfg: QuantizeConfig, per_layer: dict):
    """BlockCapture -> (block params, info) for a calibrated method."""

    def specs_of(capture) -> dict:
        return {site: cfg.spec for site in per_layer[capture.layer]}

    if cfg.method in ("gptq", "nf4", "companded"):
        from qjax.quant.gptq import gptq_block

        return lambda capture: gptq_block(capture, specs_of(capture), cfg.gptq)
    if cfg.method == "spqr":
        from qjax.quant.spqr import spqr_block

        return lambda capture: spqr_block(capture, per_layer[capture.layer], cfg.bits, cfg.group_size,
                                          cfg.spqr)
    if cfg.method == "awq":
        from qjax.quant.awq import awq_block

        return lambda capture: awq_block(capture, specs_of(capture), cfg.awq)
    if cfg.method == "int8":
        from qjax.quant.int8_outliers import int8_block

        return lambda capture: int8_block(capture, per_layer[capture.layer], cfg.int8,
                                          scale_dtype=cfg.scale_dtype)
    raise AssertionError(cfg.method)


__all__ = ["quantize", "QuantizeConfig", "METHODS"]
