"""Append-only JSONL results store: crash-safe appends, readers that never write, one writer per run.

One row per (model, transform, task, metric, run id). Guarantees:
  * a writer appends a row with one `write` of a complete line followed by `fsync`, holding an
    exclusive `fcntl.flock` on the file, so appenders in several processes never interleave, and a
    crash (even `kill -9`) leaves whole rows plus at most one partial trailing line;
  * a writer, under that lock and before its own append, handles a trailing line without a newline:
    one that parses as a JSON object (a complete row whose newline was lost) is kept and ended with a
    newline; anything else (a row torn by a killed writer) is cut off;
  * readers (`read_rows`, `ResultStore.rows`) never modify the file: they skip a trailing line that
    does not parse (an append still in progress in another process, or a torn row) and keep one that
    does, so reading during a large append neither fails nor cuts the other process's row;
  * `ResultStore(path)` checks at construction that the file can be appended to (creating its
    folder), so a run fails before it computes anything rather than at its final append;
  * each row is echoed as one JSON line to `echo` (stdout by default) before it is appended, so a
    failed append still leaves the measurement in the run's output;
  * only a writer appends: `is_writer` (default: JAX process 0) makes every other process of a
    multi-host run a silent non-writer, so each row is written exactly once.
A run asks `store.has(key, run_id)` before doing work and skips what is already there. The run id
(`run_id(...)`) digests everything the rows depend on (settings, recipe or transform description,
calibration, data source), so a rerun with other settings computes new rows instead of keeping stale
ones; readers keep the later row of a key.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, TextIO

KEY_FIELDS = ("model", "transform", "task", "metric")
_TAIL_CHUNK = 1 << 16


class ResultsError(ValueError):
    """A results file cannot be written (its path, and why), or holds a corrupt row."""


def row_key(row: dict) -> tuple:
    """The identity of a result row: (model, transform, task, metric)."""
    return tuple(str(row[f]) for f in KEY_FIELDS)


def run_id(**parts: Any) -> str:
    """12 hex digits of SHA-256 over the canonical JSON of `parts` (sorted keys; non-JSON values by
    `str`): the identity of what a row depends on. Callers pass the model, the recipe's text (or the
    transform's description), the task, the settings that change its result, the calibration and the
    data source; values equal as JSON give equal ids."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


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
    """A result row with the full config, value, standard error, item count, wall time and code version.
    `extra` carries e.g. `run_id` and `data_source`."""
    row = {"model": model, "transform": transform, "task": task, "metric": metric,
           "value": float(value), "stderr": None if stderr is None else float(stderr),
           "items": items, "seconds": seconds, "config": config or {},
           "code_version": code_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    row.update(extra)
    return row


def _parse_object(line: bytes) -> Optional[dict]:
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def read_rows(path: str | os.PathLike) -> Iterator[dict]:
    """The rows of a results file, read without writing anything (a missing file has none).

    Every newline-terminated line must be a JSON object (ResultsError naming file and line
    otherwise); a last line without a newline is yielded if it parses and skipped if it does not
    (an append in progress, or a row torn by a crash that the next writer will cut off)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = _parse_object(line)
        if row is None:
            raise ResultsError(f"{path}:{lineno}: corrupt result row: {line[:80]!r}")
        yield row
    if tail.strip():
        row = _parse_object(tail)
        if row is not None:
            yield row


def _default_is_writer() -> bool:
    import jax

    return jax.process_index() == 0


class ResultStore:
    """Append-only JSONL file of result rows; see the module docstring for the guarantees.

    Args:
      path: the JSONL file (its folder is created).
      is_writer: whether this process appends (default: JAX process 0). A non-writer reads, answers
        `has`, and drops its appends, so each row of a multi-process run is written exactly once.
      echo: where each row is printed as one JSON line before it is appended (None: not printed).
    Raises ResultsError at construction when a writer cannot append to `path`.
    """

    def __init__(self, path: str | os.PathLike, *, is_writer: Optional[bool] = None,
                 echo: Optional[TextIO] = sys.stdout):
        self.path = Path(path)
        self.is_writer = _default_is_writer() if is_writer is None else bool(is_writer)
        self.echo = echo
        if self.is_writer:
            check_writable(self.path)
        self._keys: set = set()
        self._runs: set = set()
        for row in self.rows():
            self._remember(row)

    def _remember(self, row: dict) -> None:
        key = row_key(row)
        self._keys.add(key)
        self._runs.add((key, row.get("run_id")))

    def rows(self) -> Iterator[dict]:
        """The rows in file order (see `read_rows`: reading never writes)."""
        return read_rows(self.path)

    def has(self, key: tuple, run_id: Optional[str] = None) -> bool:
        """Whether a row of `key` = (model, transform, task, metric) is present; with `run_id`, a row
        of that key written by a run of that id."""
        key = tuple(str(k) for k in key)
        return key in self._keys if run_id is None else (key, run_id) in self._runs

    def append(self, row: dict) -> None:
        """Echoes the row, then (writers only) appends it as one line under the file lock + fsync."""
        line = json.dumps(row, sort_keys=True, default=_json_default)
        if self.echo is not None and self.is_writer:
            print(f"row: {line}", file=self.echo, flush=True)
        if self.is_writer:
            append_line(self.path, (line + "\n").encode("utf-8"))
        self._remember(row)


def check_writable(path: Path) -> None:
    """Creates `path`'s folder and opens `path` for appending (creating it empty if missing);
    ResultsError naming the path and the reason if either fails."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.close(fd)
    except OSError as e:
        raise ResultsError(f"results file {path} is not writable: {e.strerror or e}") from e


def check_writable_dir(folder: Path) -> None:
    """Creates `folder` and a file in it (then removes it); ResultsError naming the folder and the
    reason if either fails. For outputs other than the results file (checkpoints, reports)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT, 0o644))
        os.unlink(probe)
    except OSError as e:
        raise ResultsError(f"output directory {folder} is not writable: {e.strerror or e}") from e


def append_line(path: Path, line: bytes) -> None:
    """Appends one newline-terminated line under an exclusive flock, first ending or cutting off a
    trailing line left without newline (module docstring), then fsyncs."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _settle_tail(fd)
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


def _settle_tail(fd: int) -> None:
    """Under the writer lock: keep a parseable unterminated last line (add its newline), cut off an
    unparseable one."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    start = size
    while start > 0:  # find the last newline
        lo = max(0, start - _TAIL_CHUNK)
        chunk = os.pread(fd, start - lo, lo)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            start = lo + nl + 1
            break
        start = lo
    tail = os.pread(fd, size - start, start)
    if _parse_object(tail) is not None:
        os.write(fd, b"\n")
    else:
        os.ftruncate(fd, start)


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
