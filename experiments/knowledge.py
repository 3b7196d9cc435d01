"""Knowledge and reasoning log-likelihood tasks (MMLU, ARC, PIQA, BoolQ, WinoGrande, LAMBADA, ...):
one result row per (task, metric), per MMLU subject too; tasks already in the results file are skipped.

  python experiments/knowledge.py --config=configs/knowledge.py:quick
  python experiments/knowledge.py --tasks=mmlu,arc_easy --limit=50 --recipe=gptq:w4g128,a8,kv4
"""

from __future__ import annotations

from absl import app

from task_experiment import define_task_flags, run_experiment  # experiments/task_experiment.py

FLAGS = define_task_flags("configs/knowledge.py")


def main(argv):
    del argv
    run_experiment(FLAGS.config(), data_dir=FLAGS.data_dir)


if __name__ == "__main__":
    app.run(main)
