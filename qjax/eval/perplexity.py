"""Perplexity by the GPTQ protocol.

The split is joined into one string (`qjax.data.text.load_text`), tokenized once, cut into
non-overlapping windows of `seqlen` tokens (the ragged tail is dropped), and
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

from qjax.data.text import load_text
from qjax.models.config import ModelConfig
from qjax.models.llama import forward
from qjax.ops.runtime import Runtime
from qjax.parallel import padded_batch_size, shard_batch, to_host


def tokenize_corpus(tokenizer, text: str) -> np.ndarray:
    """(N,) int32 token ids of the whole text, without special tokens added."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return np.asarray(ids, np.int32)


def token_windows(ids: np.ndarray, seqlen: int, max_windows: Optional[int] = None) -> np.ndarray:
    """(num_windows, seqlen) non-overlapping windows from the start of `ids`; the tail is dropped."""
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2, got {seqlen}")
    n = len(ids) // seqlen
    if n == 0:
        raise ValueError(f"the corpus has {len(ids)} tokens, fewer than one window of {seqlen}")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].reshape(n, seqlen)


def load_windows(tokenizer, dataset: str = "wikitext2", split: str = "test", seqlen: int = 2048,
                 max_windows: Optional[int] = None, data_dir: Optional[str] = None) -> np.ndarray:
    """Token windows of a named corpus (see `token_windows`)."""
    return token_windows(tokenize_corpus(tokenizer, load_text(dataset, split, data_dir)), seqlen,
                         max_windows)


def window_nll(params, windows: jax.Array, config: ModelConfig, runtime: Runtime = Runtime(),
               runtime_state: Any = None) -> jax.Array:
    """Summed next-token NLL of each window: (batch, seqlen) -> (batch,) float32. Traceable."""
    logits, _ = forward(params, windows, config, runtime, runtime_state=runtime_state)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    target = jnp.take_along_axis(logp, windows[:, 1:, None], axis=-1)[..., 0]
    return -jnp.sum(target, axis=-1)


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
