"""Tokenizers: transformers' AutoTokenizer from an HF directory, or built from a GGUF and cached."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from qjax.cache import cache_root
from qjax.checkpoints.errors import CheckpointError


def _gguf_fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def tokenizer_from_gguf(path: str | Path):
    """The GGUF's tokenizer as a transformers fast tokenizer.

    The first call converts the GGUF vocabulary (slow) and saves `tokenizer.json` under
    `cache_root()/tokenizers/<fingerprint>`; later calls load that file instead.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    cached = cache_root() / "tokenizers" / _gguf_fingerprint(path)
    if (cached / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise CheckpointError(f"{path}: could not build a tokenizer from the GGUF metadata: {e}") from e
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    tokenizer.save_pretrained(str(tmp))
    try:
        tmp.replace(cached)  # atomic publish; a concurrent writer may have won the race
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def tokenizer_from_hf_dir(directory: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:
        raise CheckpointError(f"{directory}: could not load a tokenizer: {e}") from e


def check_vocabulary(tokenizer, vocab_size: int, source: str) -> None:
    """The tokenizer must not produce ids outside the embedding (vocab_size rows)."""
    n = len(tokenizer)
    if n > vocab_size:
        raise CheckpointError(
            f"{source}: the tokenizer has {n} tokens but the embedding has only {vocab_size} rows")
