"""Token windows of a corpus: tokenization, the perplexity windows and the one calibration sampler.

- `tokenize_corpus(tokenizer, text)`: (N,) int32 ids of the whole text, no special tokens added.
- `token_windows(ids, seqlen, max_windows)`: consecutive non-overlapping windows from the start
  (the GPTQ perplexity protocol; the ragged tail is dropped); `load_windows` does it for a named
  corpus (`qjax.data.text.load_text`).
- `sample_windows(ids, num_windows, seqlen, seed)`: windows at offsets drawn uniformly from
  [0, N - seqlen] by `np.random.default_rng(seed)`, as GPTQ's `get_wikitext2` (they may overlap).
  Every calibrated method, activation statistic and static activation scale draws its windows
  here: `calibration_tokens(tokenizer, CalibrationData(...))` from a named corpus (default
  WikiText-2 *valid*: the local copy has test and valid only, and the test split is what
  perplexity scores) or from a JSONL file of texts (instruction data) joined by "\\n\\n".
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from qjax.data.io import field, read_jsonl
from qjax.data.text import load_text


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


def sample_windows(ids: np.ndarray, num_windows: int, seqlen: int, seed: int) -> np.ndarray:
    """(num_windows, seqlen) int32 windows ids[o:o+seqlen] at offsets o drawn uniformly from
    [0, len(ids) - seqlen] by np.random.default_rng(seed) (windows may overlap, as in GPTQ)."""
    ids = np.asarray(ids, np.int32)
    if ids.ndim != 1:
        raise ValueError(f"sample_windows: expected a 1-D token array, got shape {ids.shape}")
    if len(ids) < seqlen:
        raise ValueError(f"calibration corpus has {len(ids)} tokens, fewer than one window of {seqlen}")
    offsets = np.random.default_rng(seed).integers(0, len(ids) - seqlen + 1, size=num_windows)
    return np.stack([ids[o:o + seqlen] for o in offsets])


def load_jsonl_texts(path: str | os.PathLike, text_key: str = "text") -> list[str]:
    """The string field `text_key` of every record of a JSONL file; DataError naming the line."""
    return [field(record, text_key, f"{path}:{i}") for i, record in enumerate(read_jsonl(path), 1)]


@dataclasses.dataclass(frozen=True)
class CalibrationData:
    """Where calibration windows come from.

    Attributes:
      dataset: a `qjax.data.text` corpus name (wikitext2, ptb, c4); ignored when `jsonl` is set.
      split: its split; "valid" by default (the local WikiText-2 has no train split).
      jsonl: optional path of a JSONL file, one JSON object per line with the text under `text_key`.
      text_key: field holding the text in `jsonl` lines.
      num_windows: N windows (128 in the papers).
      seqlen: tokens per window (2048 in the papers).
      seed: seed of the window offsets.
    """

    dataset: str = "wikitext2"
    split: str = "valid"
    jsonl: Optional[str] = None
    text_key: str = "text"
    num_windows: int = 128
    seqlen: int = 2048
    seed: int = 0

    def __post_init__(self):
        for name in ("num_windows", "seqlen"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CalibrationData: {name} must be a positive int, got {v!r}")
        if self.seqlen < 2:
            raise ValueError(f"CalibrationData: seqlen must be >= 2, got {self.seqlen}")

    @property
    def source(self) -> str:
        return f"jsonl:{self.jsonl}" if self.jsonl else f"{self.dataset}/{self.split}"


def calibration_tokens(tokenizer, data: CalibrationData = CalibrationData(),
                       data_dir: Optional[str] = None) -> np.ndarray:
    """(num_windows, seqlen) int32 calibration windows (module docstring)."""
    if data.jsonl:
        text = "\n\n".join(load_jsonl_texts(data.jsonl, data.text_key))
    else:
        text = load_text(data.dataset, data.split, data_dir)
    return sample_windows(tokenize_corpus(tokenizer, text), data.num_windows, data.seqlen, data.seed)
