"""Variants of the families beyond test_families' logits and decoding checks: LongRoPE's choice of
short or long factors (and its attention factor), the two tensor layouts of multimodal Gemma 3."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from qjax.checkpoints import CheckpointError, load_model
from qjax.models import forward

from family_tiny import VOCAB, save_family


def test_longrope_switches_to_long_factors_past_the_original_length(tmp_path):
    model = save_family("phi3_longrope", tmp_path)
    config, params, _ = load_model(str(tmp_path))
    scaling = config.rope_scaling
    assert scaling.rope_type == "longrope" and scaling.original_max_position_embeddings == 12
    assert math.isclose(scaling.attention_factor, math.sqrt(1 + math.log(48 / 12) / math.log(12)))
    only_short = dataclasses.replace(
        config, rope_scaling=dataclasses.replace(scaling, long_factor=scaling.short_factor))
    for length, uses_long in ((12, False), (20, True)):
        tokens = np.random.default_rng(length).integers(0, VOCAB, size=(1, length)).astype(np.int32)
        with torch.no_grad():
            expected = model(torch.from_numpy(tokens).long()).logits.numpy()
        np.testing.assert_allclose(np.asarray(forward(params, tokens, config)[0]), expected, atol=1e-4, rtol=0)
        short_err = np.abs(np.asarray(forward(params, tokens, only_short)[0]) - expected).max()
        assert (short_err > 1e-3) == uses_long, (length, short_err)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["rope_parameters"]["long_factor"] = raw["rope_parameters"]["long_factor"][:-1]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="short_factor and long_factor of one length"):
        load_model(str(tmp_path))
    raw["rope_parameters"]["long_factor"] = raw["rope_parameters"]["short_factor"] = [1.0] * 3
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="longrope has 3 factors per frequency, the rotary dim 8 needs 4"):
        load_model(str(tmp_path))


def test_multimodal_gemma3_reads_both_text_layouts(tmp_path):
    """transformers 5 saves language_model.model.*; newer hub files hold model.language_model.*."""
    save_family("gemma3_multimodal", tmp_path)
    config, params, _ = load_model(str(tmp_path))
    assert config.architecture == "gemma3" and config.num_layers == 2
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.startswith("vision_tower.") for k in tensors)  # present in the file, not read
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "config.json").write_bytes((tmp_path / "config.json").read_bytes())
    newer = {k.replace("language_model.model.", "model.language_model.").replace("vision_tower.", "model.vision_tower."): v
             for k, v in tensors.items()}
    save_file(newer, str(renamed / "model.safetensors"))
    _, params2, _ = load_model(str(renamed))
    tokens = np.arange(10, dtype=np.int32)[None]
    np.testing.assert_array_equal(np.asarray(forward(params2, tokens, config)[0]),
                                  np.asarray(forward(params, tokens, config)[0]))
