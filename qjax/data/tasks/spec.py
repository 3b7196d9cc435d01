"""Task declarations: how a document becomes a prompt, its choices, its target and its metrics.

A task is data (a frozen `TaskSpec`), not code: a loader turns the original files (or a hub dataset)
into documents (plain dicts), and the spec's templates turn a document into text. Templates are
`str.format` strings over the document's fields or, where a format string cannot express the rule,
small pure functions `doc -> str`. Defaults follow lm-evaluation-harness's standard tasks.

Kinds (`TaskSpec.kind`):
  multiple_choice  score `delimiter + choice` after the prompt for every choice (acc, acc_norm, ece);
                   with `partial_context=True` (WinoGrande) the choices are prompts instead and the
                   shared `target` continuation is scored after each of them.
  loglikelihood    score one target continuation per document (LAMBADA: greedy accuracy, perplexity).
  rolling          log-likelihood of a whole document (`target`) in rolling windows; words and bytes
                   for word/byte perplexity are counted on `text` (lm-eval's wikitext counts the
                   page before detokenization).
  generate_until   generate until a stop string and score the completion as its `GenerationSpec`
                   says (stop strings, token budget, scorer); `text` is the prompt, `target` the
                   answer shown in few-shot examples; the first `limit` documents are evaluated (as
                   lm-eval's --limit). Executed by the runner registered for this kind
                   (`qjax.eval.tasks.register_runner`).

Documents of multiple-choice tasks carry `gold`: the index of the correct choice, or a list of indices
when several choices are correct (TruthfulQA MC2). Few-shot examples show the first correct choice.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Hashable, Optional, Union

Doc = dict[str, Any]
Template = Union[str, Callable[[Doc], str]]
Loader = Callable[[str, Optional[Path]], list[Doc]]  # (split, data_dir override) -> documents

MULTIPLE_CHOICE = "multiple_choice"
LOGLIKELIHOOD = "loglikelihood"
ROLLING = "rolling"
GENERATE_UNTIL = "generate_until"
KINDS = (MULTIPLE_CHOICE, LOGLIKELIHOOD, ROLLING, GENERATE_UNTIL)
SAMPLERS = ("random", "first_n")


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
    """How a generate_until task decodes and is scored (run by the generate_until runner,
    `qjax.eval.gen_tasks`). Like an lm-eval YAML's `generation_kwargs`, `filter_list` and `metric_list`.

    until: stop strings; a completion is cut before the first one.
    max_new_tokens: decoding budget of one completion (of each turn for multi-turn tasks).
    scorer: how completions become metrics, by name (`qjax.eval.gen_tasks.SCORERS`): "exact_match"
      (strict `answer_pattern` and flexible last-number extraction against `reference`), "ifeval",
      "rouge", "bleu_chrf", "mt_bench".
    answer_pattern: regex whose group 1 is the answer (strict extraction); None: no strict metric.
    reference: template of a document's reference answer.
    truncate: (field, max_tokens): the document field is cut to its first max_tokens tokens
      before the prompt is rendered (long articles).
    turns_field: multi-turn tasks: the document field holding the user turns; each turn is a chat
      turn seeing the model's earlier answers (always through the chat template).
    strip: strip surrounding whitespace off completions before scoring.
    chat: the protocol sends every prompt through the conversation template (the description as a
      system turn), whatever the run's chat_template option (LongEval, lost in the middle, AdvGLUE,
      FollowBench: their reference scripts do so for chat models).
    fit_context: documents whose prompt plus `max_new_tokens` exceed the model's context are not
      generated; the share that fits is reported as metric `fits` (per part, see `part_field`).
    part_field: the document field naming the part a document belongs to (a size, a gold position,
      a subtask); scorers report per part as task "<task>/<part>" besides the whole task.
    """

    until: tuple[str, ...] = ("\n\n",)
    max_new_tokens: int = 256
    scorer: str = "exact_match"
    answer_pattern: Optional[str] = None
    reference: Template = ""
    truncate: Optional[tuple[str, int]] = None
    turns_field: Optional[str] = None
    strip: bool = False
    chat: bool = False
    fit_context: bool = False
    part_field: Optional[str] = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if isinstance(self.until, str):
            raise ValueError(f"until must be a tuple of stop strings, got the string {self.until!r}")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One evaluation task.

    Attributes:
      name: registry name, e.g. "arc_easy".
      kind: one of `KINDS`.
      load: `(split, data_dir) -> list[Doc]` (see `qjax.data.tasks` loaders); raises `DataError`.
      eval_split / fewshot_split: split names passed to `load`; fewshot_split None forbids few-shot.
      text: the prompt of a document (format string over its fields, or a function).
      choices: the choice strings: a tuple of fixed strings (MMLU's "A".."D"), or the name of the
        document field holding them.
      target: loglikelihood/partial tasks: template of the continuation scored after the prompt;
        rolling tasks: the scored document text.
      target_delimiter: put between prompt and choice/target (lm-eval: " ").
      fewshot_delimiter: put after every few-shot example (lm-eval: "\\n\\n").
      description: header before the few-shot block (format string over the document's fields).
      num_fewshot: default number of few-shot examples.
      fewshot_sampler: "random" (seeded, per document) or "first_n" (the split's first n, MMLU).
      partial_context: WinoGrande's partial scoring (see module docstring).
      subject_field: documents are partitioned by this field; `limit` applies per subject and
        results are reported per subject plus the macro average.
      breakdown_field: results are also reported for each value of this document field (BBQ's
        categories), besides the whole task.
      strata: document -> stratum key for stratified `limit` sampling (default: the gold label).
      metrics: metric names computed by `qjax.eval.task_metrics`.
      hub: the dataset's name on the Hugging Face hub, for reference or for loading.
      generation: decoding spec of generate_until tasks.
    """

    name: str
    kind: str
    load: Loader
    eval_split: str
    fewshot_split: Optional[str] = None
    text: Template = "{query}"
    choices: Union[tuple[str, ...], str] = "choices"
    target: Template = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: Template = ""
    num_fewshot: int = 0
    fewshot_sampler: str = "random"
    partial_context: bool = False
    subject_field: Optional[str] = None
    breakdown_field: Optional[str] = None
    strata: Optional[Callable[[Doc], Hashable]] = None
    metrics: tuple[str, ...] = ("acc", "acc_norm", "ece")
    hub: Optional[str] = None
    generation: Optional[GenerationSpec] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: unknown kind {self.kind!r}; known: {KINDS}")
        if self.fewshot_sampler not in SAMPLERS:
            raise ValueError(f"task {self.name}: unknown fewshot_sampler {self.fewshot_sampler!r}")
        if self.kind == GENERATE_UNTIL and self.generation is None:
            raise ValueError(f"task {self.name}: a generate_until task needs a GenerationSpec")

    # -- rendering -----------------------------------------------------------------------------
    def doc_text(self, doc: Doc) -> str:
        return render(self.text, doc)

    def doc_choices(self, doc: Doc) -> list[str]:
        if isinstance(self.choices, tuple):
            return list(self.choices)
        return list(doc[self.choices])

    def doc_target(self, doc: Doc) -> str:
        return render(self.target, doc)

    def doc_description(self, doc: Doc) -> str:
        return render(self.description, doc)

    def gold_indices(self, doc: Doc) -> tuple[int, ...]:
        gold = doc["gold"]
        return tuple(gold) if isinstance(gold, (list, tuple)) else (int(gold),)

    def fewshot_answer(self, doc: Doc) -> str:
        """The text after the delimiter in a solved few-shot example."""
        if self.kind == MULTIPLE_CHOICE and not self.partial_context:
            return self.doc_choices(doc)[self.gold_indices(doc)[0]]
        return self.doc_target(doc)

    def fewshot_question(self, doc: Doc) -> str:
        """The prompt part of a solved few-shot example (the gold option's context when partial)."""
        if self.partial_context:
            return self.doc_choices(doc)[self.gold_indices(doc)[0]]
        return self.doc_text(doc)

    def stratum(self, doc: Doc) -> Hashable:
        if self.strata is not None:
            return self.strata(doc)
        return self.gold_indices(doc) if "gold" in doc else None


def render(template: Template, doc: Doc) -> str:
    """A template applied to a document: `template.format(**doc)` or `template(doc)`."""
    if callable(template):
        return template(doc)
    try:
        return template.format(**doc)
    except KeyError as e:
        raise KeyError(f"template {template!r} needs document field {e}; the document has "
                       f"{sorted(doc)}") from None
