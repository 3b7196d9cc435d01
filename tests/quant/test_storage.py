"""Orbax round trip of params with QArray leaves: bit-exact, and the bytes on disk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.formats.qarray import QArray, SecondLevelSpec
from qjax.quant.rtn import quantize_rtn
from qjax.formats.spec import WeightQuantSpec
from qjax.quant.storage import (StoredParamsError, params_bits_per_param, params_nbytes, params_numel, restore_params,
                                save_params)

# Measured on this format (orbax-checkpoint 0.12.8, uncompressed OCDBT): about 2.2 KiB per checkpoint
# plus about 400 B per array leaf (Orbax and JSON metadata), and up to ~5 KiB more when OCDBT leaves
# extra data files unmerged (seen under load: 60.3-65.2 KB for the same 43.9 KB of params). On
# SmolLM2-135M (170 MB) the whole overhead is 0.19%.
FIXED_OVERHEAD = 8192
PER_ARRAY_OVERHEAD = 512


def mixed_params():
    rng = np.random.default_rng(0)
    w = lambda *s: (rng.normal(size=s) * 0.05).astype(np.float32)  # noqa: E731
    codes = rng.integers(0, 8, size=(96, 40))
    spqr = QArray.from_codes(codes, rng.uniform(0.01, 0.1, (6, 40)), rng.integers(0, 8, (6, 40)).astype(float),
                             spec=WeightQuantSpec(3, group_size=16), second_level=SecondLevelSpec(),
                             outliers=(rng.choice(96, 30, replace=False), rng.integers(0, 40, 30),
                                       rng.normal(size=30)), outlier_dtype="float32")
    return {
        "embed": {"embedding": w(50, 96)},
        "layers_0": {
            "attn": {"q_proj": {"kernel": quantize_rtn(w(96, 96), WeightQuantSpec(4, group_size=32))},
                     "k_proj": {"kernel": quantize_rtn(w(96, 40), WeightQuantSpec(3, symmetric=True))},
                     "v_proj": {"kernel": spqr}},
            "mlp": {"up_proj": {"kernel": quantize_rtn(w(96, 80), WeightQuantSpec(4, 64, symmetric=True, grid="nf4"))},
                    "down_proj": {"kernel": quantize_rtn(w(80, 96), WeightQuantSpec(
                        3, 48, symmetric=True, grid="companded"))},
                    "gate_proj": {"kernel": quantize_rtn(w(96, 80), WeightQuantSpec(8, group_size=-1))}},
            "input_norm": {"scale": jnp.ones(96, jnp.bfloat16)},
        },
    }


def test_roundtrip_bit_exact_and_size(tmp_path):
    params = mixed_params()
    info = save_params(tmp_path / "ckpt", params)
    restored = restore_params(tmp_path / "ckpt")
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(restored)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    q = restored["layers_0"]["attn"]["v_proj"]["kernel"]
    assert q.spec == WeightQuantSpec(3, group_size=16) and q.outliers.nnz == 30
    np.testing.assert_array_equal(np.asarray(q.dequantize()),
                                  np.asarray(params["layers_0"]["attn"]["v_proj"]["kernel"].dequantize()))
    n_arrays = len(jax.tree_util.tree_leaves(params))
    assert info["nbytes"] == params_nbytes(params)
    assert info["nbytes"] <= info["disk_bytes"] <= (1.05 * info["nbytes"] + FIXED_OVERHEAD
                                                    + PER_ARRAY_OVERHEAD * n_arrays)


def test_params_nbytes_hand_counted():
    params = {"a": {"kernel": quantize_rtn(np.ones((256, 32), np.float32), WeightQuantSpec(4, group_size=128))},
              "norm": np.ones(32, np.float32), "emb": np.ones((10, 32), jnp.bfloat16)}
    # W4 g128: 256*32/2 codes + 2 groups * 32 * (2 B scale + 2 B zero); 32 float32; 320 bfloat16
    assert params_nbytes(params) == 4096 + 256 + 128 + 640
    assert params_numel(params) == 256 * 32 + 32 + 320
    assert params_bits_per_param(params) == 8 * 5120 / 8544


def test_errors(tmp_path):
    params = {"w": np.ones((4, 4), np.float32)}
    save_params(tmp_path / "c", params)
    with pytest.raises(FileExistsError, match="exists"):
        save_params(tmp_path / "c", params)
    save_params(tmp_path / "c", params, overwrite=True)
    with pytest.raises(StoredParamsError, match="not a qjax params checkpoint"):
        restore_params(tmp_path)
