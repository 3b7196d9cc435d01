"""qjax against lm-evaluation-harness on the same items: accuracy, stderr, per-item agreement, time.

SmolLM2-135M in float32. lm-eval runs its HF backend on the GGUF (dequantized by transformers) with
the task configs of benchmarks/lm_eval_tasks/ (the original local data files, prompts as lm-eval's
standard tasks), offline; qjax runs its own task registry. Both score exactly the items qjax's
seeded, stratified `limit` selects (lm-eval through its `samples` argument): ARC-Easy and PIQA
(`--items` each) and MMLU 5-shot (`--mmlu_per_subject` per subject). Printed per task: accuracy ±
stderr of each, |difference| / stderr, the share of items where both pick the same choice, the
largest per-choice log-likelihood difference, both wall times (prompting, tokenization, compilation
and scoring; model loading excluded) and their ratio. Tasks alternate between the two systems.
Also printed, as the bound on how much of a speedup can come from computing less: the tokens lm-eval
runs through the model (context + continuation - 1 per choice) and the tokens when every document's
context runs once (context + each continuation - 1; prefixes shared across documents, such as MMLU's
5-shot block, not counted as shared), and their ratio.

  QJAX_DATA_DIR=../shared/data nice -n 10 .venv/bin/python benchmarks/lm_eval_agreement.py \
      > results/tasks/lm_eval_agreement.log 2>&1 &
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from absl import app, flags

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from qjax.checkpoints import load_model, resolve  # noqa: E402
from qjax.data.paths import data_dir  # noqa: E402
from qjax.data.tasks import get_task  # noqa: E402
from qjax.data.tasks.mmlu import SUBJECTS  # noqa: E402
from qjax.eval.loglikelihood import encode_pair  # noqa: E402
from qjax.eval.tasks import TaskOptions, doc_requests, metric_rows, score_multiple_choice  # noqa: E402

_TASKS = flags.DEFINE_list("tasks", ["arc_easy", "piqa", "mmlu"], "tasks to compare")
_ITEMS = flags.DEFINE_integer("items", 500, "ARC-Easy and PIQA items")
_MMLU_PER_SUBJECT = flags.DEFINE_integer("mmlu_per_subject", 10, "MMLU items per subject")
_BATCH = flags.DEFINE_integer("batch_size", 16, "qjax's batch size (contexts per batch)")
_LM_BATCH = flags.DEFINE_integer("lm_eval_batch_size", 16, "lm-eval's batch size (requests per batch; its HF "
                                 "backend holds batch x length x vocab float32 logits, several GB for long "
                                 "MMLU 5-shot prompts at 16)")
_SEED = flags.DEFINE_integer("seed", 0, "item selection seed")
_OUT = flags.DEFINE_string("out", "results/tasks/lm_eval_agreement.json", "JSON summary")

TASK_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"


def lm_eval_configs(task: str, root: Path) -> list[dict]:
    """lm-eval task config dicts for a qjax task, data paths made absolute under `root`."""
    from datasets import Features, Value
    from lm_eval.tasks._yaml_loader import load_yaml

    def absolute(cfg):
        files = cfg["dataset_kwargs"]["data_files"]
        cfg["dataset_kwargs"]["data_files"] = {k: str(root / v) for k, v in files.items()}
        return cfg

    if task in ("arc_easy", "piqa"):
        return [absolute(load_yaml(TASK_DIR / f"qjax_{task}.yaml"))]
    template = (TASK_DIR / "qjax_mmlu_template.yaml").read_text()
    configs = []
    for subject in SUBJECTS:
        path = TASK_DIR / f".qjax_mmlu_{subject}.yaml"
        path.write_text(template.replace("SUBJECT_NAME", subject.replace("_", " ")).replace("SUBJECT", subject))
        cfg = absolute(load_yaml(path))
        path.unlink()
        cfg["dataset_kwargs"]["features"] = Features({c: Value("string") for c in
                                                      cfg["dataset_kwargs"]["column_names"]})
        configs.append(cfg)
    return configs


def lm_eval_keys(task: str, prepared, docs) -> list[tuple[str, int]]:
    """(lm-eval task name, doc index) of every item qjax selected (MMLU: per-subject indices)."""
    if task != "mmlu":
        return [(f"qjax_{task}", p.index) for p in prepared]
    first: dict[str, int] = {}
    for i, doc in enumerate(docs):
        first.setdefault(doc["subject"], i)
    return [(f"qjax_mmlu_{p.doc['subject']}", p.index - first[p.doc["subject"]]) for p in prepared]


def input_tokens(spec, prepared, tokenizer) -> tuple[int, int]:
    """(tokens lm-eval feeds the model, tokens with each document's context fed once); module docstring."""
    per_choice = once = 0
    for doc in prepared:
        pairs = [encode_pair(tokenizer, c, x) for c, x in doc_requests(spec, doc)]
        per_choice += sum(len(c) + len(x) - 1 for c, x in pairs)
        once += sum(len(c) for c in {tuple(c) for c, _ in pairs}) + sum(len(x) - 1 for _, x in pairs)
    return per_choice, once


def run_qjax(task, params, config, tokenizer, root):
    spec = get_task(task)
    limit = _MMLU_PER_SUBJECT.value if task == "mmlu" else _ITEMS.value
    options = TaskOptions(limit=limit, seed=_SEED.value, data_dir=str(root), batch_size=_BATCH.value)
    start = time.perf_counter()
    prepared, items = score_multiple_choice(spec, params, config, tokenizer, options)
    seconds = time.perf_counter() - start
    rows = {r["metric"]: r for r in metric_rows(spec, items, options, seconds) if r["task"] == task}
    return prepared, items, rows["acc"], seconds


def run_lm_eval(lm, task, ids, root):
    from lm_eval import simple_evaluate

    configs = lm_eval_configs(task, root)
    start = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=configs, samples=ids, batch_size=_LM_BATCH.value, log_samples=True)
    seconds = time.perf_counter() - start
    lls = {}  # (lm-eval task, doc id) -> per-choice log-likelihoods
    for name, samples in out["samples"].items():
        for s in samples:
            lls[name, s["doc_id"]] = np.array([float(r[0]) for r in s["filtered_resps"]])
    accs = {name: res["acc,none"] for name, res in out["results"].items() if "acc,none" in res}
    ses = {name: res.get("acc_stderr,none") for name, res in out["results"].items() if "acc,none" in res}
    return lls, accs, ses, seconds


def main(argv):
    del argv
    import torch
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(os.cpu_count() or 1)
    root = data_dir()
    config, params, tokenizer = load_model("smollm2-135m")
    gguf = resolve("smollm2-135m")
    lm = HFLM(pretrained=str(gguf.parent), gguf_file=gguf.name, dtype="float32", device="cpu",
              batch_size=_LM_BATCH.value)
    summary = {}
    for task in _TASKS.value:
        spec = get_task(task)
        prepared, items, row, qjax_s = run_qjax(task, params, config, tokenizer, root)
        keys = lm_eval_keys(task, prepared, spec.load(spec.eval_split, str(root)))
        ids: dict[str, list[int]] = {}
        for name, doc_id in keys:
            ids.setdefault(name, []).append(doc_id)
        lls, accs, ses, lm_s = run_lm_eval(lm, task, ids, root)
        same = [int(np.argmax(lls[key])) == it.pred for key, it in zip(keys, items)]
        max_diff = max(float(np.max(np.abs(lls[key] - it.lls))) for key, it in zip(keys, items))
        if task == "mmlu":  # macro average over subjects, stderr sqrt(sum se^2) / S, as qjax reports
            lm_acc = float(np.mean(list(accs.values())))
            lm_se = float(np.sqrt(sum(s ** 2 for s in ses.values())) / len(ses))
        else:
            (lm_acc,), (lm_se,) = accs.values(), ses.values()
        lm_tokens, once_tokens = input_tokens(spec, prepared, tokenizer)
        summary[task] = {"items": len(items), "lm_eval_input_tokens": lm_tokens,
                         "context_once_input_tokens": once_tokens, "qjax_acc": row["value"],
                         "qjax_stderr": row["stderr"], "lm_eval_acc": lm_acc, "lm_eval_stderr": lm_se,
                         "same_prediction": float(np.mean(same)),
                         "max_abs_loglikelihood_diff": max_diff, "qjax_seconds": qjax_s,
                         "lm_eval_seconds": lm_s, "speedup": lm_s / qjax_s}
        s = summary[task]
        print(f"{task:<9} n={s['items']:<4} qjax {s['qjax_acc']:.4f}±{s['qjax_stderr']:.4f}  "
              f"lm-eval {s['lm_eval_acc']:.4f}±{s['lm_eval_stderr']:.4f}  "
              f"|diff|/se {abs(s['qjax_acc'] - s['lm_eval_acc']) / s['qjax_stderr']:.2f}  "
              f"same pick {100 * s['same_prediction']:.1f}%  max|dll| {s['max_abs_loglikelihood_diff']:.2e}  "
              f"time qjax {qjax_s:.0f}s lm-eval {lm_s:.0f}s  speedup {s['speedup']:.2f}x  "
              f"input tokens lm-eval {lm_tokens} / context once {once_tokens} = {lm_tokens / once_tokens:.2f}",
              flush=True)
    total_q = sum(s["qjax_seconds"] for s in summary.values())
    total_l = sum(s["lm_eval_seconds"] for s in summary.values())
    print(f"total     time qjax {total_q:.0f}s lm-eval {total_l:.0f}s  speedup {total_l / total_q:.2f}x")
    Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    Path(_OUT.value).write_text(json.dumps({"tasks": summary, "load_average": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    app.run(main)
