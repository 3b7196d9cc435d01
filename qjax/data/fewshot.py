"""Few-shot prompts: which solved examples precede a document, and how the prompt is assembled.

Plain prompts follow lm-evaluation-harness:
  description + (example question + target_delimiter + example answer + fewshot_delimiter) * n
  + question
Chat prompts (instruct models) put the description in a system turn, each example as a user turn
(question) and an assistant turn (answer), the question as the last user turn, and render them with
`tokenizer.apply_chat_template(..., add_generation_prompt=True)`; the scored continuation then
follows the assistant header directly (lm-eval drops the target delimiter under a chat template).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from qjax.data.tasks.spec import Doc, TaskSpec


def available_examples(pool_size: int, same_split: bool) -> int:
    """How many distinct examples a document can draw (itself excluded when the splits coincide)."""
    return pool_size - 1 if same_split else pool_size


def select_examples(spec: TaskSpec, pool: Sequence[Doc], n: int, *, seed: int, doc_key: int,
                    exclude: Optional[int] = None) -> list[Doc]:
    """`n` examples from `pool` for one document.

    first_n: the pool's first n (skipping `exclude`, the document's own index in the pool when the
    few-shot and evaluation splits are the same); random: n drawn without replacement by a
    generator seeded with (seed, doc_key), so a document's examples do not depend on which other
    documents are evaluated.
    """
    candidates = [i for i in range(len(pool)) if i != exclude]
    if n > len(candidates):
        raise ValueError(f"{spec.name}: {n} few-shot examples requested, only {len(candidates)} available")
    if n == 0:
        return []
    if spec.fewshot_sampler == "first_n":
        picked = candidates[:n]
    else:
        rng = np.random.default_rng([seed, doc_key])
        picked = [candidates[j] for j in rng.choice(len(candidates), size=n, replace=False)]
    return [pool[i] for i in picked]


def build_messages(spec: TaskSpec, doc: Doc, examples: Sequence[Doc], question: str) -> list[dict]:
    """The chat form of a prompt: the description as a system turn (when not blank), each example as
    a user turn (its question) and an assistant turn (its answer), and `question` as the last user turn."""
    description = spec.doc_description(doc)
    messages = [{"role": "system", "content": description.strip()}] if description.strip() else []
    for ex in examples:
        messages.append({"role": "user", "content": spec.fewshot_question(ex)})
        messages.append({"role": "assistant", "content": spec.fewshot_answer(ex)})
    messages.append({"role": "user", "content": question})
    return messages


def build_context(spec: TaskSpec, doc: Doc, examples: Sequence[Doc], question: str, *,
                  chat_template: bool = False, tokenizer=None) -> str:
    """The full prompt before the scored continuation (see the module docstring).

    question: the document's prompt text (for partial-context tasks, one option-filled prefix).
    """
    if not chat_template:
        shots = "".join(spec.fewshot_question(ex) + spec.target_delimiter + spec.fewshot_answer(ex)
                        + spec.fewshot_delimiter for ex in examples)
        return spec.doc_description(doc) + shots + question
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"{spec.name}: chat_template=True needs a tokenizer with a chat template")
    return tokenizer.apply_chat_template(build_messages(spec, doc, examples, question), tokenize=False,
                                         add_generation_prompt=True)
