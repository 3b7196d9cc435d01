"""Bit packing against numpy's packbits (little bit order) and a hand-worked 3-bit example."""

import jax
import numpy as np
import pytest

from qjax.formats.packing import pack, packed_length, unpack


def numpy_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Independent reference: LSB-first bit stream of each column through np.packbits."""
    n = codes.shape[0]
    flat = codes.reshape(n, -1).astype(np.uint8)
    cols = []
    for j in range(flat.shape[1]):
        stream = np.unpackbits(flat[:, j:j + 1], axis=1, bitorder="little")[:, :bits].reshape(-1)
        cols.append(np.packbits(stream, bitorder="little"))
    return np.stack(cols, axis=1).reshape((-1,) + codes.shape[1:])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [1, 8, 13, 577])
def test_roundtrip_and_numpy_layout(bits, n):
    rng = np.random.default_rng(n * 10 + bits)
    codes = rng.integers(0, 2 ** bits, size=(n, 3), dtype=np.uint8)
    packed = np.asarray(pack(codes, bits))
    assert packed.dtype == np.uint8
    assert packed.shape == (-(-n * bits // 8), 3) == (packed_length(n, bits), 3)
    np.testing.assert_array_equal(packed, numpy_pack(codes, bits))
    np.testing.assert_array_equal(np.asarray(unpack(packed, bits, n)), codes)


def test_one_dim_and_jit():
    codes = np.arange(21, dtype=np.uint8) % 8
    packed = jax.jit(pack, static_argnums=1)(codes, 3)
    assert packed.shape == (8,)  # 63 bits
    np.testing.assert_array_equal(np.asarray(jax.jit(unpack, static_argnums=(1, 2))(packed, 3, 21)), codes)


def test_three_bit_hand_worked_bytes():
    # stream (LSB first): 1 0 0 | 0 1 0 | 1 1 0 | 0 0 1 | 1 0 1 | 0 1 1 | 1 1 1 | 0 0 0
    # byte 0 = bits 0-7  = 1,0,0,0,1,0,1,1 -> 1 + 16 + 64 + 128 = 209
    # byte 1 = bits 8-15 = 0,0,0,1,1,0,1,0 -> 8 + 16 + 64 = 88
    # byte 2 = bits 16-23 = 1,1,1,1,1,0,0,0 -> 31
    codes = np.array([1, 2, 3, 4, 5, 6, 7, 0], np.uint8)
    assert np.asarray(pack(codes, 3)).tolist() == [209, 88, 31]
    # three codes 7, 7, 7 = nine one-bits: 0xFF then 0x01 (the unused high bits are zero)
    assert np.asarray(pack(np.array([7, 7, 7], np.uint8), 3)).tolist() == [255, 1]
    assert np.asarray(unpack(np.array([209, 88, 31], np.uint8), 3, 8)).tolist() == codes.tolist()


def test_four_and_two_bit_hand_worked_bytes():
    assert np.asarray(pack(np.array([0x3, 0xA, 0xF], np.uint8), 4)).tolist() == [0xA3, 0x0F]
    assert np.asarray(pack(np.array([1, 2, 3, 0, 3], np.uint8), 2)).tolist() == [0b00111001, 0b11]


def test_bad_input():
    with pytest.raises(ValueError, match="bits must be one of"):
        pack(np.zeros(4, np.uint8), 5)
    with pytest.raises(ValueError, match="take 3 bytes"):
        unpack(np.zeros(4, np.uint8), 3, 8)
    with pytest.raises(ValueError, match="uint8"):
        unpack(np.zeros(3, np.int32), 3, 8)
