"""Reading data files with one clear error per problem (missing file, malformed line or field).

The one reader of each format in qjax: JSONL (`read_jsonl`), JSON (`read_json`), header-less CSV
(`read_csv`), and a hub-format split file of any of parquet / JSONL / JSON-list (`read_records`).
Every error is a `DataError` naming the file (and line or record).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from qjax.data.paths import DataError, data_file
from qjax.data.provenance import record_file

RECORD_SUFFIXES = (".parquet", ".jsonl", ".json")


def task_file(relative: str, data_dir: Optional[str | os.PathLike]) -> Path:
    """`data_dir / relative` (data_dir defaults to $QJAX_DATA_DIR); DataError if missing."""
    return data_file(relative, data_dir)


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict]:
    """One JSON object per non-blank line, each having the `required` fields; at least one record.
    A path ending in ".gz" is read through gzip.

    DataError naming file and line for a missing or unreadable file, a line that is not JSON or not
    an object, or a missing field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} is missing")
    rows = []
    record_file(path)
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz"
              else open(path, encoding="utf-8")) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: malformed JSON line: {e}") from None
                check_fields(row, required, f"{path}:{lineno}")
                rows.append(row)
    except (OSError, EOFError) as e:  # gzip: not a gzip file, truncated
        kind = "gzip file" if path.suffix == ".gz" else "file"
        raise DataError(f"{path}: not a readable {kind}: {e}") from None
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


def read_json(path: str | os.PathLike) -> Any:
    """The decoded JSON document (a UTF-8 byte-order mark is allowed)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
        record_file(path)
        return data
    except FileNotFoundError:
        raise DataError(f"data file {path} is missing") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON: {e}") from None


def read_records(path: str | os.PathLike) -> list[dict]:
    """The rows of one split file in a hub layout: .parquet, .jsonl, or .json holding a list."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
            record_file(path)
            return rows
        except Exception as e:
            raise DataError(f"{path}: not a readable parquet file: {e}") from e
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records")
        return data
    raise DataError(f"{path}: unknown record file type (expected one of {RECORD_SUFFIXES})")


def read_csv(path: str | os.PathLike, num_fields: int) -> list[list[str]]:
    """Rows of a header-less CSV, each with exactly `num_fields` fields."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    record_file(path)
    for i, row in enumerate(rows, 1):
        if len(row) != num_fields:
            raise DataError(f"{path}: row {i} has {len(row)} fields, expected {num_fields}")
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


def check_fields(record: Any, required: Sequence[str], where: str) -> None:
    """DataError naming `where` unless `record` is a dict holding every field in `required`."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in required if f not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")


def field(row: dict, name: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """row[name], which must exist and be of `kind`; DataError naming `where` otherwise."""
    if name not in row:
        raise DataError(f"{where}: missing field {name!r}")
    value = row[name]
    if not isinstance(value, kind):
        raise DataError(f"{where}: field {name!r} should be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
