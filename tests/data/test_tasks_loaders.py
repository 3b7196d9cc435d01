"""Task loaders: hub-format fixtures for the hub-only tasks (HellaSwag, C-Eval, SNLI), the registry,
and one clear error per kind of bad input."""

from __future__ import annotations

import json

import pytest

from qjax.data.paths import DataError
from qjax.data.tasks import TASKS, get_task
from qjax.data.tasks.ceval import SUBJECTS as CEVAL_SUBJECTS
from qjax.data.tasks.mmlu import SUBJECTS as MMLU_SUBJECTS
from qjax.eval.tasks import PreparedDoc, TaskOptions, doc_requests, prepare_prompts, run_task


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def requests_of(name, data_dir, index=0):
    spec = get_task(name)
    doc = spec.load(spec.eval_split, str(data_dir))[index]
    return doc_requests(spec, PreparedDoc(index, doc, (spec.doc_text(doc),))), spec.gold_indices(doc)


def test_hellaswag_hub_rows_are_preprocessed_like_lm_eval(tmp_path):
    rows = [  # the first validation row of Rowan/hellaswag, and a WikiHow-style row
        {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
         "ctx": "A man is sitting on a roof. he", "endings": [
             "is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
             "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
         "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"},
        {"ind": 7, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a grill [title] Heat the grill.",
         "ctx_b": "then", "ctx": "", "endings": ["[step] Scrub the grates.  Rinse them.", "a", "b", "c"],
         "source_id": "wikihow~1", "split": "val", "split_type": "zeroshot", "label": "0"}]
    write_jsonl(tmp_path / "hf/Rowan/hellaswag/default/validation.jsonl", rows)
    pairs, gold = requests_of("hellaswag", tmp_path)
    assert pairs[3] == ("Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing on a roof.")
    assert gold == (3,)
    pairs, gold = requests_of("hellaswag", tmp_path, 1)
    assert pairs[0] == ("Home and Garden: How to clean a grill. Heat the grill. Then", "  Scrub the grates. Rinse them.")


def test_ceval_hub_rows_per_subject(tmp_path):
    for k, subject in enumerate(CEVAL_SUBJECTS):
        row = {"id": 0, "question": f" 问题{k} ", "A": "甲", "B": "乙", "C": "丙", "D": "丁", "answer": "C",
               "explanation": ""}
        write_jsonl(tmp_path / f"hf/ceval/ceval-exam/{subject}/val.jsonl", [row])
        write_jsonl(tmp_path / f"hf/ceval/ceval-exam/{subject}/dev.jsonl", [dict(row, question="例题", answer="A")])
    spec = get_task("ceval")
    prepared = prepare_prompts(spec, None, TaskOptions(num_fewshot=1, data_dir=str(tmp_path)))
    assert len(prepared) == len(CEVAL_SUBJECTS) == 52
    first = prepared[0]
    assert first.contexts[0] == ("以下是中国关于计算机网络的单项选择题，请选出其中的正确答案。\n\n"
                                 "例题\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案： A\n\n"
                                 "问题0\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案：")
    assert spec.gold_indices(first.doc) == (2,)


def test_snli_hub_rows_drop_unlabelled_items(tmp_path):
    rows = [{"premise": "A person on a horse jumps over a broken down airplane.",
             "hypothesis": "A person is training his horse for a competition.", "label": 1},
            {"premise": "Two women are embracing.", "hypothesis": "The sisters are hugging goodbye", "label": -1},
            {"premise": "Children smiling and waving at camera", "hypothesis": "There are children present",
             "label": 0}]
    write_jsonl(tmp_path / "hf/stanfordnlp/snli/default/validation.jsonl", rows)
    docs = get_task("snli").load("validation", str(tmp_path))
    assert len(docs) == 2
    pairs, gold = requests_of("snli", tmp_path, 1)
    assert pairs == [("Children smiling and waving at camera\nQuestion: There are children present. True, False "
                      "or Neither?\nAnswer:", c) for c in (" True", " Neither", " False")]
    assert gold == (0,)


def test_registry_has_the_log_likelihood_tasks():
    assert {"mmlu", "arc_easy", "arc_challenge", "piqa", "boolq", "winogrande", "lambada", "hellaswag",
            "truthfulqa_mc1", "truthfulqa_mc2", "bbq", "ceval", "snli", "wikitext"} <= set(TASKS)


# -- bad input ----------------------------------------------------------------------------------------
def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'arc_medium'; known tasks: .*arc_easy"):
        run_task("arc_medium", None, None, None)


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match=r"arc/ARC-Easy-Test.jsonl is missing"):
        get_task("arc_easy").load("test", str(tmp_path))


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "arc/ARC-Easy-Test.jsonl"
    path.parent.mkdir()
    path.write_text('{"id": "x", "question": {"stem": "q", "choices": []}, "answerKey": "A"}\n{"id": \n')
    with pytest.raises(DataError, match=r"ARC-Easy-Test.jsonl:2: malformed JSON line"):
        get_task("arc_easy").load("test", str(tmp_path))


def test_malformed_fields(tmp_path):
    write_jsonl(tmp_path / "arc/ARC-Easy-Test.jsonl",
                [{"id": "x", "question": {"stem": "q", "choices": [{"text": "a", "label": "A"}]}, "answerKey": "B"}])
    with pytest.raises(DataError, match="answerKey 'B' is not one of the labels"):
        get_task("arc_easy").load("test", str(tmp_path))
    write_jsonl(tmp_path / "boolq/val.jsonl", [{"question": "q", "passage": "p", "label": "maybe"}])
    with pytest.raises(DataError, match="label 'maybe' is neither"):
        get_task("boolq").load("val", str(tmp_path))
    write_jsonl(tmp_path / "piqa/valid.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}] * 2)
    (tmp_path / "piqa/valid-labels.lst").write_text("0\n")
    with pytest.raises(DataError, match="has 1 labels for 2 records"):
        get_task("piqa").load("valid", str(tmp_path))
    write_jsonl(tmp_path / "hf/stanfordnlp/snli/default/validation.jsonl", [{"premise": "p", "label": 0}])
    with pytest.raises(DataError, match="missing field 'hypothesis'"):
        get_task("snli").load("validation", str(tmp_path))


def write_mmlu(root, dev_rows=5):
    for subject in MMLU_SUBJECTS:
        for split, n in (("test", 2), ("dev", dev_rows)):
            path = root / f"mmlu/{split}/{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{subject} q{i},w,x,y,z,{'ABCD'[i % 4]}\n" for i in range(n)))


def test_malformed_csv_row(tmp_path):
    write_mmlu(tmp_path)
    (tmp_path / "mmlu/test/anatomy_test.csv").write_text("q,a,b,c,D\n")
    with pytest.raises(DataError, match="anatomy_test.csv: row 1 has 5 fields, expected 6"):
        get_task("mmlu").load("test", str(tmp_path))


def test_fewshot_count_larger_than_the_dev_split(tmp_path):
    write_mmlu(tmp_path, dev_rows=5)
    with pytest.raises(ValueError, match="subject 'abstract_algebra': num_fewshot=6 exceeds the 5 examples"):
        prepare_prompts(get_task("mmlu"), None, TaskOptions(num_fewshot=6, data_dir=str(tmp_path)))
    prepare_prompts(get_task("mmlu"), None, TaskOptions(num_fewshot=5, data_dir=str(tmp_path)))


def test_fewshot_for_a_task_without_fewshot_split(data_dir):
    with pytest.raises(ValueError, match="'truthfulqa_mc1' has no few-shot split"):
        prepare_prompts(get_task("truthfulqa_mc1"), None, TaskOptions(num_fewshot=1, data_dir=str(data_dir)))


def test_hub_dataset_without_mirror_or_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hub dataset stanfordnlp/snli split 'validation': no local copy"):
        get_task("snli").load("validation", str(tmp_path))
