"""tests/pallas reuses the tiny random Llama of tests/runtime (runtime_tiny.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
