"""Pallas kernels for TPU (Mosaic) and GPU (Triton), each beside its pure-jnp reference.

  dequant_matmul   (dequant_matmul.py)  x @ W for b-bit packed codes (2/3/4/8) with per-group scales
                                         and zero points or a codebook, read as stored
  int8_matmul      (int8_matmul.py)     W8A8 / W4A8: int8 activations x int8 weights -> int32, then
                                         per-token x per-channel/group scales
  quantized_kv_decode_attention (kv_attention.py)  flash-decoding over a packed KV8/4/2 cache, GQA
  reference        (reference.py)       the jnp references of all three
  layout           (layout.py)          how packed codes are read: units, planes, block choices

Every kernel takes `platform` ("tpu" or "gpu") and `interpret`: the TPU variant runs a grid with the
reduction as its last axis and a VMEM accumulator, the GPU variant loops over the reduction inside
the kernel (Triton programs are independent); with `interpret=True` either runs on any backend
through Pallas' interpreter. Imports only jax and numpy; qjax adapts its QArrays in `qjax.ops`.
"""

from pallas_kernels.dequant_matmul import dequant_matmul
from pallas_kernels.int8_matmul import INT_BITS, int8_matmul, quantize_rows
from pallas_kernels.kv_attention import KV_BITS, quantized_kv_decode_attention, supports_kv
from pallas_kernels.layout import PLATFORMS, supports_codes

__all__ = ["dequant_matmul", "int8_matmul", "quantize_rows", "quantized_kv_decode_attention",
           "PLATFORMS", "INT_BITS", "KV_BITS", "supports_codes", "supports_kv"]
