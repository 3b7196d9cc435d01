"""The report says when a model's float reference is read from a quantized GGUF file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gguf
import numpy as np

REPO = Path(__file__).resolve().parents[2]


def _analyze():
    sys.path.insert(0, str(REPO / "experiments"))
    spec = importlib.util.spec_from_file_location("analyze_script", REPO / "experiments" / "analyze.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gguf(path: Path, quantized: bool) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    if quantized:  # two matrices on llama.cpp's Q8_0 grid, one float matrix, one float vector
        for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):
            writer.add_tensor(name, gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("token_embd.weight", w)
    writer.add_tensor("output_norm.weight", np.ones(64, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_quantized_gguf_reference_is_noted(tmp_path):
    analyze = _analyze()
    quantized, plain = _gguf(tmp_path / "q.gguf", True), _gguf(tmp_path / "f.gguf", False)
    rows = [{"model": str(quantized)}, {"model": str(plain)}, {"model": "some/hub-id"}]
    notes = analyze.reference_notes(rows)
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"{quantized}: ") and "Q8_0 (2 matrices)" in notes[0] and "F32" not in notes[0]
