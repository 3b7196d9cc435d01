"""Quantize / dequantize primitives against hand-worked examples and numpy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from qjax.ops import act_quant


def test_hand_worked_grids():
    x = jnp.asarray([[-1.0, 0.5, 0.25, 1.0]])
    # symmetric 2 bits: scale = 1 / (2^1 - 1) = 1, zero = 2; codes round(x + 2) = 1, 2 (2.5, to even), 2, 3
    scale, zero = act_quant.dynamic_params(x, 2, True, "token")
    np.testing.assert_array_equal(act_quant.quantize(x, scale, zero, 2), [[1, 2, 2, 3]])
    np.testing.assert_array_equal(act_quant.fake_quant(x, 2, True, "token"), [[-1, 0, 0, 1]])
    # symmetric 8 bits: scale = 1/127
    np.testing.assert_allclose(act_quant.fake_quant(x, 8, True, "tensor"),
                               np.round(np.asarray(x) * 127) / 127, rtol=1e-6)
    # asymmetric 2 bits on [1, 4]: scale 1, zero -1: exact for integers
    y = jnp.asarray([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(act_quant.fake_quant(y, 2, False, "token"), y)
    scale, zero = act_quant.dynamic_params(y, 2, False, "token")
    np.testing.assert_allclose([float(scale[0, 0]), float(zero[0, 0])], [1.0, -1.0])


@pytest.mark.parametrize("granularity,group", [("tensor", 0), ("token", 0), ("channel", 0), ("group", 8)])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_error_within_half_step(granularity, group, bits, symmetric):
    x = np.random.default_rng(bits).standard_normal((3, 5, 32)).astype(np.float32) * 3
    got = np.asarray(act_quant.fake_quant(jnp.asarray(x), bits, symmetric, granularity, group))
    # numpy reference of the range each element is quantized over
    xs = x.reshape(3, 5, 4, 8) if granularity == "group" else x
    axes = {"tensor": (0, 1, 2), "token": (2,), "channel": (0, 1), "group": (3,)}[granularity]
    if symmetric:
        step = np.abs(xs).max(axes, keepdims=True) / (2 ** (bits - 1) - 1)
    else:
        step = (xs.max(axes, keepdims=True) - xs.min(axes, keepdims=True)) / (2 ** bits - 1)
    step = np.broadcast_to(step, xs.shape).reshape(x.shape)
    assert np.all(np.abs(got - x) <= step / 2 * (1 + 1e-5) + 1e-6)
    assert np.abs(got - x).max() > step.max() / 8  # it did quantize


def test_bad_input():
    with pytest.raises(ValueError, match="bits must be one of"):
        act_quant.check_bits(5)
    with pytest.raises(ValueError, match="does not divide"):
        act_quant.fake_quant(jnp.zeros((2, 10)), 4, True, "group", 4)
    with pytest.raises(ValueError, match="granularity must be one of"):
        act_quant.fake_quant(jnp.zeros((2, 10)), 4, True, "row")
