"""Padded sizes from fixed buckets, so that batched scoring compiles once per bucket, not per size."""

from __future__ import annotations

import math
from typing import Sequence


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest of the ascending `buckets` >= n; beyond the last, the next multiple of it."""
    for b in buckets:
        if n <= b:
            return b
    return int(math.ceil(n / buckets[-1]) * buckets[-1])


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def pow2_floor(n: int) -> int:
    """The largest power of two <= n (1 for n <= 1)."""
    return 1 << max(0, n.bit_length() - 1)
