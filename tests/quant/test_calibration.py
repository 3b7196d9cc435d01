"""Calibration windows, the block-by-block capture loop (checked against the whole model's sown
linear inputs) and the `quantize` entry point's dispatch and errors."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from qjax.models.llama import Decoder, linen_variables
from qjax.quant import calibration
from qjax.data.corpus import CalibrationData, calibration_tokens, load_jsonl_texts, sample_windows
from qjax.quant.calibration import copy_tree, quantize_blockwise, site_node
from qjax.formats.qarray import QArray
from qjax.quant.quantize import QuantizeConfig, quantize
from qjax.quant.rtn import quantize_rtn
from qjax.formats.spec import WeightQuantSpec

from calib_tiny import CONFIG, tiny_params, tiny_tokens

SITES = ("attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/o_proj", "mlp/gate_proj", "mlp/up_proj",
         "mlp/down_proj")


def test_sample_windows_seeded_slices():
    ids = np.arange(1000, dtype=np.int32) * 7
    a = sample_windows(ids, 5, 64, seed=3)
    assert a.shape == (5, 64) and a.dtype == np.int32
    np.testing.assert_array_equal(a, sample_windows(ids, 5, 64, seed=3))
    assert not np.array_equal(a, sample_windows(ids, 5, 64, seed=4))
    for row in a:  # each window is a contiguous slice of the corpus
        start = row[0] // 7
        np.testing.assert_array_equal(row, ids[start:start + 64])
    np.testing.assert_array_equal(sample_windows(ids[:64], 2, 64, 0), np.stack([ids[:64]] * 2))
    with pytest.raises(ValueError, match="fewer than one window"):
        sample_windows(ids[:10], 1, 64, 0)


class _WordTokenizer:
    """Whitespace tokenizer with the `tokenizer(text, ...)["input_ids"]` interface."""

    def __call__(self, text, add_special_tokens=False, return_attention_mask=False):
        return {"input_ids": [len(w) for w in text.split()]}


def test_jsonl_calibration(tmp_path):
    path = tmp_path / "instr.jsonl"
    path.write_text("\n".join(json.dumps({"text": " ".join(["abc"] * 20 + ["de"] * 20)}) for _ in range(3)) + "\n")
    tokens = calibration_tokens(_WordTokenizer(), CalibrationData(jsonl=str(path), num_windows=4, seqlen=8, seed=1))
    assert tokens.shape == (4, 8) and set(np.unique(tokens)) <= {2, 3}
    assert len(load_jsonl_texts(path)) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"prompt": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'text'"):
        load_jsonl_texts(bad)
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON line"):
        load_jsonl_texts(bad)
    with pytest.raises(ValueError, match="num_windows must be a positive int"):
        CalibrationData(num_windows=0)


def _sown_inputs(params, tokens):
    """site path -> (N, T, in) inputs from one whole-model forward (the reference)."""
    _, state = Decoder(CONFIG).apply(linen_variables(params), jnp.asarray(tokens), mutable=["intermediates"])
    inter = state["intermediates"]
    return {f"layers_{i}/{s}": np.asarray(site_node(inter[f"layers_{i}"], s)["input"][0], np.float64)
            for i in range(CONFIG.num_layers) for s in SITES}


def test_capture_statistics_and_quantized_propagation():
    """Block 0's linears are calibrated on the float block's inputs; block 1 on the outputs of the
    QUANTIZED block 0: compare every statistic with the sown inputs of whole-model forwards of the
    float params (block 0) and of the params with block 0 quantized (block 1)."""
    params = tiny_params()
    tokens = tiny_tokens(5, 16)  # 5 windows in batches of 2 -> one compiled shape of 1 window
    spec = WeightQuantSpec(bits=3, group_size=16)
    seen = {}

    def block_fn(capture):
        seen[capture.layer] = (capture.hessians(), capture.channel_stats(), capture.linear_inputs(3))
        block = copy_tree(capture.params)
        for s in capture.sites():
            node = site_node(block, s)
            node["kernel"] = quantize_rtn(node["kernel"], spec)
        return block, {}

    new, infos = quantize_blockwise(params, CONFIG, tokens, block_fn, batch_size=2, progress=False)
    assert [i["layer"] for i in infos] == [0, 1]
    assert isinstance(new["layers_1"]["mlp"]["down_proj"]["kernel"], QArray)
    ref = _sown_inputs(params, tokens)
    ref.update({k: v for k, v in _sown_inputs(dict(params, layers_0=new["layers_0"]), tokens).items()
                if k.startswith("layers_1/")})
    for layer in (0, 1):
        hessians, stats, inputs = seen[layer]
        for s in SITES:
            x = ref[f"layers_{layer}/{s}"]
            flat = x.reshape(-1, x.shape[-1])
            h = flat.T @ flat / flat.shape[0]
            np.testing.assert_allclose(np.asarray(hessians[s]), h, rtol=2e-4, atol=2e-5 * np.abs(h).max())
            np.testing.assert_allclose(stats[s].absmean, np.abs(flat).mean(0), rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(stats[s].absmax, np.abs(flat).max(0), rtol=1e-5)
            np.testing.assert_allclose(np.asarray(inputs[s]), x[:3], rtol=1e-4, atol=1e-5)
    assert seen[0][0]["attn/q_proj"] is seen[0][0]["attn/v_proj"]  # shared input, one Hessian


def test_quantize_dispatch_and_errors():
    params = tiny_params()
    tokens = tiny_tokens(2, 16)
    q, report = quantize(params, CONFIG, {"method": "rtn", "bits": 4, "group_size": 16})
    assert report["quantized"] == 14 and report["bits"] == 4
    # 4-bit codes + fp16 scale and zero per group of 16 rows: 4 + 2 * 16 / 16 = 6 bits per weight
    assert report["bits_per_param"] == pytest.approx(6.0)
    assert report["model_bytes"] < report["float_model_bytes"]
    # weight reconstruction error against the numpy RTN reference (tests/quant/test_rtn.py)
    from test_rtn import numpy_rtn

    kernels = [params[f"layers_{i}"][g][n]["kernel"] for i in range(CONFIG.num_layers)
               for g, names in (("attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                ("mlp", ("gate_proj", "up_proj", "down_proj"))) for n in names]
    errors = [(np.sum((np.asarray(w, np.float64) - numpy_rtn(np.asarray(w), 4, 16, False)[1]) ** 2),
               np.sum(np.asarray(w, np.float64) ** 2)) for w in kernels]
    assert report["weight_rel_error"] == pytest.approx(
        np.sqrt(sum(e for e, _ in errors) / sum(n for _, n in errors)), rel=1e-5)
    assert report["weight_rel_error_mean"] == pytest.approx(np.mean([np.sqrt(e / n) for e, n in errors]),
                                                            rel=1e-5)
    q_pc, _ = quantize(params, CONFIG, QuantizeConfig(method="rtn", bits=8, group_size=None,
                                                      pattern=r"layers_0/attn/q_proj/kernel"))
    assert isinstance(q_pc["layers_0"]["attn"]["q_proj"]["kernel"], QArray)
    assert not isinstance(q_pc["layers_0"]["attn"]["k_proj"]["kernel"], QArray)
    with pytest.raises(ValueError, match="needs calibration_tokens"):
        quantize(params, CONFIG, {"method": "gptq"})
    with pytest.raises(ValueError, match="calibrates decoder-block linears only"):
        quantize(params, CONFIG, {"method": "gptq", "pattern": r"embed/embedding|layers_0/attn/q_proj/kernel"},
                 tokens)
    with pytest.raises(ValueError, match="selects no parameter"):
        quantize(params, CONFIG, {"method": "rtn", "pattern": "nothing"})
    with pytest.raises(ValueError, match="unknown method"):
        quantize(params, CONFIG, {"method": "hqq"})
    with pytest.raises(ValueError, match="unknown fields"):
        quantize(params, CONFIG, {"method": "rtn", "bitz": 4})
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize(params, CONFIG, {"method": "gptq", "bits": 5}, tokens)
    with pytest.raises(ValueError, match="nf4 is a 4-bit grid"):
        QuantizeConfig(method="nf4", bits=3)
    bad = copy_tree(params)
    bad["layers_1"]["mlp"]["up_proj"]["kernel"] = bad["layers_1"]["mlp"]["up_proj"]["kernel"].copy()
    bad["layers_1"]["mlp"]["up_proj"]["kernel"][2, 3] = np.nan
    with pytest.raises(ValueError, match=r"layers_1/mlp/up_proj/kernel: weight holds 1 NaN"):
        quantize(bad, CONFIG, {"method": "gptq", "bits": 4, "group_size": 16}, tokens)


@pytest.mark.parametrize("width", [7, 1024, 1031])
def test_gram_matches_numpy_below_and_above_the_block_split(width):
    a = np.random.default_rng(width).normal(size=(300, width)).astype(np.float32)
    want = a.astype(np.float64).T @ a.astype(np.float64)
    got = np.asarray(calibration.gram(jnp.asarray(a)))
    assert got.shape == (width, width)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    if width >= calibration.GRAM_SPLIT:  # the lower triangle is the mirrored upper one
        np.testing.assert_array_equal(got, got.T)
