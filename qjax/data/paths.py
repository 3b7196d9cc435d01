"""Where evaluation data lives: a flag value, else $QJAX_DATA_DIR."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


class DataError(ValueError):
    """A dataset name is unknown, or its file is missing or malformed. The message names which."""


def data_dir(override: Optional[str | os.PathLike] = None) -> Path:
    """The data directory: `override` if given, else $QJAX_DATA_DIR; it must exist."""
    value = override if override is not None else os.environ.get("QJAX_DATA_DIR")
    if not value:
        raise DataError("no data directory: pass --data_dir or set QJAX_DATA_DIR (e.g. ../shared/data)")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist")
    return path


def data_file(relative: str, override: Optional[str | os.PathLike] = None) -> Path:
    """`data_dir(override) / relative`, which must be an existing file."""
    path = data_dir(override) / relative
    if not path.is_file():
        raise DataError(f"data file {path} is missing")
    return path
