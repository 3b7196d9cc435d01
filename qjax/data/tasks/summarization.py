"""Summarization: XSum (`EdinburghNLP/xsum`) and CNN/DailyMail (`abisee/cnn_dailymail`, 3.0.0), from a
local copy in the hub's own file layout (`xsum/`, `cnn_dailymail/` under the data directory) or the
hub (`qjax.data.hub`).

Zero-shot "Article: {article}\\n\\nSummarize the article above in one sentence / in a few
sentences.\\nSummary:", the article cut to its first 1536 tokens; stop at "\\n\\n" after 64 / 128 new
tokens; ROUGE-1/2/L/Lsum F1 x 100.
"""

from __future__ import annotations

import functools

from qjax.data.hub import hub_rows
from qjax.data.tasks.spec import GENERATE_UNTIL, GenerationSpec, TaskSpec

ROUGE_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
MAX_SOURCE_TOKENS = 1536


def load(repo: str, config, local_dir: str, fields: tuple[str, ...], split: str, data_dir=None) -> list[dict]:
    return hub_rows(repo, config, split, data_dir, local_dir=local_dir, required=fields)


def _spec(name: str, repo: str, config, source: str, reference: str, instruction: str,
          max_new_tokens: int) -> TaskSpec:
    return TaskSpec(
        name, GENERATE_UNTIL, functools.partial(load, repo, config, name, (source, reference)), "test",
        text=f"Article: {{{source}}}\n\n{instruction}\nSummary:", hub=repo, metrics=ROUGE_METRICS,
        generation=GenerationSpec(until=("\n\n",), max_new_tokens=max_new_tokens, scorer="rouge",
                                  reference=f"{{{reference}}}", truncate=(source, MAX_SOURCE_TOKENS),
                                  strip=True))


TASKS = (
    _spec("xsum", "EdinburghNLP/xsum", None, "document", "summary",
          "Summarize the article above in one sentence.", 64),
    _spec("cnn_dailymail", "abisee/cnn_dailymail", "3.0.0", "article", "highlights",
          "Summarize the article above in a few sentences.", 128),
)
