"""Activation perturbation and fake quantization transforms, alone and inside a tiny model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.models.llama import Decoder, linen_variables, forward
from qjax.ops.runtime import Runtime
from qjax.perturb import activations as A
from qjax.perturb.kinds import Clip, Gaussian

from perturb_tiny import CONFIG, tiny_params, tiny_windows

KEY = jax.random.key(5)


def test_site_id_is_stable_and_distinct():
    # blake2b-32 of the UTF-8 site name, little-endian, top bit cleared (fixed across processes)
    assert A.site_id("layers_3/attn/q_proj") == 934425055
    ids = {A.site_id(s) for s in A.linear_sites(CONFIG)}
    assert len(ids) == len(A.linear_sites(CONFIG)) == 7


def test_transform_folds_the_site_into_the_key():
    x = jax.random.normal(jax.random.key(0), (2, 8, 32))
    state = A.perturb_state(0.2, KEY)
    t = A.PerturbActivation(Gaussian(granularity="row"))
    a = t(x, site="layers_0/attn/q_proj", state=state)
    b = t(x, site="layers_0/attn/k_proj", state=state)
    expect = Gaussian(granularity="row")(x, 0.2, jax.random.fold_in(KEY, A.site_id("layers_0/attn/q_proj")))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(expect))
    assert not np.allclose(np.asarray(a), np.asarray(b))


def _intermediates(params, tokens, runtime, state):
    _, mutated = Decoder(CONFIG, runtime).apply(linen_variables(params), tokens, runtime_state=state,
                                                mutable=["intermediates"])
    return mutated["intermediates"]


def test_only_the_matched_site_is_perturbed_per_token():
    params, tokens = tiny_params(), tiny_windows(2, 12)
    site = "layers_0/mlp/down_proj"
    clean = _intermediates(params, tokens, Runtime(), None)
    rt = A.perturb_runtime(Gaussian(granularity="row"), CONFIG, pattern=site)
    pert = _intermediates(params, tokens, rt, A.perturb_state(0.3, KEY))
    get = lambda tree, s: np.asarray(tree[s.split("/")[0]][s.split("/")[1]][s.split("/")[2]]["input"][0])
    for s in A.linear_sites(CONFIG):
        if s == site:
            x, y = get(clean, s), get(pert, s)
            rel = np.linalg.norm((y - x).reshape(-1, x.shape[-1]), axis=1) / np.linalg.norm(
                x.reshape(-1, x.shape[-1]), axis=1)
            np.testing.assert_allclose(rel, 0.3, rtol=1e-4)
        else:  # every other site (all upstream of the last down_proj) is untouched
            np.testing.assert_array_equal(get(clean, s), get(pert, s))


def test_forward_zero_intensity_and_determinism():
    params, tokens = tiny_params(), tiny_windows(2, 12)
    clean, _ = forward(params, tokens, CONFIG)
    rt = A.perturb_runtime(Gaussian(granularity="row"), CONFIG)
    zero, _ = forward(params, tokens, CONFIG, rt, runtime_state=A.perturb_state(0.0, KEY))
    np.testing.assert_allclose(np.asarray(zero), np.asarray(clean), rtol=1e-5, atol=1e-5)
    a, _ = forward(params, tokens, CONFIG, rt, runtime_state=A.perturb_state(0.1, KEY))
    b, _ = forward(params, tokens, CONFIG, rt, runtime_state=A.perturb_state(0.1, KEY))
    c, _ = forward(params, tokens, CONFIG, rt, runtime_state=A.perturb_state(0.1, jax.random.key(6)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


def np_fake_quant(x, bits, power):
    x = np.asarray(x, np.float64)
    levels = 2 ** (bits - 1) - 1
    s = np.abs(x).max(axis=-1, keepdims=True)
    y = np.sign(x) * (np.abs(x) / s) ** power
    q = np.round(y * levels) / levels
    return s * np.sign(q) * np.abs(q) ** (1 / power)


@pytest.mark.parametrize("bits,power", [(8, 1.0), (8, 1 / 3), (4, 1.0), (4, 1 / 3)])
def test_fake_quant_activation_matches_numpy(bits, power):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 5, 64)) * np.exp(rng.standard_normal((3, 5, 64)))).astype(np.float32)
    y = np.asarray(A.FakeQuantActivation(bits, power)(jnp.asarray(x)))
    np.testing.assert_allclose(y, np_fake_quant(x, bits, power), rtol=2e-5, atol=1e-6)
    # distinct values per token never exceed the grid size; the row maxima are exact
    assert all(len(np.unique(row)) <= 2 ** bits - 1 for row in y.reshape(-1, 64))
    np.testing.assert_allclose(np.abs(y).max(-1), np.abs(x).max(-1), rtol=1e-6)


def test_companding_helps_small_values():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((64, 256)) * np.exp(rng.standard_normal((64, 256)))).astype(np.float32)
    small = np.abs(x) < np.quantile(np.abs(x), 0.5, axis=-1, keepdims=True)
    err = {p: np.abs(np.asarray(A.FakeQuantActivation(4, p)(jnp.asarray(x))) - x) for p in (1.0, 1 / 3)}
    assert err[1 / 3][small].mean() < 0.5 * err[1.0][small].mean()


def test_bad_inputs():
    with pytest.raises(ValueError, match="matches no linear site"):
        A.perturb_runtime(Gaussian(), CONFIG, pattern="layers_9/.*")
    with pytest.raises(ValueError, match="does not compile"):
        A.perturb_runtime(Gaussian(), CONFIG, pattern="layers_(")
    with pytest.raises(ValueError, match="runtime_state needs a 'perturb' entry"):
        A.PerturbActivation(Gaussian())(jnp.ones((2, 4)), site="s", state=None)
    with pytest.raises(ValueError, match="bits must be in"):
        A.FakeQuantActivation(bits=1)
    with pytest.raises(ValueError, match="power must be in"):
        A.FakeQuantActivation(power=0.0)
    # inside the jitted forward the share is traced: an invalid one poisons the logits with NaN
    rt = A.perturb_runtime(Clip(), CONFIG)
    logits, _ = forward(tiny_params(), tiny_windows(1, 8), CONFIG, rt,
                        runtime_state=A.perturb_state(0.0, KEY))
    assert np.all(np.isnan(np.asarray(logits)))
