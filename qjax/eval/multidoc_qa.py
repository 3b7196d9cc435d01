"""Multi-document QA and key-value retrieval by gold position ("Lost in the Middle", Liu et al.,
2023), prompts from `qjax.data.multidoc`.

Protocol: each prompt as one user turn of the conversation template, greedy, at most 100 new
tokens (the paper's scripts).
- QA (tasks `litm_qa_<k>`, k = 10/20/30 documents): accuracy = some gold answer, normalised, is a
  substring of the normalised FIRST LINE of the output (the paper's best_subspan_em; the first line
  only, so that copying the documents does not score). Distractors are other questions' gold
  passages, not retrieved passages (see `qjax.data.multidoc`).
- KV (tasks `litm_kv_<n>`, n = 75/140 keys): accuracy = the value, lower-cased, is a substring of
  the lower-cased output.
Rows: `<task>/gold_<pp>` accuracy per gold position (0-based, the paper's positions) over the same
`limit` questions, `fits` per position, and `<task>` accuracy over every position. Prompts longer
than the context minus the budget are skipped (counted in `fits`).
"""

from __future__ import annotations

import time

from qjax.data.multidoc import (KV_GOLD_POSITIONS, QA_GOLD_POSITIONS, contains_answer, kv_prompt, load_kv,
                                load_nq_oracle, qa_documents, qa_prompt, read_template)
from qjax.eval.item_rows import fitting, item_row, take, use_chat, value_row

MAX_NEW_TOKENS = 100


def qa_correct(output: str, answers) -> bool:
    return contains_answer(output.split("\n")[0].strip(), answers)


def kv_correct(output: str, value: str) -> bool:
    return value.lower() in output.lower()


def run_multidoc(ctx, task: str, kind: str, size: int) -> list[dict]:
    """Rows of `kind` "qa" (size = documents) or "kv" (size = keys); ctx: a gen_tasks TaskContext."""
    start = time.perf_counter()
    budget = ctx.max_new_tokens or MAX_NEW_TOKENS
    chat = use_chat(ctx.tokenizer)
    if kind == "qa":
        questions = load_nq_oracle(ctx.data_dir)
        template = read_template("qa.prompt", ctx.data_dir)
        chosen = range(len(take(questions, ctx.limit)))
        positions = QA_GOLD_POSITIONS[size]

        def prompt(i, position):
            return qa_prompt(template, questions[i]["question"],
                             qa_documents(questions, i, size, position, ctx.seed))

        def correct(i, output):
            return qa_correct(output, questions[i]["answers"])
    elif kind == "kv":
        records = load_kv(size, ctx.data_dir)
        template = read_template("kv_retrieval.prompt", ctx.data_dir)
        chosen = range(len(take(records, ctx.limit)))
        positions = KV_GOLD_POSITIONS[size]

        def prompt(i, position):
            return kv_prompt(template, records[i]["records"], records[i]["key"], position)

        def correct(i, output):
            return kv_correct(output, records[i]["value"])
    else:
        raise ValueError(f"multi-document kind must be 'qa' or 'kv', got {kind!r}")
    rows, pooled, samples = [], [], []
    for position in positions:
        prompts = [prompt(i, position) for i in chosen]
        fit, lengths = fitting(ctx.tokenizer, prompts, ctx.config.max_position_embeddings, budget, chat)
        name = f"{task}/gold_{position:02d}"
        rows.append(value_row(name, "fits", len(fit) / len(prompts), len(prompts), time.perf_counter() - start,
                              mean_tokens=sum(lengths) / len(lengths)))
        if not fit:
            continue
        outputs = ctx.generate([prompts[k] for k in fit], max_new_tokens=budget, chat=chat)
        scores = [float(correct(chosen[k], out)) for k, out in zip(fit, outputs)]
        samples.extend({"position": position, "item": chosen[k], "output": out} for k, out in zip(fit, outputs))
        pooled.extend(scores)
        rows.append(item_row(name, "accuracy", scores, time.perf_counter() - start))
    if pooled:
        rows.append(item_row(task, "accuracy", pooled, time.perf_counter() - start, chat=chat,
                             max_new_tokens=budget, positions=list(positions), samples=samples,
                             distractors="gold passages of other NQ-Open questions" if kind == "qa" else None))
    return rows
