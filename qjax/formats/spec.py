"""`WeightQuantSpec`: the static description of how one weight matrix is quantized.

A weight is a Dense kernel of shape (in_features, out_features). Statistics (scale, zero point) are
shared by a *group* of consecutive input rows for each output column:

  group_size=None  per output channel: one (scale, zero) per column, stats shape (1, out)
  group_size=-1    per tensor: one (scale, zero) for the whole matrix, stats shape (1, 1)
  group_size=k>0   groups of k rows along the INPUT dim: stats shape (ceil(in/k), out); the last group
                   holds in - (n_groups-1)*k rows when k does not divide in (e.g. SmolLM2's 576 with
                   k=128: four groups of 128 and one of 64), as in llm-compressor.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

SUPPORTED_BITS = (2, 3, 4, 8)
GRIDS = ("uniform", "nf4", "companded")
SCALE_DTYPES = ("float16", "bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class WeightQuantSpec:
    """How to quantize one (in, out) kernel. Frozen and hashable: usable as a jit static argument.

    Attributes:
      bits: code width, one of 2, 3, 4, 8.
      group_size: None (per output channel), -1 (per tensor) or k > 0 (groups of k input rows).
      symmetric: uniform grid only. False: min/max asymmetric with an integer zero point in
        [0, 2**bits - 1]; True: absmax symmetric, GPTQ convention (zero = 2**(bits-1), not stored).
        Non-uniform grids are always absmax-scaled: they require symmetric=True.
      grid: "uniform" (affine integer grid), "nf4" (QLoRA NormalFloat4 codebook, bits=4, absmax
        scaling) or "companded" (uniform grid on sign(u)|u|^p, u = w/absmax; decode by the inverse
        power).
      companding_power: p of the companded grid, 0 < p <= 1 (p=1 is a symmetric uniform grid
        without a zero level).
      clip_search: search a shrink factor per stat group (per column / per group / per tensor)
        minimising ||W - Q(W)||^2 over `clip_steps` factors linspace(1, clip_min).
      clip_min: smallest shrink factor tried, in (0, 1].
      clip_steps: number of shrink factors tried (>= 1; 1 means no shrinking).
      scale_dtype: storage dtype of first-level scales and zero points ("float16" default).
    """

    bits: int
    group_size: Optional[int] = None
    symmetric: bool = False
    grid: str = "uniform"
    companding_power: float = 1.0 / 3.0
    clip_search: bool = False
    clip_min: float = 0.5
    clip_steps: int = 20
    scale_dtype: str = "float16"

    def __post_init__(self):
        if isinstance(self.bits, bool) or self.bits not in SUPPORTED_BITS:
            raise ValueError(f"WeightQuantSpec: bits must be one of {SUPPORTED_BITS}, got {self.bits!r}")
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or (g <= 0 and g != -1)):
            raise ValueError(
                f"WeightQuantSpec: group_size must be None (per channel), -1 (per tensor) or a positive "
                f"int, got {g!r}")
        if self.grid not in GRIDS:
            raise ValueError(f"WeightQuantSpec: grid must be one of {GRIDS}, got {self.grid!r}")
        if self.grid == "nf4" and self.bits != 4:
            raise ValueError(f"WeightQuantSpec: grid 'nf4' needs bits=4, got bits={self.bits}")
        if self.grid != "uniform" and not self.symmetric:
            raise ValueError(
                f"WeightQuantSpec: grid {self.grid!r} is absmax-scaled (no zero point); set "
                f"symmetric=True")
        if not (0.0 < float(self.companding_power) <= 1.0):
            raise ValueError(
                f"WeightQuantSpec: companding_power must be in (0, 1], got {self.companding_power!r}")
        if not (0.0 < float(self.clip_min) <= 1.0):
            raise ValueError(f"WeightQuantSpec: clip_min must be in (0, 1], got {self.clip_min!r}")
        if isinstance(self.clip_steps, bool) or not isinstance(self.clip_steps, int) or self.clip_steps < 1:
            raise ValueError(f"WeightQuantSpec: clip_steps must be an int >= 1, got {self.clip_steps!r}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(
                f"WeightQuantSpec: scale_dtype must be one of {SCALE_DTYPES}, got {self.scale_dtype!r}")

    @property
    def maxq(self) -> int:
        """Largest code, 2**bits - 1."""
        return (1 << self.bits) - 1

    def rows_per_group(self, in_features: int) -> int:
        """Input rows sharing one (scale, zero): in_features for per-channel and per-tensor specs.

        Raises ValueError when a positive group_size exceeds in_features.
        """
        if in_features < 1:
            raise ValueError(f"WeightQuantSpec: the input dimension must be >= 1, got {in_features}")
        if self.group_size is None or self.group_size == -1:
            return in_features
        if self.group_size > in_features:
            raise ValueError(
                f"WeightQuantSpec: group_size {self.group_size} exceeds the input dimension "
                f"{in_features} of the weight")
        return self.group_size

    def stats_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Shape of the first-level scale / zero arrays for a kernel of `shape` = (in, out)."""
        n_in, n_out = shape
        if self.group_size == -1:
            self.rows_per_group(n_in)
            return (1, 1)
        return (math.ceil(n_in / self.rows_per_group(n_in)), n_out)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WeightQuantSpec":
        return cls(**d)
