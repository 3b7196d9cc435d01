"""GSM8K (Cobbe et al., 2021): local `gsm8k/{train,test}.jsonl` ({question, answer}; the answer is a
worked solution ending in "#### N").

gsm8k (lm-eval `gsm8k`): 8 exemplars "Question: {q}\\nAnswer: {worked answer}" drawn from the train
  split per document (seeded by (seed, document index)), joined by "\\n\\n", then
  "Question: {q}\\nAnswer:"; stop at "Question:" or "\\n\\n"; 256 new tokens; strict answer "#### N".
gsm8k_cot (lm-eval `gsm8k_cot`): the 8 fixed chain-of-thought exemplars of Wei et al. (2022) (split
  "cot_exemplars" of the loader), "Q: {q}\\nA: {rationale} The answer is N."; stop at "Q:" or
  "\\n\\n"; strict answer "The answer is N".
Both score exact match, strict (the pattern) and flexible (the last number), against the number
after the answer's last "####".
"""

from __future__ import annotations

from qjax.data.io import read_jsonl, task_file
from qjax.data.paths import DataError
from qjax.data.tasks.spec import GENERATE_UNTIL, GenerationSpec, TaskSpec

HUB = "openai/gsm8k"
HASH_ANSWER_PATTERN = r"#### (\-?[0-9\.\,]+)"  # GSM8K's own marker (lm-eval gsm8k strict-match)
ANSWER_IS_PATTERN = r"The answer is (\-?[0-9\.\,]+)"  # CoT exemplars' marker (gsm8k_cot strict)
COT_SPLIT = "cot_exemplars"

COT_EXEMPLARS = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they "
     "are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there "
     "must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking "
     "lot?", "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left "
     "in total?", "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 "
     "= 74. After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
     "lollipops did Jason give to Denny?", "Jason started with 20 lollipops. Then he had 12 after "
     "giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys "
     "does he have now?", "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then "
     "that is 4 more toys. 5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, "
     "from monday to thursday. How many computers are now in the server room?", "There were "
     "originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
     "computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How "
     "many golf balls did he have at the end of wednesday?", "Michael started with 58 golf balls. "
     "After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf "
     "balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - "
     "15 dollars left. 23 - 15 is 8. The answer is 8."),
)


def load(split: str, data_dir=None) -> list[dict]:
    """Documents {question, answer} of "train" or "test", or the fixed CoT exemplars ("cot_exemplars")."""
    if split == COT_SPLIT:
        return [{"question": q, "answer": a} for q, a in COT_EXEMPLARS]
    if split not in ("train", "test"):
        raise DataError(f"GSM8K split must be 'train', 'test' or {COT_SPLIT!r}, got {split!r}")
    records = read_jsonl(task_file(f"gsm8k/{split}.jsonl", data_dir), ("question", "answer"))
    for i, r in enumerate(records):
        if "####" not in r["answer"]:
            raise DataError(f"gsm8k/{split}.jsonl record {i + 1}: answer has no '#### ' marker")
    return records


def final_answer(doc: dict) -> str:
    """The reference: the text after the answer's last '####'."""
    return doc["answer"].split("####")[-1].strip()


METRICS = ("exact_match_strict", "exact_match_flexible")

TASKS = (
    TaskSpec("gsm8k", GENERATE_UNTIL, load, "test", fewshot_split="train", num_fewshot=8,
             text="Question: {question}\nAnswer:", target="{answer}", hub=HUB, metrics=METRICS,
             generation=GenerationSpec(until=("Question:", "\n\n"), max_new_tokens=256,
                                       scorer="exact_match", answer_pattern=HASH_ANSWER_PATTERN,
                                       reference=final_answer)),
    TaskSpec("gsm8k_cot", GENERATE_UNTIL, load, "test", fewshot_split=COT_SPLIT, num_fewshot=8,
             fewshot_sampler="first_n", text="Q: {question}\nA:", target="{answer}", hub=HUB,
             metrics=METRICS,
             generation=GenerationSpec(until=("Q:", "\n\n"), max_new_tokens=256, scorer="exact_match",
                                       answer_pattern=ANSWER_IS_PATTERN, reference=final_answer)),
)
