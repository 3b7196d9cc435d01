"""Which data a computation read: local files with their SHA-256, hub datasets with their revision.

The readers of `qjax.data` report every file they open (`record_file`) and every hub dataset they
load (`record_hub`); `recording()` collects those reports for the code run inside it:

    with recording() as sources:
        text = load_text("wikitext2", "test")
    sources.labels()   # ["file:wikitext-2/test.txt#sha256:5b3c...", ...]

A label names the file relative to the data directory (`file:<path>#sha256:<16 hex>`) or the hub
dataset (`hub:<repo>[/<config>]:<split>@<revision>`), so two rows computed from different text
(the local tokenized WikiText-2 vs the hub's raw one, or an edited file) never share a label.
`describe(labels)` is the short form used as a row's `data_source`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path
from typing import Iterator, Optional

_RECORDERS: list["Sources"] = []


class Sources:
    """The data sources reported while a `recording()` block ran."""

    def __init__(self):
        self._labels: dict[str, None] = {}

    def add(self, label: str) -> None:
        self._labels[label] = None

    def labels(self) -> list[str]:
        """Sorted labels of everything read (module docstring)."""
        return sorted(self._labels)


@contextlib.contextmanager
def recording() -> Iterator[Sources]:
    """Collects the sources reported inside the block (nested recorders all see them)."""
    sources = Sources()
    _RECORDERS.append(sources)
    try:
        yield sources
    finally:
        _RECORDERS.remove(sources)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def file_label(path: str | os.PathLike) -> str:
    """`file:<path relative to $QJAX_DATA_DIR if under it>#sha256:<16 hex>` of an existing file."""
    path = Path(path).resolve()
    stat = path.stat()
    name = str(path)
    root = os.environ.get("QJAX_DATA_DIR")
    if root:
        try:
            name = str(path.relative_to(Path(root).expanduser().resolve()))
        except ValueError:
            pass
    return f"file:{name}#sha256:{_sha256(str(path), stat.st_size, stat.st_mtime_ns)}"


def record_file(path: str | os.PathLike) -> None:
    """Reports that a local data file was read (hashed only while something is recording)."""
    if _RECORDERS:
        label = file_label(path)
        for sources in _RECORDERS:
            sources.add(label)


def hub_revision(dataset) -> str:
    """The revision of a loaded `datasets.Dataset`: the commit folder of its cache files, else its
    fingerprint."""
    files = getattr(dataset, "cache_files", None) or []
    if files:
        return Path(files[0]["filename"]).parent.name
    return str(getattr(dataset, "_fingerprint", "unknown"))


def record_hub(repo: str, config: Optional[str], split: str, revision: str) -> None:
    """Reports that a hub dataset split was loaded at `revision`."""
    label = f"hub:{repo}{'/' + config if config else ''}:{split}@{revision}"
    for sources in _RECORDERS:
        sources.add(label)


def describe(labels: list[str]) -> str:
    """One short string for a row's `data_source`: the labels joined by ';' (empty: 'none')."""
    return ";".join(labels) if labels else "none"


def task_sources(spec, data_dir: Optional[str | os.PathLike] = None) -> list[str]:
    """The labels of the data a task declaration (`qjax.data.tasks.spec.TaskSpec`) reads: its eval
    split and, when it has one and it loads, its few-shot split. Raises the loader's DataError
    when the eval split is missing or malformed."""
    from qjax.data.paths import DataError

    with recording() as sources:
        spec.load(spec.eval_split, data_dir)
        if spec.fewshot_split is not None and spec.fewshot_split != spec.eval_split:
            try:
                spec.load(spec.fewshot_split, data_dir)
            except DataError:
                pass  # used only with few-shot examples; the run reports it if it needs them
    return sources.labels()


def corpus_sources(dataset: str, split: str, data_dir: Optional[str | os.PathLike] = None,
                   jsonl: Optional[str | os.PathLike] = None) -> list[str]:
    """The labels of a perplexity / calibration corpus (`qjax.data.text.load_text`), or of the JSONL
    file that replaces it. Raises DataError when it cannot be read."""
    if jsonl:
        return [file_label(jsonl)]
    from qjax.data.text import load_text

    with recording() as sources:
        load_text(dataset, split, data_dir)
    return sources.labels()


def calibration_identity(calibration, data_dir: Optional[str | os.PathLike] = None) -> dict:
    """What a calibrated result depends on in its calibration: {"settings": the fields of
    `calibration` (a mapping or ConfigDict like `qjax.data.corpus.CalibrationData`: dataset, split,
    num_windows, seqlen, seed, optional jsonl), "data": the labels of the corpus it samples}."""
    settings = calibration.to_dict() if hasattr(calibration, "to_dict") else dict(calibration)
    return {"settings": settings, "data": corpus_sources(settings["dataset"], settings["split"], data_dir,
                                                         jsonl=settings.get("jsonl") or None)}


__all__ = ["calibration_identity", "corpus_sources", "Sources", "recording", "record_file", "record_hub", "hub_revision", "file_label", "describe",
           "task_sources"]
