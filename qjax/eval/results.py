"""Append-only JSONL results store that survives crashes.

One row per (model, transform, task, metric). Rows are appended with a single `write` of a complete
line followed by `fsync`, so after a crash (even `kill -9`) the file holds whole rows plus at most one
partial trailing line; opening the store truncates that partial line, so no half-written row survives.
A run asks `store.has(key)` before doing work and skips what is already there, so a resumed run never
repeats or loses a finished result.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Optional

KEY_FIELDS = ("model", "transform", "task", "metric")


def row_key(row: dict) -> tuple:
    """The identity of a result row: (model, transform, task, metric)."""
    return tuple(str(row[f]) for f in KEY_FIELDS)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git describe --always --dirty` of the qjax checkout when this module was imported (cached),
    or 'unknown' outside git."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


code_version()  # read at import: the version of the code this process runs, not of a later checkout


def make_row(*, model: str, transform: str, task: str, metric: str, value: float,
             stderr: Optional[float] = None, items: Optional[int] = None, seconds: Optional[float] = None,
             config: Optional[dict] = None, **extra: Any) -> dict:
    """A result row with the full config, value, standard error, item count, wall time and code version."""
    row = {"model": model, "transform": transform, "task": task, "metric": metric,
           "value": float(value), "stderr": None if stderr is None else float(stderr),
           "items": items, "seconds": seconds, "config": config or {},
           "code_version": code_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    row.update(extra)
    return row


class ResultStore:
    """Append-only JSONL file of result rows; see the module docstring for the crash guarantees."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._keys = {row_key(r) for r in self.rows()}

    def _repair(self) -> None:
        """Drops a trailing partial line left by a crash in the middle of an append."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        with open(self.path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())

    def rows(self) -> Iterator[dict]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{self.path}:{lineno}: corrupt result row: {e}") from e

    def has(self, key: tuple) -> bool:
        return tuple(str(k) for k in key) in self._keys

    def append(self, row: dict) -> None:
        """Writes one complete row atomically with respect to crashes (single write + fsync)."""
        line = (json.dumps(row, sort_keys=True, default=_json_default) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._keys.add(row_key(row))


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
