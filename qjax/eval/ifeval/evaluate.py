"""IFEval scoring: strict and loose following, prompt- and instruction-level accuracy.

Protocol (google-research `instruction_following_eval/evaluation_lib.py`):
  * strict: instruction i is followed iff the response is non-blank and its checker passes;
  * loose: followed iff the checker passes on any non-blank variant of the response among: the
    response, the response without its first line, without its last line, without both, and each
    of these four with every '*' removed (stripped after removing lines);
  * prompt-level accuracy: the fraction of prompts whose instructions are all followed;
    instruction-level accuracy: the fraction of all (prompt, instruction) pairs followed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

from qjax.data.io import read_jsonl, task_file
from qjax.data.paths import DataError
from qjax.data.tasks.ifeval import INPUT_FILE
from qjax.eval.ifeval.instructions import check_instruction, instruction_arguments


@dataclasses.dataclass(frozen=True)
class IFEvalExample:
    """One IFEval prompt with its instructions; `kwargs[i]` are the arguments of instruction i."""

    key: int
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict, ...]


def parse_example(record: Any, where: str = "record") -> IFEvalExample:
    """An example from one decoded JSON record; DataError naming `where` if a field is wrong."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field in ("key", "prompt", "instruction_id_list", "kwargs"):
        if field not in record:
            raise DataError(f"{where}: missing field {field!r}")
    ids, kwargs = record["instruction_id_list"], record["kwargs"]
    if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
        raise DataError(f"{where}: instruction_id_list and kwargs must be lists of equal length")
    try:
        for instruction_id, args in zip(ids, kwargs):
            instruction_arguments(instruction_id, args)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from e
    return IFEvalExample(key=int(record["key"]), prompt=str(record["prompt"]),
                         instruction_id_list=tuple(ids), kwargs=tuple(dict(a or {}) for a in kwargs))


def load_examples(data_dir: Optional[str] = None, path: Optional[str | Path] = None) -> list[IFEvalExample]:
    """IFEval examples from `path`, else `<data_dir>/ifeval/input_data.jsonl`.

    Raises DataError for a missing file, a line that is not JSON, or a malformed record (the
    message names the file and line).
    """
    path = Path(path) if path is not None else task_file(INPUT_FILE, data_dir)
    return [parse_example(record, f"{path} record {i}") for i, record in enumerate(read_jsonl(path), 1)]


def loose_variants(response: str) -> list[str]:
    """The eight response variants of the loose criterion (see the module docstring)."""
    lines = response.split("\n")
    without_first = "\n".join(lines[1:]).strip()
    without_last = "\n".join(lines[:-1]).strip()
    without_both = "\n".join(lines[1:-1]).strip()
    base = [response, without_first, without_last, without_both]
    return base + [r.replace("*", "") for r in base]


def follow_instructions(example: IFEvalExample, response: str, *, loose: bool = False) -> list[bool]:
    """Per-instruction followed flags of `response` to `example`, strict or loose."""
    candidates = loose_variants(response) if loose else [response]
    candidates = [c for c in candidates if c.strip()]
    return [any(check_instruction(i, c, a) for c in candidates)
            for i, a in zip(example.instruction_id_list, example.kwargs)]


def score_responses(examples: Sequence[IFEvalExample], responses: Sequence[str]) -> dict:
    """Accuracies of `responses[j]` to `examples[j]`.

    Returns {prompt_level_strict, inst_level_strict, prompt_level_loose, inst_level_loose} (floats
    in [0, 1]), `prompts`, `instructions` (counts), and `per_prompt`: one dict per example with
    its key, strict and loose flag lists.
    """
    if len(examples) != len(responses):
        raise ValueError(f"{len(examples)} examples but {len(responses)} responses")
    if not examples:
        raise ValueError("no IFEval examples to score")
    per_prompt = []
    totals = {"prompt_level_strict": 0, "inst_level_strict": 0, "prompt_level_loose": 0,
              "inst_level_loose": 0}
    n_instructions = 0
    for example, response in zip(examples, responses):
        strict = follow_instructions(example, response)
        loose = follow_instructions(example, response, loose=True)
        per_prompt.append({"key": example.key, "strict": strict, "loose": loose})
        totals["prompt_level_strict"] += all(strict)
        totals["prompt_level_loose"] += all(loose)
        totals["inst_level_strict"] += sum(strict)
        totals["inst_level_loose"] += sum(loose)
        n_instructions += len(strict)
    result: dict[str, Any] = {
        "prompt_level_strict": totals["prompt_level_strict"] / len(examples),
        "prompt_level_loose": totals["prompt_level_loose"] / len(examples),
        "inst_level_strict": totals["inst_level_strict"] / n_instructions,
        "inst_level_loose": totals["inst_level_loose"] / n_instructions,
    }
    result.update(prompts=len(examples), instructions=n_instructions, per_prompt=per_prompt)
    return result
