"""Deterministic, stratified selection of `limit` documents."""

from __future__ import annotations

from typing import Callable, Hashable, Optional, Sequence

import numpy as np


def stratified_indices(docs: Sequence[dict], limit: Optional[int], seed: int,
                       stratum: Callable[[dict], Hashable]) -> list[int]:
    """Sorted indices of `limit` documents (all when limit is None or >= len(docs)).

    Each stratum gets a share of `limit` proportional to its size (largest remainders, ties broken
    by stratum order), and its documents are drawn without replacement by a generator seeded with
    `seed`, so the selection depends only on (docs, limit, seed).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    if limit is None or limit >= len(docs):
        return list(range(len(docs)))
    strata: dict[Hashable, list[int]] = {}
    for i, doc in enumerate(docs):
        strata.setdefault(stratum(doc), []).append(i)
    keys = sorted(strata, key=repr)
    quotas = np.array([len(strata[k]) for k in keys], np.float64) * limit / len(docs)
    counts = np.floor(quotas).astype(int)
    for j in np.argsort(-(quotas - counts), kind="stable")[: limit - counts.sum()]:
        counts[j] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for key, count in zip(keys, counts):
        members = strata[key]
        chosen.extend(members[j] for j in rng.permutation(len(members))[:count])
    return sorted(chosen)
