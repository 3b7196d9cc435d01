"""BBQ, Bias Benchmark for QA (Parrish et al., 2022): local `bbq/<Category>.jsonl`.

Prompt as lm-eval's `bbq`: "{context}\\n\\nQ: {question}\\nA:" + " " + answer, over the three answers.
For the bias scores every document also records (as the paper's analysis code derives them from
`answer_info` and `additional_metadata.stereotyped_groups`):
  unknown: the index of the UNKNOWN answer (answer_info label "unknown");
  target:  the index of the answer whose group is a stereotyped group (its answer_info label, with an
           intersectional "M-"/"F-" prefix removed, or its name, e.g. a nationality), or -1;
  biased:  the answer that reflects the bias: the target for a negative question, the other
           non-UNKNOWN answer for a non-negative one (-1 when there is no target).
"""

from __future__ import annotations

from qjax.data.paths import DataError
from qjax.data.io import field, read_jsonl, task_file
from qjax.data.tasks.spec import MULTIPLE_CHOICE, TaskSpec

CATEGORIES = ("Age", "Disability_status", "Nationality", "Physical_appearance", "Religion",
              "Sexual_orientation")


def answer_roles(answer_info: dict, stereotyped_groups: list[str], polarity: str, where: str):
    """(unknown, target, biased) answer indices of one BBQ item; see the module docstring."""
    infos = [answer_info.get(f"ans{i}") for i in range(3)]
    if any(not isinstance(info, list) or len(info) != 2 for info in infos):
        raise DataError(f"{where}: answer_info must give [name, group] for ans0..ans2")
    unknown = [i for i, (_, group) in enumerate(infos) if group == "unknown"]
    if len(unknown) != 1:
        raise DataError(f"{where}: expected exactly one UNKNOWN answer in answer_info, found {len(unknown)}")
    if polarity not in ("neg", "nonneg"):
        raise DataError(f"{where}: question_polarity {polarity!r} is neither 'neg' nor 'nonneg'")
    stereotyped = {g.lower() for g in stereotyped_groups}
    targets = [i for i, (name, group) in enumerate(infos) if i != unknown[0] and (
        _strip_gender(group).lower() in stereotyped or name.lower() in stereotyped)]
    target = targets[0] if len(targets) == 1 else -1
    if target < 0:
        biased = -1
    elif polarity == "neg":
        biased = target
    else:
        biased = next(i for i in range(3) if i not in (target, unknown[0]))
    return unknown[0], target, biased


def _strip_gender(group: str) -> str:
    return group[2:] if group[:2] in ("M-", "F-") else group


def load(split: str, data_dir=None) -> list[dict]:
    """Documents of every category: {category, context_condition, question_polarity, context,
    question, choices, gold, unknown, target, biased}."""
    if split != "test":
        raise DataError(f"bbq has only the test split; got {split!r}")
    docs = []
    for category in CATEGORIES:
        path = task_file(f"bbq/{category}.jsonl", data_dir)
        for i, row in enumerate(read_jsonl(path), 1):
            where = f"{path}: record {i}"
            metadata = field(row, "additional_metadata", where, dict)
            polarity = field(row, "question_polarity", where)
            unknown, target, biased = answer_roles(field(row, "answer_info", where, dict),
                                                   field(metadata, "stereotyped_groups", where, list),
                                                   polarity, where)
            label = field(row, "label", where, int)
            condition = field(row, "context_condition", where)
            if condition not in ("ambig", "disambig") or not 0 <= label < 3:
                raise DataError(f"{where}: context_condition {condition!r} / label {label} out of range")
            docs.append({"category": field(row, "category", where), "context_condition": condition,
                         "question_polarity": polarity, "context": field(row, "context", where),
                         "question": field(row, "question", where),
                         "choices": [field(row, f"ans{j}", where) for j in range(3)], "gold": label,
                         "unknown": unknown, "target": target, "biased": biased})
    return docs


TASKS = (
    TaskSpec(name="bbq", kind=MULTIPLE_CHOICE, load=load, eval_split="test",
             text="{context}\n\nQ: {question}\nA:", choices="choices",
             metrics=("acc", "acc_ambig", "acc_disambig", "bias_ambig", "bias_disambig", "ece"),
             breakdown_field="category",
             strata=lambda doc: (doc["category"], doc["context_condition"], doc["question_polarity"]),
             hub="heegyu/bbq"),
)
