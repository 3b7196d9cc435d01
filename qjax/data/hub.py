"""Hugging Face hub datasets, read from a local mirror in the data directory when there is one.

`hub_rows(repo, config, split, data_dir, local_dir=...)` returns a split as a list of row dicts
(rows exactly as the hub serves them). It looks, in order, for
  1. `<data_dir>/hf/<repo>/<config or "default">/<split>.jsonl` (one JSON object a line);
  2. with `local_dir`: `<data_dir>/<local_dir>/**/<split>*.(parquet|jsonl|json)`, the files of the
     hub repository's own layout (e.g. `xsum/data/test-00000-of-00001.parquet`), all concatenated
     in path order; a `local_dir` folder that exists but has no file for the split is an error;
and otherwise calls `datasets.load_dataset(repo, config, split=split)` (it needs the hub or the
datasets cache; offline it fails with a DataError naming the dataset and the mirror paths looked at).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from qjax.data.io import RECORD_SUFFIXES, check_fields, read_jsonl, read_records
from qjax.data.paths import DataError, data_dir
from qjax.data.provenance import hub_revision, record_hub


def mirror_path(repo: str, config: Optional[str], split: str, root: os.PathLike) -> Path:
    """Where the JSONL mirror of a hub split lives under the data directory `root`."""
    return Path(root) / "hf" / repo / (config or "default") / f"{split}.jsonl"


def split_files(folder: Path, split: str, pattern: Optional[str] = None) -> list[Path]:
    """Record files under `folder` (recursively) whose names start with `split` (or match `pattern`)."""
    return sorted(p for p in folder.rglob(pattern or f"{split}*")
                  if p.is_file() and p.suffix in RECORD_SUFFIXES)


def hub_rows(repo: str, config: Optional[str], split: str,
             data_dir_override: Optional[str | os.PathLike] = None, *, local_dir: Optional[str] = None,
             local_pattern: Optional[str] = None, required: Sequence[str] = (),
             data_files: Optional[dict] = None) -> list[dict]:
    """The rows of a hub split (see the module docstring); each must hold the `required` fields.

    local_pattern: the glob under `local_dir` naming the split's files when the hub layout does not
    start file names with the split (FLORES+: "devtest/fra_Latn.*"); default "<split>*".
    data_files: passed to `datasets.load_dataset` (one shard of a large dataset, e.g. C4's).
    """
    root = _data_root(data_dir_override)
    rows, where = None, None
    if root is not None:
        path = mirror_path(repo, config, split, root)
        if path.is_file():
            rows, where = read_jsonl(path), str(path)
        elif local_dir is not None and (root / local_dir).is_dir():
            folder = root / local_dir
            files = split_files(folder, split, local_pattern)
            if not files:
                expected = local_pattern or "names starting with it"
                raise DataError(f"{folder}: no file for split {split!r} (expected {expected})")
            rows, where = [r for f in files for r in read_records(f)], str(folder)
    if rows is None:
        rows, where = _load_from_hub(repo, config, split, local_dir, data_files), repo
    if not rows:
        raise DataError(f"{where}: split {split!r} is empty")
    for i, row in enumerate(rows):
        check_fields(row, required, f"{where} ({split}) record {i + 1}")
    return rows


def _load_from_hub(repo: str, config: Optional[str], split: str, local_dir: Optional[str],
                   data_files: Optional[dict]) -> list[dict]:
    try:
        from datasets import load_dataset

        extra = {} if data_files is None else {"data_files": data_files}
        data = load_dataset(repo, config, split=split, **extra)
        rows = [dict(row) for row in data]
    except Exception as e:  # the hub, the cache or the split: name the dataset either way
        name = f"{repo}" + (f"/{config}" if config else "") + f" split {split!r}"
        mirrors = f"hf/{repo}/{config or 'default'}/{split}.jsonl" + (
            f" or {local_dir}/**/{split}*" if local_dir else "")
        where = ("in the data directory" if os.environ.get("QJAX_DATA_DIR")
                 else "in a data directory: set QJAX_DATA_DIR or pass --data_dir")
        raise DataError(f"hub dataset {name}: no local copy ({mirrors} {where}), and "
                        f"loading it from the hub failed: {type(e).__name__}: {e}") from e
    record_hub(repo, config, split, hub_revision(data))
    return rows


def _data_root(override) -> Optional[Path]:
    if override is None and not os.environ.get("QJAX_DATA_DIR"):
        return None
    return data_dir(override)
