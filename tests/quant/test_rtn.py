"""RTN against an independent numpy implementation; bad input; a tiny model runs under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.models.config import ModelConfig
from qjax.models.llama import forward, init_params
from qjax.formats.qarray import QArray
from qjax.quant.rtn import quantize_rtn, rtn_quantize_params
from qjax.quant.rules import DEFAULT_WEIGHT_PATTERN
from qjax.formats.spec import WeightQuantSpec


def numpy_rtn(w: np.ndarray, bits: int, group_size, symmetric: bool):
    """Reference RTN: (codes, dequantized) with GPTQ's min-max conventions and fp16 statistics."""
    n_in = w.shape[0]
    maxq = 2 ** bits - 1
    if group_size == -1:
        slices, per_tensor = [(0, n_in)], True
    else:
        g = n_in if group_size is None else group_size
        slices, per_tensor = [(a, min(a + g, n_in)) for a in range(0, n_in, g)], False
    codes = np.zeros(w.shape, np.int64)
    deq = np.zeros(w.shape, np.float32)
    for a, b in slices:
        blk = w[a:b]
        axis = None if per_tensor else 0
        if symmetric:
            s = np.float16(2 * np.abs(blk).max(axis=axis) / maxq).astype(np.float32)
            z = 2 ** (bits - 1)
        else:
            lo = np.minimum(blk.min(axis=axis), 0)
            hi = np.maximum(blk.max(axis=axis), 0)
            s = np.float16((hi - lo) / maxq).astype(np.float32)
            s = np.where(s > 0, s, 1).astype(np.float32)
            z = np.clip(np.round(-lo / s), 0, maxq)
        q = np.clip(np.round(blk / s + z), 0, maxq)
        codes[a:b] = q
        deq[a:b] = s * (q - z)
    return codes, deq


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [None, -1, 48])  # 48: two full groups and a partial one of 4 rows
@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_against_numpy(bits, group_size, symmetric):
    rng = np.random.default_rng(bits * 7 + (group_size or 0))
    w = (rng.normal(size=(100, 12)) * 0.05).astype(np.float32)
    spec = WeightQuantSpec(bits, group_size=group_size, symmetric=symmetric)
    qa = quantize_rtn(w, spec)
    ref_codes, ref_deq = numpy_rtn(w, bits, group_size, symmetric)
    np.testing.assert_array_equal(np.asarray(qa.unpacked_codes()), ref_codes)
    np.testing.assert_allclose(np.asarray(qa.dequantize()), ref_deq, rtol=1e-6, atol=1e-9)
    n_groups = {None: 1, -1: 1, 48: 3}[group_size]
    assert qa.scale.shape == ((1, 1) if group_size == -1 else (n_groups, 12))


def test_rtn_clip_search_reduces_error():
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, size=(256, 16)).astype(np.float32) * 0.02
    plain = quantize_rtn(w, WeightQuantSpec(3, group_size=64))
    clip = quantize_rtn(w, WeightQuantSpec(3, group_size=64, clip_search=True))
    e_plain = np.sum((np.asarray(plain.dequantize()) - w) ** 2)
    e_clip = np.sum((np.asarray(clip.dequantize()) - w) ** 2)
    assert e_clip < 0.9 * e_plain


def test_rtn_nf4_and_companded_shapes_and_error():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(128, 8)).astype(np.float32)
    for spec in [WeightQuantSpec(4, 64, symmetric=True, grid="nf4"),
                 WeightQuantSpec(4, 64, symmetric=True, grid="companded")]:
        qa = quantize_rtn(w, spec)
        assert qa.zero is None and qa.codebook.shape == (16,)
        rel = np.linalg.norm(np.asarray(qa.dequantize()) - w) / np.linalg.norm(w)
        assert rel < 0.15


def test_bad_input_names_the_parameter():
    w = np.zeros((64, 4), np.float32)
    w[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"layers_0/mlp/up_proj/kernel: weight holds 1 NaN/Inf.*\[3, 1\]"):
        quantize_rtn(w, WeightQuantSpec(4), path="layers_0/mlp/up_proj/kernel")
    w[3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN/Inf"):
        quantize_rtn(w, WeightQuantSpec(4))
    with pytest.raises(ValueError, match=r"k \(64, 4\): WeightQuantSpec: group_size 128 exceeds the input dimension 64"):
        quantize_rtn(np.zeros((64, 4), np.float32), WeightQuantSpec(4, group_size=128), path="k")
    with pytest.raises(ValueError, match="expected an \\(in, out\\) kernel"):
        quantize_rtn(np.zeros((4,), np.float32), WeightQuantSpec(4))


TINY = ModelConfig("llama", vocab_size=64, hidden_size=40, intermediate_size=72, num_layers=1, num_heads=4,
                   num_kv_heads=2, head_dim=10, tie_word_embeddings=True)


def test_tiny_model_forward_with_qarray_leaves_under_jit():
    params = init_params(TINY, jax.random.PRNGKey(0))
    qparams, report = rtn_quantize_params(params, [(DEFAULT_WEIGHT_PATTERN, WeightQuantSpec(8))])
    assert len(report.transformed) == 7 and not report.unused_rules
    assert isinstance(qparams["layers_0"]["mlp"]["down_proj"]["kernel"], QArray)
    assert not isinstance(qparams["embed"]["embedding"], QArray)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(2, 9)), jnp.int32)
    ref, _ = forward(params, tokens, TINY)
    out, _ = forward(qparams, tokens, TINY)
    assert out.shape == ref.shape and bool(jnp.all(jnp.isfinite(out)))
    # W8 per channel: the logits move, but by less than 2% of their range
    err = float(jnp.max(jnp.abs(out - ref)))
    assert 0 < err < 0.02 * float(jnp.max(jnp.abs(ref)))


@pytest.mark.slow
def test_smollm2_rtn_perplexity(smollm2):
    """W8 per channel stays within 1% of float perplexity; W4 g128 asym is worse but within 60%
    (measured on 4 windows: float 20.04, W8 20.05, W4 g128 26.70, W3 g128 90.2)."""
    from qjax.eval.perplexity import perplexity

    config, params, tokenizer = smollm2
    base = perplexity(params, config, tokenizer, seqlen=2048, max_windows=2, progress=False)["ppl"]
    w8, _ = rtn_quantize_params(params, [(DEFAULT_WEIGHT_PATTERN, WeightQuantSpec(8))])
    ppl8 = perplexity(w8, config, tokenizer, seqlen=2048, max_windows=2, progress=False)["ppl"]
    w4, _ = rtn_quantize_params(params, [(DEFAULT_WEIGHT_PATTERN, WeightQuantSpec(4, group_size=128))])
    ppl4 = perplexity(w4, config, tokenizer, seqlen=2048, max_windows=2, progress=False)["ppl"]
    assert abs(ppl8 / base - 1) < 0.01
    assert 1.05 * base < ppl4 < 1.6 * base
