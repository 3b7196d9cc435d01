"""Weight quantization: rules, RTN, storage; calibrated methods in their own modules.

  map_params_by_rule, DEFAULT_WEIGHT_PATTERN (rules.py)  (regex, spec) rules, first match wins
  quantize_rtn, rtn_quantize_params (rtn.py)  round-to-nearest
  save_params, restore_params, params_nbytes, params_bits_per_param (storage.py)
Calibrated methods (GPTQ, SpQR, AWQ, ...) live in their own modules of this package; the quantized
array types (QArray, specs, grids, packing) in `qjax.formats`.
"""

from qjax.quant.rtn import quantize_rtn, rtn_quantize_params
from qjax.quant.rules import (DEFAULT_WEIGHT_PATTERN, RuleReport, compile_rules, default_rules,
                              flatten_params, map_params_by_rule)
from qjax.quant.storage import (params_bits_per_param, params_nbytes, params_numel, restore_params,
                                save_params)

__all__ = ["quantize_rtn", "rtn_quantize_params", "DEFAULT_WEIGHT_PATTERN", "RuleReport",
           "compile_rules", "default_rules", "flatten_params", "map_params_by_rule", "save_params",
           "restore_params", "params_nbytes", "params_numel", "params_bits_per_param"]
