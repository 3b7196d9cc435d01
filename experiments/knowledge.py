"""Knowledge and reasoning log-likelihood tasks (MMLU, ARC, PIQA, BoolQ, WinoGrande, LAMBADA, ...):
one result row per (task, metric), per MMLU subject too; tasks already in the results file are skipped.

  python experiments/knowledge.py --config=configs/knowledge.py:quick
  python experiments/knowledge.py --tasks=mmlu,arc_easy --limit=50 --quant_config=results/ckpt/rtn_w4
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from qjax.eval.tasks import run_experiment

_CONFIG = config_flags.DEFINE_config_file("config", "configs/knowledge.py", "experiment config")
_MODEL = flags.DEFINE_string("model", None, "model name or path (overrides config.model)")
_TASKS = flags.DEFINE_list("tasks", None, "comma-separated task names (overrides config.tasks)")
_LIMIT = flags.DEFINE_integer("limit", None, "documents per task / per subject; -1: all")
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "few-shot examples; -1: the task's default")
_RESULTS = flags.DEFINE_string("results", None, "results JSONL (overrides config.results)")
_QUANT = flags.DEFINE_string("quant_config", None, "saved quantized checkpoint directory (qjax.quant.storage)")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)")


def apply_flags(cfg):
    """Config with the explicitly given flags applied."""
    overrides = {"model": _MODEL.value, "tasks": None if _TASKS.value is None else tuple(_TASKS.value),
                 "limit": _LIMIT.value, "num_fewshot": _NUM_FEWSHOT.value, "results": _RESULTS.value,
                 "quant_config": _QUANT.value}
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    return cfg


def main(argv):
    del argv
    run_experiment(apply_flags(_CONFIG.value), data_dir=_DATA_DIR.value)


if __name__ == "__main__":
    app.run(main)
