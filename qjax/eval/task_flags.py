"""absl flags shared by the task experiments (`experiments/knowledge.py`, `experiments/alignment.py`).

`define_task_flags(default_config)` defines --config (an ml_collections config file, fields
overridable as --config.field=value) and the shortcuts --model, --tasks, --limit, --num_fewshot,
--results, --quant_config and --data_dir; call it once, at import time of the script. The returned
`TaskFlags.config()` is the config with every shortcut that was given applied.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from absl import flags
from ml_collections import config_flags


@dataclasses.dataclass(frozen=True)
class TaskFlags:
    """Handles of the flags `define_task_flags` defined."""

    config_flag: Any
    shortcuts: dict
    data_dir_flag: Any

    def config(self):
        """The experiment config with the given shortcut flags applied (tasks as a tuple)."""
        cfg = self.config_flag.value
        for key, flag in self.shortcuts.items():
            if flag.value is not None:
                setattr(cfg, key, tuple(flag.value) if key == "tasks" else flag.value)
        return cfg

    @property
    def data_dir(self) -> Optional[str]:
        return self.data_dir_flag.value


def define_task_flags(default_config: str) -> TaskFlags:
    """Defines the task-experiment flags (module docstring); `default_config` is the config path."""
    shortcuts = {
        "model": flags.DEFINE_string("model", None, "model name or path (overrides config.model)"),
        "tasks": flags.DEFINE_list("tasks", None, "comma-separated task names (overrides config.tasks)"),
        "limit": flags.DEFINE_integer("limit", None, "documents per task / per subject; -1: all"),
        "num_fewshot": flags.DEFINE_integer("num_fewshot", None, "few-shot examples; -1: the task's default"),
        "results": flags.DEFINE_string("results", None, "results JSONL (overrides config.results)"),
        "quant_config": flags.DEFINE_string("quant_config", None,
                                            "saved quantized checkpoint directory (qjax.quant.storage)"),
    }
    return TaskFlags(config_flag=config_flags.DEFINE_config_file("config", default_config, "experiment config"),
                     shortcuts=shortcuts,
                     data_dir_flag=flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)"))
