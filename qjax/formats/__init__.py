"""Quantized array types and their grids: data and invariants only, no choice of kernel.

  WeightQuantSpec  (spec.py)     static description of one weight's quantization
  make_grid        (grids.py)    fit / quantize / dequantize on uniform, NF4, companded grids
  pack, unpack     (packing.py)  2/3/4/8-bit packing along axis 0
  QArray, QStat, Outliers, SecondLevelSpec, quantize_stat (qarray.py)  the quantized kernel leaf
"""

from qjax.formats.grids import CodebookGrid, UniformGrid, expand_stat, make_grid
from qjax.formats.packing import pack, packed_length, unpack
from qjax.formats.qarray import Outliers, QArray, QStat, SecondLevelSpec, quantize_stat
from qjax.formats.spec import WeightQuantSpec

__all__ = ["WeightQuantSpec", "make_grid", "UniformGrid", "CodebookGrid", "expand_stat", "pack",
           "unpack", "packed_length", "QArray", "QStat", "Outliers", "SecondLevelSpec", "quantize_stat"]
