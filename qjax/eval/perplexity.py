"""Perplexity by the GPTQ protocol.

The split is joined into one string (`qjax.data.text.load_text`), tokenized once, cut into
non-overlapping windows of `seqlen` tokens (the ragged tail is dropped; `qjax.data.corpus.load_windows`), and
perplexity = exp(mean NLL over every predicted token), i.e. seqlen - 1 predictions per window
(the first token of each window has no context, as in GPTQ's `shift_logits`/`shift_labels`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from qjax.data.corpus import load_windows
from qjax.models.config import ModelConfig
from qjax.models.nll import window_nll
from qjax.ops.runtime import Runtime
from qjax.parallel import padded_batch_size, shard_batch, to_host


_window_nll_jit = jax.jit(window_nll, static_argnames=("config", "runtime"))


def perplexity_of_windows(params, config: ModelConfig, windows: np.ndarray, *, batch_size: int = 1,
                          runtime: Runtime = Runtime(), runtime_state: Any = None,
                          progress: bool = True) -> dict:
    """Perplexity over (num_windows, seqlen) token windows; see the module docstring.

    With an active mesh (`qjax.parallel.use_mesh`) each batch's windows go over the "data" axis
    (batch_size rounded up to a multiple of it; padding rows are dropped) and params are used as
    placed (e.g. `qjax.parallel.shard_params`); the sum of NLLs is formed on the host in window order,
    so the result does not depend on the mesh beyond float rounding inside each window's forward.
    """
    num, seqlen = windows.shape
    batch_size = padded_batch_size(batch_size)
    total = 0.0
    start = time.perf_counter()
    batches = range(0, num, batch_size)
    for i in tqdm(batches, desc="perplexity", disable=not progress or len(batches) < 4, leave=False):
        batch = windows[i:i + batch_size]
        pad = batch_size - len(batch)  # keep one compiled shape: pad the last batch, drop its NLL
        if pad:
            batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
        nll = to_host(_window_nll_jit(params, shard_batch(batch), config, runtime,
                                      runtime_state))
        total += float(np.sum(nll[: batch_size - pad], dtype=np.float64))
    seconds = time.perf_counter() - start
    scored = num * (seqlen - 1)
    mean_nll = total / scored
    return {"ppl": math.exp(mean_nll), "nll": mean_nll, "tokens": scored, "windows": num,
            "seqlen": seqlen, "seconds": seconds, "tokens_per_s": num * seqlen / seconds}


def perplexity(params, config: ModelConfig, tokenizer, *, dataset: str = "wikitext2", split: str = "test",
               seqlen: int = 2048, max_windows: Optional[int] = None, batch_size: int = 1,
               runtime: Runtime = Runtime(), runtime_state: Any = None, data_dir: Optional[str] = None,
               progress: bool = True) -> dict:
    """Perplexity of `dataset`/`split` by the GPTQ protocol.

    Returns {ppl, nll (mean per token), tokens (scored), windows, seqlen, seconds, tokens_per_s}.
    """
    windows = load_windows(tokenizer, dataset, split, seqlen, max_windows, data_dir)
    result = perplexity_of_windows(params, config, windows, batch_size=batch_size, runtime=runtime,
                                   runtime_state=runtime_state, progress=progress)
    return {"dataset": dataset, "split": split, **result}
