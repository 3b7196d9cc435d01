"""Language-modelling corpora as one string, joined as in the GPTQ evaluation protocol.

- wikitext2: the local tokenized WikiText-2 (`wikitext-2/{test,valid}.txt`, the `wiki.*.tokens`
  files) when a data directory is available, else `wikitext-2-raw-v1` from the hub; lines (without
  their line breaks) joined by "\\n\\n", as GPTQ's `"\\n\\n".join(data["text"])`.
- ptb: local `ptb/ptb.{test,valid}.txt` or `ptb_text_only` from the hub; sentences joined by " ".
- c4: the hub (`allenai/c4`, en validation shard 0, as GPTQ; a local mirror as `qjax.data.hub`
  describes is used if present); the first 1100 documents joined by " ".
"""

from __future__ import annotations

import os
from typing import Optional

from qjax.data.hub import hub_rows
from qjax.data.paths import DataError, data_dir
from qjax.data.provenance import record_file

DATASETS = ("wikitext2", "ptb", "c4")
_SPLITS = {"test": "test", "validation": "valid", "valid": "valid", "train": "train"}


def _local_lines(relative: str, root) -> list[str]:
    path = root / relative
    if not path.is_file():
        raise DataError(f"data file {path} is missing")
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    record_file(path)
    return lines


def _hub_available(root_override) -> bool:
    return root_override is None and not os.environ.get("QJAX_DATA_DIR")


def load_text(dataset: str, split: str = "test", data_dir_override: Optional[str] = None) -> str:
    """The whole split of `dataset` as one string (see module docstring for the joining rules)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown perplexity dataset {dataset!r}; known: {DATASETS}")
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r} for {dataset}; known: {sorted(_SPLITS)}")
    if dataset == "c4":
        return _hub_c4(split, data_dir_override)
    if _hub_available(data_dir_override):
        return _hub_text(dataset, split)
    root = data_dir(data_dir_override)
    name = _SPLITS[split]
    if dataset == "wikitext2":
        return "\n\n".join(_local_lines(f"wikitext-2/{name}.txt", root))
    return " ".join(_local_lines(f"ptb/ptb.{name}.txt", root))


def _hub_text(dataset: str, split: str) -> str:
    hub_split = "validation" if split in ("valid", "validation") else split
    if dataset == "wikitext2":
        return "\n\n".join(r["text"] for r in hub_rows("wikitext", "wikitext-2-raw-v1", hub_split))
    return " ".join(r["sentence"] for r in hub_rows("ptb_text_only", "penn_treebank", hub_split))


def _hub_c4(split: str, data_dir_override: Optional[str]) -> str:
    if split not in ("validation", "valid"):
        raise DataError("c4 is evaluated on its validation shard only (split='validation')")
    rows = hub_rows("allenai/c4", None, "validation", data_dir_override,
                    data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"}, required=("text",))
    return " ".join(r["text"] for r in rows[:1100])
