"""Generation-based tasks: GSM8K, IFEval, MT-Bench, XSum / CNN-DailyMail (ROUGE), FLORES-200 (BLEU, chrF).

Entry point: `run_generation_task(name, params, config, tokenizer, *, limit, num_fewshot, seed,
runtime, chat_template, data_dir, batch_size, ...) -> list[row dict]`, the signature of
`qjax.eval.tasks.run_task`, which also dispatches these tasks here (they are registered in its
registry as kind generate_until on import of this module). Each row is {task, metric, value, stderr,
items, seconds, config, details} (ready for `qjax.eval.results.make_row(model=..., transform=..., **row)`). `limit` takes the first
`limit` documents (as lm-eval's --limit); generation is greedy unless a task says otherwise.

Protocols
- gsm8k (lm-eval `gsm8k`): "Question: {q}\\nAnswer: {full worked answer}" exemplars drawn from the
  train split (seeded, per document: numpy default_rng([seed, doc_index])), joined by "\\n\\n",
  then "Question: {q}\\nAnswer:"; stop at "Question:" or "\\n\\n". Metrics `exact_match_strict`
  ("#### N") and `exact_match_flexible` (last number); see `qjax.eval.extraction`.
- gsm8k_cot (lm-eval `gsm8k_cot`): the 8 fixed chain-of-thought exemplars of Wei et al. (2022),
  "Q: {q}\\nA: {rationale} The answer is N."; stop at "Q:" or "\\n\\n"; strict = "The answer is N".
  With chat_template=True both GSM8K variants put each exemplar in its own user/assistant turn
  (lm-eval's fewshot_as_multiturn).
- ifeval: the prompt as is (a single user turn when chat_template=True), up to 1280 new tokens
  (lm-eval's max_gen_toks); strict/loose prompt- and instruction-level accuracy (`qjax.eval.ifeval`).
- mt_bench: two turns per question through the chat template, the second turn seeing the first
  answer; greedy, up to 1024 new tokens per turn (FastChat's default). Answers are returned in the
  row details and, with `output_dir`, written as FastChat-style `mt_bench_answers.jsonl`. Scoring
  needs a judge: pass `judge(question, turn_index, answers, reference) -> score (1..10)`; without
  one the rows report how many turns were answered and the mean answer length (words).
- xsum / cnn_dailymail: zero-shot "Article: ...\\n\\nSummarize the article above in one sentence /
  in a few sentences.\\nSummary:" with the article cut to `max_source_tokens` tokens; ROUGE-1/2/L/Lsum
  F1 (Google's `rouge-score`, Porter stemming, Lsum over sentence-split text), scaled to 0-100.
- flores200:{src}-{tgt} (e.g. flores200:eng_Latn-fra_Latn): "{Src} sentence: ...\\n{Tgt} sentence:"
  with `num_fewshot` (default 0) exemplars from the `dev` split, evaluated on `devtest`; stop at
  "\\n"; corpus BLEU and chrF from `sacrebleu` (0-100).

Data. GSM8K, IFEval and MT-Bench come from the data directory (`gsm8k/`, `ifeval/`, `mt_bench/`).
XSum, CNN/DailyMail and FLORES-200 are named by their hub ids (`EdinburghNLP/xsum`,
`abisee/cnn_dailymail` config 3.0.0, `openlanguagedata/flores_plus`): a local copy in the hub's own
file layout under the data directory (`xsum/`, `cnn_dailymail/`, `flores_plus/`: files whose names
start with the split, .parquet/.jsonl/.json, found recursively; FLORES as `<split>/<lang>.parquet`)
is used if present, else `datasets.load_dataset(hub id)` (fails offline with a DataError).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from qjax.data.paths import DataError, data_dir as resolve_data_dir, data_file
from qjax.eval import extraction
from qjax.eval.ifeval import load_examples as load_ifeval_examples, score_responses
from qjax.eval.ifeval.text import split_sentences
from qjax.models.config import ModelConfig
from qjax.ops.runtime import Runtime

Row = dict
GenerateFn = Callable[..., list]
Judge = Callable[[dict, int, Sequence[str], Optional[str]], float]


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """Everything a task runner needs besides its own options."""

    params: Any
    config: ModelConfig
    tokenizer: Any
    limit: Optional[int]
    num_fewshot: Optional[int]
    seed: int
    runtime: Runtime
    runtime_state: Any
    chat_template: bool
    data_dir: Optional[str]
    batch_size: int
    output_dir: Optional[Path]
    generate_fn: GenerateFn
    max_new_tokens: Optional[int]
    judge: Optional[Judge]

    def generate(self, prompts: Sequence, *, max_new_tokens: int, stop: Sequence[str] = (),
                 chat: Optional[bool] = None) -> list[str]:
        return self.generate_fn(self.params, self.config, self.tokenizer, list(prompts),
                                max_new_tokens=self.max_new_tokens or max_new_tokens, stop=tuple(stop),
                                temperature=0.0, seed=self.seed, runtime=self.runtime,
                                runtime_state=self.runtime_state,
                                chat=self.chat_template if chat is None else chat,
                                batch_size=self.batch_size)


# --- helpers --------------------------------------------------------------------------------------

def mean_stderr(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """(mean, standard error of the mean with the n-1 sample deviation); stderr None if n < 2."""
    arr = np.asarray(values, np.float64)
    if arr.size == 0:
        raise ValueError("no values to average")
    if arr.size < 2:
        return float(arr.mean()), None
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size))


def _row(task: str, metric: str, values: Sequence[float], seconds: float, **details) -> Row:
    value, stderr = mean_stderr(values)
    return {"task": task, "metric": metric, "value": value, "stderr": stderr, "items": len(values),
            "seconds": seconds, "details": details}


def _read_jsonl(path: Path, required: Sequence[str]) -> list[dict]:
    """Records of a JSONL file, each checked for `required` fields; DataError naming file:line."""
    if not path.is_file():
        raise DataError(f"data file {path} is missing")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON: {e}") from e
            _check_fields(record, required, f"{path}:{lineno}")
            records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _check_fields(record: Any, required: Sequence[str], where: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in required if f not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")


def _take(items: list, limit: Optional[int]) -> list:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    return items if limit is None else items[:limit]


def _write_jsonl_atomic(path: Path, records: Sequence[dict]) -> None:
    """Writes all records to a temp file in the same folder, fsyncs, and renames it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_samples(ctx: TaskContext, task: str, samples: Sequence[dict]) -> Optional[str]:
    if ctx.output_dir is None:
        return None
    path = ctx.output_dir / f"{task.replace(':', '_')}.samples.jsonl"
    _write_jsonl_atomic(path, samples)
    return str(path)


def _fewshot_chat(shots: Sequence[tuple[str, str]], query: str) -> list[dict]:
    messages = []
    for question, answer in shots:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": query}]


# --- GSM8K ----------------------------------------------------------------------------------------

GSM8K_COT_EXEMPLARS = (
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


GSM8K_TEXT = "Question: {question}\nAnswer:"
GSM8K_COT_TEXT = "Q: {question}\nA:"


def load_gsm8k(split: str, data_dir: Optional[str] = None) -> list[dict]:
    """GSM8K records {question, answer} of `split` ("train" or "test")."""
    if split not in ("train", "test"):
        raise DataError(f"GSM8K split must be 'train' or 'test', got {split!r}")
    records = _read_jsonl(data_file(f"gsm8k/{split}.jsonl", data_dir), ("question", "answer"))
    for i, r in enumerate(records):
        if "####" not in r["answer"]:
            raise DataError(f"gsm8k/{split}.jsonl record {i + 1}: answer has no '#### ' marker")
    return records


def gsm8k_shots(train: Sequence[dict], k: int, seed: int, doc_index: int) -> list[tuple[str, str]]:
    """k distinct train exemplars for test document `doc_index`, drawn with rng([seed, doc_index])."""
    if k > len(train):
        raise ValueError(f"num_fewshot={k} exceeds the {len(train)} train exemplars")
    rng = np.random.default_rng([seed, doc_index])
    picks = rng.choice(len(train), size=k, replace=False)
    return [(GSM8K_TEXT.format(**train[i]), train[i]["answer"]) for i in picks]


def _gsm8k_prompt(shots: Sequence[tuple[str, str]], query: str, chat: bool):
    if chat:
        return _fewshot_chat(shots, query)
    return "".join(f"{q} {a}\n\n" for q, a in shots) + query


def _run_gsm8k(ctx: TaskContext, task: str, cot: bool) -> list[Row]:
    start = time.perf_counter()
    docs = _take(load_gsm8k("test", ctx.data_dir), ctx.limit)
    k = 8 if ctx.num_fewshot is None else ctx.num_fewshot
    if cot:
        if k > len(GSM8K_COT_EXEMPLARS):
            raise ValueError(f"gsm8k_cot has {len(GSM8K_COT_EXEMPLARS)} exemplars, num_fewshot={k}")
        shots = [(GSM8K_COT_TEXT.format(question=q), a) for q, a in GSM8K_COT_EXEMPLARS[:k]]
        prompts = [_gsm8k_prompt(shots, GSM8K_COT_TEXT.format(**d), ctx.chat_template) for d in docs]
        stop = ("Q:", "\n\n")
        strict_patterns = (extraction.ANSWER_IS,)
    else:
        train = load_gsm8k("train", ctx.data_dir)
        prompts = [_gsm8k_prompt(gsm8k_shots(train, k, ctx.seed, i), GSM8K_TEXT.format(**d), ctx.chat_template)
                   for i, d in enumerate(docs)]
        stop = ("Question:", "\n\n")
        strict_patterns = (extraction.HASH_ANSWER,)
    completions = ctx.generate(prompts, max_new_tokens=256, stop=stop)
    strict, flexible, samples = [], [], []
    for d, completion in zip(docs, completions):
        target = extraction.gsm8k_target(d["answer"])
        s_pred = extraction.extract_strict(completion, strict_patterns)
        f_pred = extraction.extract_flexible(completion)
        strict.append(float(extraction.exact_match(s_pred, target)))
        flexible.append(float(extraction.exact_match(f_pred, target)))
        samples.append({"question": d["question"], "target": target, "completion": completion,
                        "strict": s_pred, "flexible": f_pred})
    seconds = time.perf_counter() - start
    info = {"num_fewshot": k, "chat_template": ctx.chat_template, "samples": _save_samples(ctx, task, samples)}
    return [_row(task, "exact_match_strict", strict, seconds, **info),
            _row(task, "exact_match_flexible", flexible, seconds, **info)]


# --- IFEval ---------------------------------------------------------------------------------------

def _run_ifeval(ctx: TaskContext, task: str) -> list[Row]:
    start = time.perf_counter()
    examples = _take(load_ifeval_examples(ctx.data_dir), ctx.limit)
    responses = ctx.generate([e.prompt for e in examples], max_new_tokens=1280)
    result = score_responses(examples, responses)
    seconds = time.perf_counter() - start
    per_prompt = result["per_prompt"]
    samples = [{"key": e.key, "prompt": e.prompt, "response": r, **p}
               for e, r, p in zip(examples, responses, per_prompt)]
    info = {"chat_template": ctx.chat_template, "samples": _save_samples(ctx, task, samples)}
    rows = []
    for level in ("strict", "loose"):
        prompt_flags = [float(all(p[level])) for p in per_prompt]
        inst_flags = [float(f) for p in per_prompt for f in p[level]]
        rows.append(_row(task, f"prompt_level_{level}_acc", prompt_flags, seconds, **info))
        rows.append(_row(task, f"inst_level_{level}_acc", inst_flags, seconds, **info))
    return rows


# --- MT-Bench -------------------------------------------------------------------------------------

def load_mt_bench(data_dir: Optional[str] = None) -> list[dict]:
    """MT-Bench questions {question_id, category, turns (2 strings), reference?}."""
    path = data_file("mt_bench/question.jsonl", data_dir)
    records = _read_jsonl(path, ("question_id", "category", "turns"))
    for r in records:
        turns = r["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise DataError(f"{path}: question {r['question_id']}: turns must be a list of strings")
    return records


def _run_mt_bench(ctx: TaskContext, task: str, model_id: str = "qjax") -> list[Row]:
    start = time.perf_counter()
    questions = _take(load_mt_bench(ctx.data_dir), ctx.limit)
    conversations: list[list[dict]] = [[] for _ in questions]
    answers: list[list[str]] = [[] for _ in questions]
    n_turns = max(len(q["turns"]) for q in questions)
    for turn in range(n_turns):
        active = [i for i, q in enumerate(questions) if turn < len(q["turns"])]
        for i in active:
            conversations[i].append({"role": "user", "content": questions[i]["turns"][turn]})
        outputs = ctx.generate([list(conversations[i]) for i in active], max_new_tokens=1024, chat=True)
        for i, text in zip(active, outputs):
            conversations[i].append({"role": "assistant", "content": text})
            answers[i].append(text)
    seconds = time.perf_counter() - start
    records = [{"question_id": q["question_id"], "category": q["category"], "model_id": model_id,
                "choices": [{"index": 0, "turns": a}], "tstamp": time.time()}
               for q, a in zip(questions, answers)]
    answers_file = None
    if ctx.output_dir is not None:
        answers_file = ctx.output_dir / "mt_bench_answers.jsonl"
        _write_jsonl_atomic(answers_file, records)
    info = {"answers_file": None if answers_file is None else str(answers_file),
            "answers": [{"question_id": r["question_id"], "turns": a} for r, a in zip(records, answers)]}
    flat = [t for a in answers for t in a]
    rows = [_row(task, "turns_answered", [float(bool(t.strip())) for t in flat], seconds, **info),
            _row(task, "answer_words", [float(len(t.split())) for t in flat], seconds)]
    if ctx.judge is not None:
        scores = []
        for q, a in zip(questions, answers):
            reference = q.get("reference")
            for turn in range(len(a)):
                ref = reference[turn] if isinstance(reference, list) and turn < len(reference) else None
                score = float(ctx.judge(q, turn, a[:turn + 1], ref))
                if not 1.0 <= score <= 10.0:
                    raise ValueError(f"judge returned {score} for question {q['question_id']} turn "
                                     f"{turn + 1}; scores must lie in [1, 10]")
                scores.append(score)
        rows.append(_row(task, "judge_score", scores, time.perf_counter() - start))
    return rows


# --- hub datasets (summarization, translation) ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HubDataset:
    """A hub dataset: its id, optional config, local folder name and required fields."""

    hub_id: str
    local_dir: str
    fields: tuple[str, ...]
    config: Optional[str] = None


XSUM = HubDataset("EdinburghNLP/xsum", "xsum", ("document", "summary"))
CNN_DAILYMAIL = HubDataset("abisee/cnn_dailymail", "cnn_dailymail", ("article", "highlights"), "3.0.0")
FLORES_PLUS = HubDataset("openlanguagedata/flores_plus", "flores_plus", ("id", "text"))


def _read_records(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:
            raise DataError(f"{path}: not a readable parquet file: {e}") from e
    if path.suffix == ".jsonl":
        return _read_jsonl(path, ())
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records")
    return data


def _local_files(root: Path, prefix: str) -> list[Path]:
    return sorted(p for p in root.rglob(f"{prefix}*")
                  if p.is_file() and p.suffix in (".parquet", ".jsonl", ".json"))


def _hub_load(dataset: HubDataset, split: str, config: Optional[str] = None) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset.hub_id, config or dataset.config, split=split)
    except Exception as e:
        raise DataError(f"{dataset.hub_id} ({split}): no local copy, and loading it from the hub "
                        f"failed: {type(e).__name__}: {e}") from e
    return [dict(r) for r in ds]


def load_hub_split(dataset: HubDataset, split: str, data_dir: Optional[str] = None) -> list[dict]:
    """Records of `split`: from `<data_dir>/<local_dir>/**/<split>*.(parquet|jsonl|json)` if such files
    exist, else from the hub. Every record must have `dataset.fields` (DataError otherwise)."""
    root = None
    try:
        root = resolve_data_dir(data_dir) / dataset.local_dir
    except DataError:
        pass
    if root is not None and root.is_dir():
        files = _local_files(root, split)
        if not files:
            raise DataError(f"{root}: no file for split {split!r} (expected names starting with it)")
        records = [r for f in files for r in _read_records(f)]
        where = str(root)
    else:
        records, where = _hub_load(dataset, split), dataset.hub_id
    if not records:
        raise DataError(f"{where}: split {split!r} is empty")
    for i, r in enumerate(records):
        _check_fields(r, dataset.fields, f"{where} ({split}) record {i + 1}")
    return records


# --- summarization (ROUGE) ------------------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-item ROUGE F1 x 100 of each type in ROUGE_TYPES (Porter stemming; Lsum on sentence lines)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    out: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score("\n".join(split_sentences(ref.strip())),
                              "\n".join(split_sentences(pred.strip())))
        for t in ROUGE_TYPES:
            out[t].append(100.0 * scores[t].fmeasure)
    return out


XSUM_INSTRUCTION = "Summarize the article above in one sentence."
CNN_DAILYMAIL_INSTRUCTION = "Summarize the article above in a few sentences."


def summarization_prompt(article: str, instruction: str) -> str:
    return f"Article: {article}\n\n{instruction}\nSummary:"


def _truncate_tokens(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def _run_summarization(ctx: TaskContext, task: str, dataset: HubDataset, instruction: str,
                       max_new_tokens: int, max_source_tokens: int = 1536) -> list[Row]:
    start = time.perf_counter()
    docs = _take(load_hub_split(dataset, "test", ctx.data_dir), ctx.limit)
    source, target = dataset.fields
    prompts = [summarization_prompt(_truncate_tokens(ctx.tokenizer, d[source], max_source_tokens), instruction)
               for d in docs]
    preds = [p.strip() for p in ctx.generate(prompts, max_new_tokens=max_new_tokens, stop=("\n\n",))]
    scores = rouge_scores(preds, [d[target] for d in docs])
    seconds = time.perf_counter() - start
    samples = [{"id": d.get("id"), "reference": d[target], "prediction": p} for d, p in zip(docs, preds)]
    info = {"hub_id": dataset.hub_id, "samples": _save_samples(ctx, task, samples)}
    return [_row(task, t, scores[t], seconds, **info) for t in ROUGE_TYPES]


# --- translation (BLEU, chrF) ---------------------------------------------------------------------

FLORES_LANGUAGE_NAMES = {
    "eng_Latn": "English", "fra_Latn": "French", "deu_Latn": "German", "spa_Latn": "Spanish",
    "ita_Latn": "Italian", "por_Latn": "Portuguese", "nld_Latn": "Dutch", "rus_Cyrl": "Russian",
    "zho_Hans": "Chinese", "jpn_Jpan": "Japanese", "kor_Hang": "Korean", "arb_Arab": "Arabic",
    "hin_Deva": "Hindi", "tur_Latn": "Turkish", "pol_Latn": "Polish", "ukr_Cyrl": "Ukrainian",
    "ces_Latn": "Czech", "swe_Latn": "Swedish", "fin_Latn": "Finnish", "vie_Latn": "Vietnamese",
    "ind_Latn": "Indonesian", "swh_Latn": "Swahili", "ben_Beng": "Bengali", "heb_Hebr": "Hebrew",
}


def load_flores(lang: str, split: str, data_dir: Optional[str] = None) -> dict[int | str, str]:
    """FLORES+ sentences of one language code (e.g. "fra_Latn") and split ("dev"/"devtest"), by id."""
    root = None
    try:
        root = resolve_data_dir(data_dir) / FLORES_PLUS.local_dir
    except DataError:
        pass
    if root is not None and root.is_dir():
        files = [p for p in (root / split).glob(f"{lang}.*") if p.suffix in (".parquet", ".jsonl", ".json")]
        if not files:
            raise DataError(f"{root / split}: no file for language {lang!r}")
        records, where = _read_records(files[0]), str(files[0])
    else:
        records, where = _hub_load(FLORES_PLUS, split, config=lang), FLORES_PLUS.hub_id
    if not records:
        raise DataError(f"{where}: no sentences")
    for i, r in enumerate(records):
        _check_fields(r, FLORES_PLUS.fields, f"{where} record {i + 1}")
    return {r["id"]: r["text"] for r in records}


def _parallel(src: str, tgt: str, split: str, data_dir: Optional[str]) -> list[tuple[str, str]]:
    a, b = load_flores(src, split, data_dir), load_flores(tgt, split, data_dir)
    ids = sorted(set(a) & set(b))
    if not ids:
        raise DataError(f"FLORES {split}: {src} and {tgt} share no sentence ids")
    return [(a[i], b[i]) for i in ids]


def _run_flores(ctx: TaskContext, task: str, src: str, tgt: str) -> list[Row]:
    import sacrebleu

    start = time.perf_counter()
    pairs = _take(_parallel(src, tgt, "devtest", ctx.data_dir), ctx.limit)
    k = ctx.num_fewshot or 0
    shots = []
    if k:
        dev = _parallel(src, tgt, "dev", ctx.data_dir)
        if k > len(dev):
            raise ValueError(f"num_fewshot={k} exceeds the {len(dev)} FLORES dev pairs")
        shots = [dev[i] for i in np.random.default_rng(ctx.seed).choice(len(dev), size=k, replace=False)]
    src_name = FLORES_LANGUAGE_NAMES.get(src, src)
    tgt_name = FLORES_LANGUAGE_NAMES.get(tgt, tgt)

    def block(s: str, t: Optional[str] = None) -> str:
        return f"{src_name} sentence: {s}\n{tgt_name} sentence:" + ("" if t is None else f" {t}")

    if ctx.chat_template:
        prompts = [_fewshot_chat([(block(s), t) for s, t in shots], block(s)) for s, _ in pairs]
    else:
        prefix = "".join(block(s, t) + "\n\n" for s, t in shots)
        prompts = [prefix + block(s) for s, _ in pairs]
    preds = [p.strip() for p in ctx.generate(prompts, max_new_tokens=256, stop=("\n",))]
    refs = [t for _, t in pairs]
    bleu = sacrebleu.corpus_bleu(preds, [refs])
    chrf = sacrebleu.corpus_chrf(preds, [refs])
    seconds = time.perf_counter() - start
    samples = [{"source": s, "reference": t, "prediction": p} for (s, t), p in zip(pairs, preds)]
    info = {"hub_id": FLORES_PLUS.hub_id, "num_fewshot": k, "samples": _save_samples(ctx, task, samples)}
    return [{"task": task, "metric": "bleu", "value": float(bleu.score), "stderr": None,
             "items": len(pairs), "seconds": seconds, "details": {**info, "signature": str(bleu)}},
            {"task": task, "metric": "chrf", "value": float(chrf.score), "stderr": None,
             "items": len(pairs), "seconds": seconds, "details": {**info, "signature": str(chrf)}}]


# --- registry -------------------------------------------------------------------------------------

GEN_TASKS: dict[str, Callable[[TaskContext, str], list[Row]]] = {
    "gsm8k": lambda ctx, name: _run_gsm8k(ctx, name, cot=False),
    "gsm8k_cot": lambda ctx, name: _run_gsm8k(ctx, name, cot=True),
    "ifeval": _run_ifeval,
    "mt_bench": _run_mt_bench,
    "xsum": lambda ctx, name: _run_summarization(ctx, name, XSUM, XSUM_INSTRUCTION, max_new_tokens=64),
    "cnn_dailymail": lambda ctx, name: _run_summarization(ctx, name, CNN_DAILYMAIL, CNN_DAILYMAIL_INSTRUCTION,
                                                          max_new_tokens=128),
}
FLORES_PREFIX = "flores200:"


def _flores_pair(name: str) -> Optional[list[str]]:
    pair = name[len(FLORES_PREFIX):].split("-")
    return pair if len(pair) == 2 and all(pair) else None


def is_generation_task(name: str) -> bool:
    """Whether `name` is a generation task: a GEN_TASKS key or flores200:<src>-<tgt>."""
    return name in GEN_TASKS or (name.startswith(FLORES_PREFIX) and _flores_pair(name) is not None)


def _resolve(name: str) -> Callable[[TaskContext, str], list[Row]]:
    if name in GEN_TASKS:
        return GEN_TASKS[name]
    if name.startswith(FLORES_PREFIX):
        pair = _flores_pair(name)
        if pair is None:
            raise KeyError(f"FLORES task {name!r} must be flores200:<src>-<tgt>, "
                           f"e.g. flores200:eng_Latn-fra_Latn")
        return lambda ctx, task: _run_flores(ctx, task, pair[0], pair[1])
    raise KeyError(f"unknown generation task {name!r}; known: {sorted(GEN_TASKS)} and "
                   f"{FLORES_PREFIX}<src>-<tgt>")


def run_generation_task(name: str, params, config: ModelConfig, tokenizer, *, limit: Optional[int] = None,
                        num_fewshot: Optional[int] = None, seed: int = 0, runtime: Runtime = Runtime(),
                        chat_template: bool = False, data_dir: Optional[str] = None, batch_size: int = 8,
                        runtime_state: Any = None, output_dir: Optional[str | os.PathLike] = None,
                        generate_fn: Optional[GenerateFn] = None, max_new_tokens: Optional[int] = None,
                        judge: Optional[Judge] = None) -> list[Row]:
    """Runs generation task `name` and returns its metric rows (see the module docstring); each row's
    `config` holds the options it ran with.

    generate_fn: defaults to `qjax.eval.generate.generate` (same signature); max_new_tokens
    overrides the task's own budget; output_dir receives per-item samples (and MT-Bench answers).
    Raises KeyError for an unknown task name, DataError for missing or malformed data.
    """
    runner = _resolve(name)
    if generate_fn is None:
        from qjax.eval.generate import generate as generate_fn
    ctx = TaskContext(params=params, config=config, tokenizer=tokenizer, limit=limit,
                      num_fewshot=num_fewshot, seed=seed, runtime=runtime, runtime_state=runtime_state,
                      chat_template=chat_template, data_dir=data_dir, batch_size=batch_size,
                      output_dir=None if output_dir is None else Path(output_dir),
                      generate_fn=generate_fn, max_new_tokens=max_new_tokens, judge=judge)
    options = {"limit": limit, "num_fewshot": num_fewshot, "seed": seed, "chat_template": chat_template,
               "max_new_tokens": max_new_tokens}
    return [{**row, "config": options} for row in runner(ctx, name)]


# --- the task registry of qjax.eval.tasks ---------------------------------------------------------

def _registry_runner(spec, params, config, tokenizer, options) -> list[Row]:
    return run_generation_task(spec.name, params, config, tokenizer, limit=options.limit,
                               num_fewshot=options.num_fewshot, seed=options.seed, runtime=options.runtime,
                               runtime_state=options.runtime_state, chat_template=options.chat_template,
                               data_dir=options.data_dir, batch_size=options.batch_size,
                               judge=getattr(options, "judge", None))


def _register() -> None:
    """Declares the GEN_TASKS in `qjax.data.tasks.TASKS` (kind generate_until, real loaders, the
    prompt of a document, decoding spec, metrics) and registers the generate_until runner, so
    `qjax.eval.tasks.run_task(name, ...)` dispatches them here. FLORES pairs are open-ended names
    and stay reachable through `run_generation_task` only."""
    from qjax.data.tasks import GENERATE_UNTIL, GenerationSpec, TaskSpec, register_task
    from qjax.eval.tasks import register_runner

    def ifeval_docs(split, data_dir):
        return [dataclasses.asdict(e) for e in load_ifeval_examples(None if data_dir is None else str(data_dir))]

    def hub_docs(dataset):
        return lambda split, data_dir: load_hub_split(dataset, split, None if data_dir is None else str(data_dir))

    def dir_arg(fn):
        return lambda split, data_dir: fn(split, None if data_dir is None else str(data_dir))

    rouge = tuple(ROUGE_TYPES)
    specs = [
        TaskSpec("gsm8k", GENERATE_UNTIL, dir_arg(load_gsm8k), "test", fewshot_split="train",
                 text=GSM8K_TEXT, target="{answer}", num_fewshot=8, hub="openai/gsm8k",
                 metrics=("exact_match_strict", "exact_match_flexible"),
                 generation=GenerationSpec(("Question:", "\n\n"), 256, extraction.HASH_ANSWER.pattern)),
        TaskSpec("gsm8k_cot", GENERATE_UNTIL, dir_arg(load_gsm8k), "test", text=GSM8K_COT_TEXT,
                 num_fewshot=8, hub="openai/gsm8k", metrics=("exact_match_strict", "exact_match_flexible"),
                 generation=GenerationSpec(("Q:", "\n\n"), 256, extraction.ANSWER_IS.pattern)),
        TaskSpec("ifeval", GENERATE_UNTIL, ifeval_docs, "train", text="{prompt}", hub="google/IFEval",
                 metrics=("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                          "inst_level_loose_acc"), generation=GenerationSpec((), 1280)),
        TaskSpec("mt_bench", GENERATE_UNTIL, lambda split, data_dir: load_mt_bench(
                     None if data_dir is None else str(data_dir)), "train", text=lambda d: d["turns"][0],
                 metrics=("turns_answered", "answer_words"), generation=GenerationSpec((), 1024)),
        TaskSpec("xsum", GENERATE_UNTIL, hub_docs(XSUM), "test", hub=XSUM.hub_id, metrics=rouge,
                 text=lambda d: summarization_prompt(d["document"], XSUM_INSTRUCTION),
                 generation=GenerationSpec(("\n\n",), 64)),
        TaskSpec("cnn_dailymail", GENERATE_UNTIL, hub_docs(CNN_DAILYMAIL), "test", hub=CNN_DAILYMAIL.hub_id,
                 text=lambda d: summarization_prompt(d["article"], CNN_DAILYMAIL_INSTRUCTION), metrics=rouge,
                 generation=GenerationSpec(("\n\n",), 128)),
    ]
    for spec in specs:
        register_task(spec, replace=True)
    register_runner(GENERATE_UNTIL, _registry_runner)


_register()

from qjax.eval import breadth_tasks  # noqa: E402,F401  (LongEval, multi-document QA, AdvGLUE, ...)
