"""Reading task files with one clear error per problem (missing file, malformed line or field)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Optional

from qjax.data.paths import DataError, data_file


def task_file(relative: str, data_dir: Optional[str | os.PathLike]) -> Path:
    """`data_dir / relative` (data_dir defaults to $QJAX_DATA_DIR); DataError if missing."""
    return data_file(relative, data_dir)


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per non-blank line; DataError naming file and line otherwise."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON line: {e}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON: {e}") from None


def read_csv(path: Path, num_fields: int) -> list[list[str]]:
    """Rows of a header-less CSV, each with exactly `num_fields` fields."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    for i, row in enumerate(rows, 1):
        if len(row) != num_fields:
            raise DataError(f"{path}: row {i} has {len(row)} fields, expected {num_fields}")
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


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
