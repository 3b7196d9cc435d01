"""Generation tasks on small local fixtures (written here, in each source's own format) with a
scripted generator, plus the real generator on a tiny random model and (slow) on SmolLM2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qjax.data.paths import DataError
from qjax.eval import gen_tasks
from qjax.eval.gen_tasks import run_generation_task


def _jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _parquet(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)


class ScriptedGenerator:
    """Stands in for `qjax.eval.generate.generate`: answers from `respond(prompt)`, records calls."""

    def __init__(self, respond):
        self.respond = respond
        self.calls = []

    def __call__(self, params, config, tokenizer, prompts, **kwargs):
        self.calls.append({"prompts": list(prompts), **kwargs})
        return [self.respond(p) for p in prompts]


class WordTokenizer:
    """Whitespace tokenizer, enough for the article truncation of the summarization tasks."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}

    def decode(self, ids):
        return " ".join(ids)


def _run(name, data_dir, generator, **kwargs):
    return run_generation_task(name, None, None, WordTokenizer(), data_dir=str(data_dir),
                               generate_fn=generator, **kwargs)


def _by_metric(rows):
    return {r["metric"]: r for r in rows}


GSM_TRAIN = [{"question": f"Train question {i}?", "answer": f"Work {i}.\n#### {i}"} for i in range(12)]
GSM_TEST = [
    {"question": "Q0?", "answer": "48/2 = 24\n#### 72"},
    {"question": "Q1?", "answer": "x\n#### 1,000"},
    {"question": "Q2?", "answer": "x\n#### 5"},
    {"question": "Q3?", "answer": "x\n#### 3"},
]
GSM_COMPLETIONS = {
    "Q0?": " She sold 24 more, 48 + 24 = 72.\n#### 72",   # strict and flexible right
    "Q1?": " In total $1,000.",                           # no '####': strict invalid, flexible right
    "Q2?": " 2 + 2 = 4\n#### 4",                          # both wrong
    "Q3?": " #### 3 or maybe 8",                          # strict right, flexible (last number 8) wrong
}


@pytest.fixture()
def gsm_dir(tmp_path):
    _jsonl(tmp_path / "gsm8k/train.jsonl", GSM_TRAIN)
    _jsonl(tmp_path / "gsm8k/test.jsonl", GSM_TEST)
    return tmp_path


def _gsm_respond(prompt):
    question = prompt.rsplit("Question: ", 1)[1].split("\n")[0]
    return GSM_COMPLETIONS[question]


def test_gsm8k_prompts_protocol_and_scores(gsm_dir, tmp_path):
    gen = ScriptedGenerator(_gsm_respond)
    rows = _run("gsm8k", gsm_dir, gen, num_fewshot=3, seed=7, output_dir=tmp_path / "out")
    (call,) = gen.calls
    assert call["stop"] == ("Question:", "\n\n") and call["temperature"] == 0.0
    assert call["max_new_tokens"] == 256 and call["chat"] is False
    train_blocks = {f"Question: {r['question']}\nAnswer: {r['answer']}" for r in GSM_TRAIN}
    for prompt, doc in zip(call["prompts"], GSM_TEST):
        *shots, query = prompt.split("\n\n")
        assert query == f"Question: {doc['question']}\nAnswer:"
        assert len(shots) == 3 and len(set(shots)) == 3 and set(shots) <= train_blocks
    # Exemplars are drawn per document, reproducibly from (seed, document index).
    again = ScriptedGenerator(_gsm_respond)
    _run("gsm8k", gsm_dir, again, num_fewshot=3, seed=7)
    assert again.calls[0]["prompts"] == call["prompts"]
    assert len(set(p.rsplit("\n\n", 1)[0] for p in call["prompts"])) > 1
    m = _by_metric(rows)
    assert m["exact_match_strict"]["value"] == pytest.approx(2 / 4)
    assert m["exact_match_flexible"]["value"] == pytest.approx(2 / 4)
    # stderr of a mean of 0/1 values: sqrt(p (1 - p) / (n - 1))
    assert m["exact_match_strict"]["stderr"] == pytest.approx(math.sqrt(0.25 / 3))
    assert m["exact_match_strict"]["items"] == 4
    samples = [json.loads(l) for l in Path(m["exact_match_strict"]["details"]["samples"]).read_text().splitlines()]
    assert [s["strict"] for s in samples] == ["72", "[invalid]", "4", "3"]
    assert [s["flexible"] for s in samples] == ["72", "$1,000.", "4", "8"]


def test_gsm8k_cot_fixed_exemplars_and_chat(gsm_dir):
    gen = ScriptedGenerator(lambda p: "So 48 + 24 = 72. The answer is 72.")
    rows = _run("gsm8k_cot", gsm_dir, gen, limit=1)
    prompt = gen.calls[0]["prompts"][0]
    assert prompt.startswith("Q: There are 15 trees in the grove.")
    assert prompt.count("The answer is") == 8 and prompt.endswith("Q: Q0?\nA:")
    assert gen.calls[0]["stop"] == ("Q:", "\n\n")
    assert _by_metric(rows)["exact_match_strict"]["value"] == 1.0

    chat = ScriptedGenerator(lambda p: "The answer is 72.")
    _run("gsm8k_cot", gsm_dir, chat, limit=1, num_fewshot=2, chat_template=True)
    messages = chat.calls[0]["prompts"][0]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"].endswith("The answer is 6.") and messages[-1]["content"] == "Q: Q0?\nA:"


def test_ifeval_rows(tmp_path):
    examples = [
        {"key": 1, "prompt": "No commas please.", "instruction_id_list": ["punctuation:no_comma"],
         "kwargs": [{}]},
        {"key": 2, "prompt": "Quote it, no commas.",
         "instruction_id_list": ["startend:quotation", "punctuation:no_comma"], "kwargs": [{}, {}]},
    ]
    _jsonl(tmp_path / "ifeval/input_data.jsonl", examples)
    responses = {"No commas please.": "Fine, here.", "Quote it, no commas.": "Sure\n\"quoted text\""}
    gen = ScriptedGenerator(lambda messages: responses[messages[-1]["content"]])
    rows = _by_metric(_run("ifeval", tmp_path, gen, chat_template=True))
    assert gen.calls[0]["max_new_tokens"] == 1280 and gen.calls[0]["chat"] is True
    assert gen.calls[0]["prompts"][0] == [{"role": "user", "content": "No commas please."}]
    # strict: ex1 [F], ex2 [F, T]; loose: ex1 [F], ex2 [T, T] (first line dropped)
    assert rows["prompt_level_strict_acc"]["value"] == 0.0
    assert rows["inst_level_strict_acc"]["value"] == pytest.approx(1 / 3)
    assert rows["prompt_level_loose_acc"]["value"] == pytest.approx(1 / 2)
    assert rows["inst_level_loose_acc"]["value"] == pytest.approx(2 / 3)
    assert rows["inst_level_loose_acc"]["items"] == 3


MT_QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now make it rhyme."]},
    {"question_id": 111, "category": "math", "turns": ["What is 2+2?", "And 3+3?"],
     "reference": ["4", "6"]},
]


def test_mt_bench_two_turns_answers_file_and_judge(tmp_path):
    _jsonl(tmp_path / "mt_bench/question.jsonl", MT_QUESTIONS)
    gen = ScriptedGenerator(lambda messages: f"answer {len(messages)} to {messages[-1]['content']}")
    judged = []

    def judge(question, turn, answers, reference):
        judged.append((question["question_id"], turn, list(answers), reference))
        return 5.0 + turn

    rows = _by_metric(_run("mt_bench", tmp_path, gen, output_dir=tmp_path / "out", judge=judge))
    first, second = gen.calls
    assert all(c["chat"] is True for c in gen.calls)
    assert first["prompts"][0] == [{"role": "user", "content": "Write a haiku."}]
    assert second["prompts"][0] == [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "answer 1 to Write a haiku."},
        {"role": "user", "content": "Now make it rhyme."}]
    answers = [json.loads(l) for l in (tmp_path / "out/mt_bench_answers.jsonl").read_text().splitlines()]
    assert answers[1]["question_id"] == 111
    assert answers[1]["choices"][0]["turns"] == ["answer 1 to What is 2+2?", "answer 3 to And 3+3?"]
    assert rows["turns_answered"]["value"] == 1.0 and rows["turns_answered"]["items"] == 4
    assert rows["answer_words"]["value"] == pytest.approx(np.mean([6, 7, 6, 5]))
    assert rows["judge_score"]["value"] == pytest.approx(5.5)
    assert judged[3] == (111, 1, ["answer 1 to What is 2+2?", "answer 3 to And 3+3?"], "6")

    with pytest.raises(ValueError, match="scores must lie in \\[1, 10\\]"):
        _run("mt_bench", tmp_path, gen, judge=lambda *a: 11)


def test_xsum_rouge_on_hub_layout_fixture(tmp_path):
    docs = [{"document": "The cat sat on the mat all day long.", "summary": "The cat sat on the mat.", "id": "1"},
            {"document": "Dogs barked loudly at night.", "summary": "The dogs barked at night.", "id": "2"}]
    _parquet(tmp_path / "xsum/data/test-00000-of-00001.parquet", docs)
    _parquet(tmp_path / "xsum/data/train-00000-of-00001.parquet", docs[:1])
    outputs = {"1": " The cat sat on the mat.\n", "2": " Cats slept."}
    gen = ScriptedGenerator(lambda p: outputs["1" if "cat" in p else "2"])
    rows = _by_metric(_run("xsum", tmp_path, gen))
    assert gen.calls[0]["stop"] == ("\n\n",) and gen.calls[0]["max_new_tokens"] == 64
    assert gen.calls[0]["prompts"][0] == ("Article: The cat sat on the mat all day long.\n\n"
                                         "Summarize the article above in one sentence.\nSummary:")
    # doc 1: identical -> 100. doc 2: "cats slept" vs "the dogs barked at night": no shared unigram
    # (stemmed), so 0 for every ROUGE type.
    for metric in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert rows[metric]["value"] == pytest.approx(50.0) and rows[metric]["items"] == 2


def test_rouge_hand_worked():
    scores = gen_tasks.rouge_scores(["the cats sat quietly"], ["the cat sat"])
    # stemmed unigrams: pred {the, cat, sat, quietli}, ref {the, cat, sat}: P = 3/4, R = 1, F = 6/7
    assert scores["rouge1"][0] == pytest.approx(100 * 6 / 7)
    # bigrams: pred {the cat, cat sat, sat quietli}, ref {the cat, cat sat}: P = 2/3, R = 1, F = 0.8
    assert scores["rouge2"][0] == pytest.approx(80.0)


def test_cnn_dailymail_config_folder_and_truncation(tmp_path):
    article = " ".join(f"w{i}" for i in range(2000))
    _parquet(tmp_path / "cnn_dailymail/3.0.0/test-00000-of-00001.parquet",
             [{"article": article, "highlights": "w0 w1 w2.\nw3 w4.", "id": "a"}])
    gen = ScriptedGenerator(lambda p: "w0 w1 w2. w3 w4.")
    rows = _by_metric(_run("cnn_dailymail", tmp_path, gen))
    prompt = gen.calls[0]["prompts"][0]
    assert "w1535\n\n" in prompt and "w1536" not in prompt  # cut to 1536 source tokens
    assert rows["rougeLsum"]["value"] == pytest.approx(100.0)


def _flores(tmp_path, split, lang, texts):
    _parquet(tmp_path / f"flores_plus/{split}/{lang}.parquet",
             [{"id": i, "iso_639_3": lang[:3], "iso_15924": lang[4:], "text": t} for i, t in enumerate(texts)])


def test_flores_bleu_chrf_and_fewshot(tmp_path):
    eng = ["The house is red.", "I like green apples very much.", "Where is the train station?"]
    fra = ["La maison est rouge.", "J'aime beaucoup les pommes vertes.", "Où est la gare ?"]
    _flores(tmp_path, "devtest", "eng_Latn", eng)
    _flores(tmp_path, "devtest", "fra_Latn", fra)
    _flores(tmp_path, "dev", "eng_Latn", ["Good morning."])
    _flores(tmp_path, "dev", "fra_Latn", ["Bonjour."])
    translate = dict(zip(eng, fra))
    gen = ScriptedGenerator(lambda p: " " + translate[p.rsplit("English sentence: ", 1)[1].split("\n")[0]])
    rows = _by_metric(_run("flores200:eng_Latn-fra_Latn", tmp_path, gen, num_fewshot=1))
    prompt = gen.calls[0]["prompts"][0]
    assert prompt == ("English sentence: Good morning.\nFrench sentence: Bonjour.\n\n"
                      "English sentence: The house is red.\nFrench sentence:")
    assert gen.calls[0]["stop"] == ("\n",)
    assert rows["bleu"]["value"] == pytest.approx(100.0) and rows["chrf"]["value"] == pytest.approx(100.0)
    assert rows["bleu"]["items"] == 3

    wrong = ScriptedGenerator(lambda p: "xyz")
    rows = _by_metric(_run("flores200:eng_Latn-fra_Latn", tmp_path, wrong))
    assert rows["bleu"]["value"] == pytest.approx(0.0) and rows["chrf"]["value"] < 5


def test_unknown_task_and_bad_data(tmp_path, gsm_dir):
    gen = ScriptedGenerator(lambda p: "")
    with pytest.raises(ValueError, match="unknown task 'gsm9k'"):
        _run("gsm9k", tmp_path, gen)
    with pytest.raises(ValueError, match="not a generation task"):
        _run("arc_easy", tmp_path, gen)
    with pytest.raises(ValueError, match="flores200:<src>-<tgt>"):
        _run("flores200:eng_Latn", tmp_path, gen)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="gsm8k/test.jsonl is missing"):
        _run("gsm8k", empty, gen)
    (gsm_dir / "gsm8k/test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\nnot json\n')
    with pytest.raises(DataError, match="test.jsonl:2: malformed JSON line"):
        _run("gsm8k", gsm_dir, gen)
    (gsm_dir / "gsm8k/test.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(DataError, match="missing field\\(s\\) \\['answer'\\]"):
        _run("gsm8k", gsm_dir, gen)
    (gsm_dir / "gsm8k/test.jsonl").write_text('{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(DataError, match="no '#### ' marker"):
        _run("gsm8k", gsm_dir, gen)
    _parquet(tmp_path / "xsum/test.parquet", [{"document": "d", "id": "1"}])
    with pytest.raises(DataError, match="missing field\\(s\\) \\['summary'\\]"):
        _run("xsum", tmp_path, gen)
    (tmp_path / "cnn_dailymail").mkdir()
    with pytest.raises(DataError, match="no file for split 'test'"):
        _run("cnn_dailymail", tmp_path, gen)
    _jsonl(gsm_dir / "gsm8k/test.jsonl", GSM_TEST)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        _run("gsm8k_cot", gsm_dir, gen, limit=0)


def test_hub_dataset_without_local_copy_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hub dataset EdinburghNLP/xsum split 'test': no local copy"):
        _run("xsum", tmp_path, ScriptedGenerator(lambda p: ""))


def test_run_task_dispatches_generation_tasks(gsm_dir, monkeypatch):
    import qjax.eval.generate
    from qjax.data.tasks import get_task
    from qjax.eval.tasks import run_task

    gen = ScriptedGenerator(_gsm_respond)
    monkeypatch.setattr(qjax.eval.generate, "generate", gen)
    rows = run_task("gsm8k", None, None, WordTokenizer(), limit=2, num_fewshot=2, seed=3,
                    data_dir=str(gsm_dir), batch_size=5)
    assert gen.calls[0]["batch_size"] == 5 and len(gen.calls[0]["prompts"]) == 2
    assert _by_metric(rows)["exact_match_strict"]["value"] == pytest.approx(1 / 2)
    spec = get_task("ifeval")
    assert spec.kind == "generate_until" and spec.generation.max_new_tokens == 1280
    assert len(spec.load("train", None)) == 541


@pytest.fixture(scope="module")
def tiny_model_with_real_tokenizer():
    import jax

    from qjax.checkpoints import resolve
    from qjax.checkpoints.tokenizer import tokenizer_from_gguf
    from qjax.models import init_params
    from qjax.models.config import ModelConfig

    tokenizer = tokenizer_from_gguf(resolve("smollm2-135m"))
    config = ModelConfig(architecture="llama", vocab_size=49152, hidden_size=32, intermediate_size=64,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                         max_position_embeddings=4096, tie_word_embeddings=True, eos_token_id=2)
    return config, init_params(config, jax.random.PRNGKey(0)), tokenizer


def test_real_generator_on_tiny_random_model(tiny_model_with_real_tokenizer, data_dir, tmp_path):
    config, params, tokenizer = tiny_model_with_real_tokenizer
    rows = run_generation_task("gsm8k", params, config, tokenizer, limit=2, num_fewshot=1,
                               data_dir=str(data_dir), batch_size=2, max_new_tokens=4,
                               output_dir=tmp_path)
    assert {r["metric"] for r in rows} == {"exact_match_strict", "exact_match_flexible"}
    samples = [json.loads(l) for l in (tmp_path / "gsm8k.samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(isinstance(s["completion"], str) for s in samples)
    assert all(0.0 <= r["value"] <= 1.0 and r["items"] == 2 for r in rows)


@pytest.mark.slow
def test_smollm2_gsm8k_and_ifeval(smollm2, data_dir, tmp_path):
    config, params, tokenizer = smollm2
    rows = run_generation_task("gsm8k", params, config, tokenizer, limit=4, data_dir=str(data_dir),
                               batch_size=4, output_dir=tmp_path)
    samples = [json.loads(l) for l in (tmp_path / "gsm8k.samples.jsonl").read_text().splitlines()]
    # The 8-shot prompt makes the model answer in GSM8K's own format: every completion has '####'.
    assert sum("####" in s["completion"] for s in samples) >= 3
    assert all(0.0 <= r["value"] <= 1.0 for r in rows)
    rows = run_generation_task("ifeval", params, config, tokenizer, limit=4, data_dir=str(data_dir),
                               batch_size=4, chat_template=True, max_new_tokens=128, output_dir=tmp_path)
    assert len(rows) == 4


def test_a_new_task_runs_from_its_declaration_alone(monkeypatch):
    """Stop strings, budget, shots, templates and scoring all come from the TaskSpec."""
    from qjax.data.tasks import TASKS, GenerationSpec, TaskSpec

    splits = {"train": [{"q": "1+1", "a": "2"}, {"q": "2+2", "a": "4"}],
              "test": [{"q": "3+3", "a": "6"}, {"q": "5+5", "a": "10"}]}
    spec = TaskSpec("toy_sums", "generate_until", lambda split, data_dir: splits[split], "test",
                    fewshot_split="train", num_fewshot=2, fewshot_sampler="first_n", text="Sum {q} =",
                    target="{a}", fewshot_delimiter="\n", metrics=("exact_match_strict", "exact_match_flexible"),
                    generation=GenerationSpec(until=("\nSum",), max_new_tokens=5, scorer="exact_match",
                                              answer_pattern=r"ANSWER (\d+)", reference="{a}"))
    monkeypatch.setitem(TASKS, "toy_sums", spec)
    gen = ScriptedGenerator(lambda p: " ANSWER 6" if p.endswith("3+3 =") else " 9 or 10")
    rows = _by_metric(run_generation_task("toy_sums", None, None, None, generate_fn=gen))
    (call,) = gen.calls
    assert call["stop"] == ("\nSum",) and call["max_new_tokens"] == 5
    assert call["prompts"][0] == "Sum 1+1 = 2\nSum 2+2 = 4\nSum 3+3 ="
    assert rows["exact_match_strict"]["value"] == 0.5 and rows["exact_match_flexible"]["value"] == 1.0
    assert rows["exact_match_strict"]["details"]["num_fewshot"] == 2
    gen = ScriptedGenerator(lambda p: "")
    run_generation_task("toy_sums", None, None, None, generate_fn=gen, num_fewshot=0, max_new_tokens=3)
    assert gen.calls[0]["prompts"][0] == "Sum 3+3 =" and gen.calls[0]["max_new_tokens"] == 3


def test_every_declared_generation_task_names_a_known_scorer():
    from qjax.data.tasks import GENERATE_UNTIL, TASKS
    from qjax.eval.gen_tasks import SCORERS, generation_spec, is_generation_task

    names = [n for n, spec in TASKS.items() if spec.kind == GENERATE_UNTIL]
    assert {"gsm8k", "gsm8k_cot", "ifeval", "mt_bench", "xsum", "cnn_dailymail"} <= set(names)
    for name in names + ["flores200:eng_Latn-deu_Latn"]:
        spec = generation_spec(name)
        assert spec.generation.scorer in SCORERS and spec.metrics, name
        assert is_generation_task(name)
    assert not is_generation_task("arc_easy") and not is_generation_task("nonexistent")
