"""Random QArrays and KV caches for the Pallas kernel tests, and the lowering check."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from qjax.formats import QArray, WeightQuantSpec

TRITON_CALL = "__gpu$xla.gpu.triton"
DISABLED = [jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)]


def random_qarray(rng, k: int, n: int, bits: int, group, *, asymmetric: bool = True, grid: str = "uniform",
                  scale_dtype: str = "float16") -> QArray:
    """A QArray of random codes and statistics (group None: per channel)."""
    spec = WeightQuantSpec(bits, group, symmetric=not asymmetric or grid != "uniform", grid=grid,
                           scale_dtype=scale_dtype)
    n_groups = spec.stats_shape((k, n))[0]
    q = rng.integers(0, 2 ** bits, (k, n))
    scale = rng.uniform(0.01, 0.1, (n_groups, n)).astype(np.float32)
    zero = rng.integers(0, 2 ** bits, (n_groups, n)).astype(np.float32) if spec.grid == "uniform" and not spec.symmetric else None
    return QArray.from_codes(q, scale, zero, spec=spec)


def xla_product(x, qa: QArray) -> np.ndarray:
    """x @ qa.dequantize() in float64 numpy: the independent reference (qjax's own unpacking)."""
    return np.asarray(x, np.float64) @ np.asarray(qa.dequantize(), np.float64)


def assert_close(actual, expected, rtol: float, what: str = ""):
    """max |a - e| <= rtol * max |e| (bf16 and split sums reorder roundings)."""
    actual = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err, ref = float(np.max(np.abs(actual - expected))), float(np.max(np.abs(expected)))
    assert err <= rtol * ref, f"{what}: max error {err:.3g} vs max |ref| {ref:.3g} (rtol {rtol})"


def exported_calls(fn, args, platform: str) -> set:
    """Custom-call targets in `fn` exported with jax.export for "tpu" or "cuda" (Triton check off)."""
    exported = jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=DISABLED)(*args)
    return set(re.findall(r"custom_call @([\w$.]+)", exported.mlir_module()))


def lowered_kernel(platform: str) -> str:
    return "tpu_custom_call" if platform == "tpu" else TRITON_CALL
