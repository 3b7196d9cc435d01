"""Alignment log-likelihood tasks (TruthfulQA MC1 / MC2 and BBQ with its bias scores):
one result row per (task, metric), per BBQ category too; tasks already in the results file are skipped.

  python experiments/alignment.py --config=configs/alignment.py:quick
  python experiments/alignment.py --tasks=bbq --limit=600 --quant_config=results/ckpt/rtn_w4
"""

from __future__ import annotations

from cli import run  # experiments/cli.py
from task_experiment import define_task_flags, run_experiment  # experiments/task_experiment.py

FLAGS = define_task_flags("configs/alignment.py")


def main(argv):
    del argv
    run_experiment(FLAGS.config(), data_dir=FLAGS.data_dir)


if __name__ == "__main__":
    run(main)
