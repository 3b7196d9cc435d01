"""MMLU (Hendrycks et al., 2021): local `mmlu/<split>/<subject>_<split>.csv` (question, A-D, answer).

lm-eval's `mmlu` default: subject header, "{question}\\nA. ..\\nD. ..\\nAnswer:", choices " A".." D",
5-shot from the subject's dev split in file order (sampler first_n).
"""

from __future__ import annotations

from qjax.data.paths import DataError
from qjax.data.io import read_csv, task_file
from qjax.data.tasks.spec import MULTIPLE_CHOICE, TaskSpec

SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics", "econometrics",
    "electrical_engineering", "elementary_mathematics", "formal_logic", "global_facts",
    "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics",
    "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
    "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management",
    "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations", "security_studies",
    "sociology", "us_foreign_policy", "virology", "world_religions",
)
LETTERS = ("A", "B", "C", "D")


def load(split: str, data_dir=None) -> list[dict]:
    """Documents {subject, subject_name, question, A..D, gold} of every subject, subjects in order."""
    if split not in ("test", "dev", "val"):
        raise DataError(f"mmlu has splits test, dev, val; got {split!r}")
    docs = []
    for subject in SUBJECTS:
        path = task_file(f"mmlu/{split}/{subject}_{split}.csv", data_dir)
        for i, (question, a, b, c, d, answer) in enumerate(read_csv(path, 6), 1):
            if answer.strip() not in LETTERS:
                raise DataError(f"{path}: row {i} has answer {answer!r}, expected one of A-D")
            docs.append({"subject": subject, "subject_name": subject.replace("_", " "),
                         "question": question.strip(), "A": a, "B": b, "C": c, "D": d,
                         "gold": LETTERS.index(answer.strip())})
    return docs


TASKS = (
    TaskSpec(
        name="mmlu", kind=MULTIPLE_CHOICE, load=load, eval_split="test", fewshot_split="dev",
        text="{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:", choices=LETTERS,
        description="The following are multiple choice questions (with answers) about {subject_name}.\n\n",
        num_fewshot=5, fewshot_sampler="first_n", subject_field="subject", metrics=("acc", "ece"),
        hub="cais/mmlu"),
)
