"""Perturbation kinds against numpy on small arrays: sizes, signs, selections, determinism, errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.perturb import kinds as K

RNG = np.random.default_rng(0)
# heavy-tailed values (log-normal magnitudes, random signs) so small and large elements differ a lot
X = (RNG.standard_normal((48, 40)) * np.exp(RNG.standard_normal((48, 40)))).astype(np.float32)
KEY = jax.random.key(7)
INTENSITY_KINDS = [K.Gaussian(), K.Uniform(), K.Rademacher(), K.Proportional(), K.Enlarge(), K.Shrink(),
                   K.Confined(share=0.2), K.Confined(share=0.2, largest=True),
                   K.Confined(share=0.3, noise="proportional")]


def np_groups(x: np.ndarray, granularity: str) -> np.ndarray:
    """Independent numpy grouping: list of flat groups."""
    if granularity == "tensor":
        return x.reshape(1, -1)
    if granularity == "channel":
        return np.stack([x[..., j].ravel() for j in range(x.shape[-1])])
    return x.reshape(-1, x.shape[-1])


def np_rel_l2(x, y, granularity="tensor"):
    gx = np_groups(np.asarray(x, np.float64), granularity)
    gy = np_groups(np.asarray(y, np.float64), granularity)
    return np.linalg.norm(gy - gx, axis=1) / np.linalg.norm(gx, axis=1)


@pytest.mark.parametrize("kind", INTENSITY_KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize("intensity", [0.0, 0.05, 0.4])
def test_relative_l2_equals_intensity(kind, intensity):
    y = np.asarray(kind(X, intensity, KEY))
    assert y.shape == X.shape and y.dtype == X.dtype
    np.testing.assert_allclose(np_rel_l2(X, y), intensity, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("granularity", ["channel", "row"])
@pytest.mark.parametrize("cls", [K.Gaussian, K.Proportional, K.Shrink])
def test_relative_l2_per_group(cls, granularity):
    x3 = X.reshape(4, 12, 40)
    kind = cls(granularity=granularity)
    y = np.asarray(kind(x3, 0.25, KEY))
    rel = np_rel_l2(x3, y, granularity)
    assert rel.shape == ((40,) if granularity == "channel" else (48,))
    np.testing.assert_allclose(rel, 0.25, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(K.relative_l2(x3, y, granularity)), rel, rtol=1e-5)


def _fit_scale(delta, noise):
    """Least-squares c with delta ~ c * noise, and the residual relative to delta."""
    c = float(np.sum(delta * noise) / np.sum(noise * noise))
    return c, np.linalg.norm(delta - c * noise) / np.linalg.norm(delta)


def test_noise_families_are_what_they_claim():
    k1, k2 = KEY, jax.random.key(8)
    big = (RNG.standard_normal((200, 300))).astype(np.float32)
    d_gauss = np.asarray(K.Gaussian()(big, 0.3, k1)) - big
    d_unif = np.asarray(K.Uniform()(big, 0.3, k1)) - big
    d_rad = np.asarray(K.Rademacher()(big, 0.3, k1)) - big
    kurt = lambda d: float(np.mean(d ** 4) / np.mean(d ** 2) ** 2)
    assert abs(kurt(d_gauss) - 3.0) < 0.1
    assert abs(kurt(d_unif) - 1.8) < 0.05
    np.testing.assert_allclose(np.abs(d_rad), np.abs(d_rad).mean(), rtol=1e-4)  # +-c everywhere
    # additive noise ignores x; proportional noise is |x| times a standard normal
    z = np.asarray(jax.random.normal(k2, (1, X.size), jnp.float32)).reshape(X.shape)
    d_prop = np.asarray(K.Proportional()(X, 0.3, k2)) - X
    _, resid = _fit_scale(d_prop, np.abs(X) * z)
    assert resid < 1e-5


def test_enlarge_and_shrink_signs():
    xz = X.copy()
    xz[0, :5] = 0.0
    y_up = np.asarray(K.Enlarge()(xz, 0.5, KEY))
    y_dn = np.asarray(K.Shrink()(xz, 0.5, KEY))
    assert np.all(np.abs(y_up) >= np.abs(xz)) and np.all(np.sign(y_up) == np.sign(xz))
    assert np.all(np.abs(y_dn) <= np.abs(xz) + 1e-7) and np.all(y_dn * xz >= 0)
    assert np.mean(np.abs(y_up) > np.abs(xz)) > 0.99 and np.mean(np.abs(y_dn) < np.abs(xz)) > 0.99
    # a shrink close to 1 zeroes most of the tensor but never flips a sign
    y_dn = np.asarray(K.Shrink()(xz, 0.99, KEY))
    np.testing.assert_allclose(np_rel_l2(xz, y_dn), 0.99, rtol=1e-4)
    assert np.all(y_dn * xz >= 0)


@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_confined_touches_only_the_share(largest, granularity):
    kind = K.Confined(share=0.25, largest=largest, granularity=granularity)
    y = np.asarray(kind(X, 0.3, KEY))
    changed = np_groups(y != X, granularity)
    mags = np_groups(np.abs(X), granularity)
    n = mags.shape[1]
    k = round(0.25 * n)
    for row_changed, row_mag in zip(changed, mags):
        order = np.argsort(row_mag, kind="stable")
        chosen = order[-k:] if largest else order[:k]
        expected = np.zeros(n, bool)
        expected[chosen] = True
        assert np.array_equal(row_changed, expected)


@pytest.mark.parametrize("share", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_clip_share(share, granularity):
    y = np.asarray(K.Clip(granularity=granularity)(X, share, KEY))
    gx, gy = np_groups(X, granularity), np_groups(y, granularity)
    n = gx.shape[1]
    k = int(np.round(share * n))
    for rx, ry in zip(gx, gy):
        order = np.argsort(np.abs(rx), kind="stable")
        top, rest = order[n - k:], order[:n - k]
        t = np.abs(rx[rest]).max()
        np.testing.assert_array_equal(ry[rest], rx[rest])
        np.testing.assert_allclose(ry[top], np.sign(rx[top]) * t)
        assert np.sum(ry != rx) == k  # continuous data: no ties with the threshold


def test_clip_with_ties_is_exactly_k_elements_at_most():
    tied = np.round(X * 2) / 2  # quantized values: many ties
    y = np.asarray(K.Clip()(tied, 0.1, KEY))
    k = int(np.round(0.1 * X.size))
    assert np.sum(y != tied) <= k
    assert np.abs(y).max() == np.sort(np.abs(tied).ravel())[::-1][k]


def test_quant_error_kind_matches_numpy_rounding():
    @dataclasses.dataclass(frozen=True)
    class QuarterGrid:
        name = "quarter"

        def __call__(self, x):
            return jnp.round(x * 4) / 4

    kind = K.QuantError(quantize=QuarterGrid())
    q = np.round(X * 4) / 4
    natural = float(kind.natural_intensity(X)[0])
    np.testing.assert_allclose(natural, np_rel_l2(X, q)[0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(kind(X, natural, KEY)), q, atol=1e-5)
    half = np.asarray(kind(X, natural / 2, KEY))
    np.testing.assert_allclose(half, X + (q - X) / 2, atol=1e-5)
    assert kind.name == "quanterror[quarter]"


def test_determinism_and_key_dependence():
    for kind in INTENSITY_KINDS:
        a = np.asarray(kind(X, 0.2, jax.random.key(3)))
        b = np.asarray(kind(X, 0.2, jax.random.key(3)))
        c = np.asarray(kind(X, 0.2, jax.random.key(4)))
        assert np.array_equal(a, b), kind.name
        assert not np.array_equal(a, c), kind.name


def test_traced_amount_matches_eager_and_bfloat16():
    for kind in (K.Gaussian(), K.Shrink(), K.Clip()):
        eager = np.asarray(kind(X, 0.1, KEY))
        traced = np.asarray(jax.jit(lambda a, k: kind(X, a, k))(0.1, KEY))
        np.testing.assert_allclose(traced, eager, rtol=1e-5, atol=1e-6)
    y = K.Gaussian()(jnp.asarray(X, jnp.bfloat16), 0.1, KEY)
    assert y.dtype == jnp.bfloat16


def test_bad_inputs():
    with pytest.raises(ValueError, match="intensity must be in \\[0, inf\\), got -0.1"):
        K.Gaussian()(X, -0.1, KEY)
    with pytest.raises(ValueError, match="intensity must be in"):
        K.Gaussian()(X, float("nan"), KEY)
    with pytest.raises(ValueError, match="shrink: intensity must be in \\[0, 1\\)"):
        K.Shrink()(X, 1.0, KEY)
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="clip: share must be in \\(0, 1\\)"):
            K.Clip()(X, bad, KEY)
        with pytest.raises(ValueError, match="Confined: share must be in \\(0, 1\\)"):
            K.Confined(share=bad)
    with pytest.raises(ValueError, match="granularity must be one of"):
        K.Gaussian(granularity="column")
    with pytest.raises(ValueError, match="noise must be one of"):
        K.Confined(noise="laplace")
    with pytest.raises(ValueError, match="must be a scalar"):
        K.Gaussian()(X, np.array([0.1, 0.2]), KEY)
    with pytest.raises(ValueError, match="unknown perturbation kind"):
        K.make_kind("salt")
    with pytest.raises(ValueError, match="needs a callable"):
        K.QuantError()
    # a traced invalid amount cannot raise: the result is NaN instead of a silent wrong value
    out = jax.jit(lambda a: K.Gaussian()(X, a, KEY))(-1.0)
    assert np.all(np.isnan(np.asarray(out)))
    out = jax.jit(lambda a: K.Clip()(X, a, KEY))(0.0)
    assert np.all(np.isnan(np.asarray(out)))
