"""Hugging Face hub datasets, with an optional local mirror in the hub's own row format.

`hub_rows(repo, config, split)` returns the split as a list of row dicts. If the data directory holds
`hf/<repo>/<config or "default">/<split>.jsonl` (rows exactly as the hub serves them, one JSON object a
line), that file is read; otherwise `datasets.load_dataset(repo, config, split=split)` is called (it
needs the hub or the datasets cache).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from qjax.data.paths import DataError, data_dir
from qjax.data.tasks.io import read_jsonl


def mirror_path(repo: str, config: Optional[str], split: str, root: os.PathLike) -> Path:
    """Where the local mirror of a hub split lives under the data directory `root`."""
    return Path(root) / "hf" / repo / (config or "default") / f"{split}.jsonl"


def hub_rows(repo: str, config: Optional[str], split: str,
             data_dir_override: Optional[str | os.PathLike] = None) -> list[dict]:
    root = _data_root(data_dir_override)
    if root is not None:
        path = mirror_path(repo, config, split, root)
        if path.is_file():
            return read_jsonl(path)
    try:
        from datasets import load_dataset

        return [dict(row) for row in load_dataset(repo, config, split=split)]
    except Exception as e:  # the hub, the cache or the split: name the dataset either way
        where = f"{repo}" + (f"/{config}" if config else "") + f" split {split!r}"
        raise DataError(f"hub dataset {where} could not be loaded (no local mirror "
                        f"hf/{repo}/{config or 'default'}/{split}.jsonl in the data directory): {e}") from e


def _data_root(override):
    if override is None and not os.environ.get("QJAX_DATA_DIR"):
        return None
    return data_dir(override)
