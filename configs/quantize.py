"""Weight-quantization experiment: `--config=configs/quantize.py:<variant>`, fields overridable by flag.

A variant is `<method>[_<option>...]`, method in rtn | nf4 | companded | gptq | spqr | awq | int8;
options:
  w<b>     bits (2, 3, 4, 8)                 g<k>   groups of k input rows (default 128; spqr 16)
  pc       per output channel (no groups)    pt     per tensor
  sym      symmetric uniform grid            clip   clip search (RTN / GPTQ grids)
  noact    GPTQ in the paper's row order     gptq   GPTQ rounding for nf4 / companded
           (default: act_order + static_groups, as llm-compressor)
  noout    SpQR without outliers             noclip AWQ without its clip search
  wo       int8: weight-only (no int8 activations in the int8 part)
e.g. gptq_w4 (= gptq_w4_g128), gptq_w3_g64, rtn_w8_pc, spqr_w2, spqr_w2_noout, awq_w4,
nf4_gptq, companded_w3, int8, float (no quantization). `--config.method.<field>=...` overrides any
`QuantizeConfig` field.
"""

import re

import ml_collections

METHODS = ("rtn", "nf4", "companded", "gptq", "spqr", "awq", "int8", "none")


# Allowed values, checked before the experiment runs (experiments/cli.py: (lo, hi[, specials]) or a set).
RANGES = {"method.bits": (1, 8), "method.group_size": (1, None, (-1,)), "method.batch_size": (1, None),
          "method.companding_power": (0.0, 1.0), "method.gptq.block_size": (1, None),
          "method.gptq.percdamp": (0.0, None), "method.spqr.block_size": (1, None),
          "method.awq.n_grid": (1, None), "calibration.num_windows": (1, None), "calibration.seqlen": (1, None),
          "calibration.seed": (0, None), "eval.seqlen": (1, None), "eval.max_windows": (1, None, (-1,)),
          "eval.batch_size": (1, None)}


def _method(variant: str) -> ml_collections.ConfigDict:
    parts = variant.split("_")
    method, opts = parts[0], parts[1:]
    if method not in METHODS:
        raise ValueError(f"unknown quantize variant {variant!r}: method must be one of {METHODS}")
    m = ml_collections.ConfigDict()
    m.method = method
    m.bits = 8 if method == "int8" else 4
    m.group_size = 16 if method == "spqr" else 128
    m.symmetric = False
    m.clip_search = False
    m.companding_power = 1.0 / 3.0
    m.scale_dtype = "float16"
    m.rounding = "rtn"
    m.pattern = r"layers_\d+/(attn|mlp)/\w+_proj/kernel"
    m.batch_size = 8
    m.gptq = ml_collections.ConfigDict(dict(block_size=128, percdamp=0.01, act_order=True,
                                            static_groups=True, damp_retries=3))
    m.spqr = ml_collections.ConfigDict(dict(qq_bits=3, qq_group_size=16, outlier_threshold=0.2,
                                            percdamp=1.0, block_size=128, simplified_outliers=False,
                                            damp_retries=3))
    m.awq = ml_collections.ConfigDict(dict(n_grid=20, search_windows=8, search_seqlen=512, clip=True,
                                           clip_grid=20, max_shrink=0.5, clip_tokens=512))
    m.int8 = ml_collections.ConfigDict(dict(threshold=6.0, quantize_activations=True))
    for opt in opts:
        if re.fullmatch(r"w\d", opt):
            m.bits = int(opt[1:])
        elif re.fullmatch(r"g\d+", opt):
            m.group_size = int(opt[1:])
        elif opt == "pc":
            m.group_size = None
        elif opt == "pt":
            m.group_size = -1
        elif opt == "sym":
            m.symmetric = True
        elif opt == "clip":
            m.clip_search = True
        elif opt == "noact":
            m.gptq.act_order = False
            m.gptq.static_groups = False
        elif opt == "gptq":
            m.rounding = "gptq"
        elif opt == "noout":
            m.spqr.outlier_threshold = float("inf")
        elif opt == "noclip":
            m.awq.clip = False
        elif opt == "wo":
            m.int8.quantize_activations = False
        else:
            raise ValueError(f"unknown option {opt!r} in quantize variant {variant!r}")
    return m


def get_config(variant: str = "gptq_w4") -> ml_collections.ConfigDict:
    """`variant` as in the module docstring, or "float" (no quantization)."""
    config = ml_collections.ConfigDict()
    config.mesh = ""  # "data:4,model:2" (qjax.parallel.mesh); "" = every device on data
    config.name = variant
    config.model = "smollm2-135m"
    config.method = _method("none" if variant == "float" else variant)
    config.calibration = ml_collections.ConfigDict(dict(
        dataset="wikitext2", split="valid", jsonl="", text_key="text", num_windows=32, seqlen=2048, seed=0))
    # The first 16 windows of 2048 tokens of WikiText-2 test (-1: all ~140; hours on 2 CPU cores).
    config.eval = ml_collections.ConfigDict(dict(dataset="wikitext2", split="test", seqlen=2048,
                                                 max_windows=16, batch_size=1))
    config.results = "results/quantize.jsonl"
    config.save_dir = "results/checkpoints"  # "" skips saving; else <save_dir>/<name>
    config.overwrite = False  # recompute a row already in the results file
    return config
