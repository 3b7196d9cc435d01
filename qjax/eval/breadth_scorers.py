"""Registers the scorers of the evaluation-breadth generation tasks with `qjax.eval.gen_tasks`
(their declarations are in `qjax.data.tasks`):

  longeval_topics, longeval_lines     `qjax.eval.longeval`
  litm_qa, litm_kv                    `qjax.eval.multidoc_qa`   (tasks litm_qa_<k>, litm_kv_<n>)
  adv_glue                            `qjax.eval.advglue`
  truthfulqa_gen                      `qjax.eval.truthfulqa_gen`
  followbench                         `qjax.eval.followbench`   (rules + the judge)
  mt_bench_judged                     `qjax.eval.judge`
Imported at the end of `qjax.eval.gen_tasks`.
"""

from __future__ import annotations

from qjax.eval import advglue, followbench, judge, longeval, multidoc_qa, truthfulqa_gen
from qjax.eval.gen_tasks import register_scorer

for _name, _scorer in (("longeval_topics", longeval.score_topics), ("longeval_lines", longeval.score_lines),
                       ("litm_qa", multidoc_qa.score_qa), ("litm_kv", multidoc_qa.score_kv),
                       ("adv_glue", advglue.score_adv_glue), ("truthfulqa_gen", truthfulqa_gen.score_truthfulqa_gen),
                       ("followbench", followbench.score_followbench),
                       ("mt_bench_judged", judge.score_mt_bench_judged)):
    register_scorer(_name, _scorer)
