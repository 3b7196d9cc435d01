"""Where qjax caches derived artifacts (GGUF-built tokenizers, compiled CPU kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$QJAX_CACHE_DIR, or ~/.cache/qjax."""
    return Path(os.environ.get("QJAX_CACHE_DIR", Path.home() / ".cache" / "qjax"))
