"""Knowledge and reasoning log-likelihood tasks (MMLU, ARC, PIQA, BoolQ, WinoGrande, LAMBADA, ...):
one result row per (task, metric), per MMLU subject too; tasks already in the results file are skipped.

  python experiments/knowledge.py --config=configs/knowledge.py:quick
  python experiments/knowledge.py --tasks=mmlu,arc_easy --limit=50 --quant_config=results/ckpt/rtn_w4
"""

from __future__ import annotations

from cli import run  # experiments/cli.py
from task_experiment import define_task_flags, run_experiment  # experiments/task_experiment.py

FLAGS = define_task_flags("configs/knowledge.py")


def main(argv):
    del argv
    run_experiment(FLAGS.config(), data_dir=FLAGS.data_dir)


if __name__ == "__main__":
    run(main)
