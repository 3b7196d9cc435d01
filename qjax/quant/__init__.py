"""Weight quantization core: specs, grids, packed quantized arrays, rules, RTN, storage.

  WeightQuantSpec      (spec.py)     static description of one weight's quantization
  make_grid            (grids.py)    fit / quantize / dequantize on uniform, NF4, companded grids
  QArray, QStat, Outliers, SecondLevelSpec, quantize_stat (qarray.py)  the quantized kernel leaf
  pack, unpack         (packing.py)  2/3/4/8-bit packing along axis 0
  map_params_by_rule, DEFAULT_WEIGHT_PATTERN (rules.py)  (regex, spec) rules, first match wins
  quantize_rtn, rtn_quantize_params (rtn.py)  round-to-nearest
  save_params, restore_params, params_nbytes, params_bits_per_param (storage.py)
Calibrated methods (GPTQ, SpQR, AWQ, ...) live in their own modules of this package.
"""

from qjax.quant.grids import CodebookGrid, UniformGrid, expand_stat, make_grid
from qjax.quant.packing import pack, packed_length, unpack
from qjax.quant.qarray import Outliers, QArray, QStat, SecondLevelSpec, quantize_stat
from qjax.quant.rtn import quantize_rtn, rtn_quantize_params
from qjax.quant.rules import (DEFAULT_WEIGHT_PATTERN, RuleReport, compile_rules, default_rules,
                              flatten_params, map_params_by_rule)
from qjax.quant.spec import WeightQuantSpec
from qjax.quant.storage import (params_bits_per_param, params_nbytes, params_numel, restore_params,
                                save_params)

__all__ = ["WeightQuantSpec", "make_grid", "UniformGrid", "CodebookGrid", "expand_stat", "pack",
           "unpack", "packed_length", "QArray", "QStat", "Outliers", "SecondLevelSpec", "quantize_stat",
           "quantize_rtn", "rtn_quantize_params", "DEFAULT_WEIGHT_PATTERN", "RuleReport",
           "compile_rules", "default_rules", "flatten_params", "map_params_by_rule", "save_params",
           "restore_params", "params_nbytes", "params_numel", "params_bits_per_param"]
