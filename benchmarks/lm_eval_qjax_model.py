"""Three ways to score the same items, on SmolLM2-135M float32: lm-eval with qjax's model class
(`QjaxLM`), qjax's own task runner, and lm-eval with its HF model on the same (GGUF-dequantized)
weights. ARC-Easy and PIQA, the first `--items` documents of each (lm-eval's task configs of
benchmarks/lm_eval_tasks/, the local data files). Printed per task: the three accuracies, the share
of items where the qjax model class and HF pick the same choice, the largest per-choice
log-likelihood difference between them, and the three wall times (scoring only; model loading
excluded). One line per task starts with "RESULT " (read by tests/eval/test_lm_eval_model.py).

  QJAX_DATA_DIR=../shared/data nice .venv/bin/python benchmarks/lm_eval_qjax_model.py --items=50
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lm_eval_agreement import lm_eval_configs  # noqa: E402  (benchmarks/lm_eval_agreement.py)

from qjax.checkpoints import load_model, resolve  # noqa: E402
from qjax.data.paths import data_dir  # noqa: E402
from qjax.data.tasks import get_task  # noqa: E402
from qjax.eval.loglikelihood import encode_pair, score_requests  # noqa: E402
from qjax.eval.tasks import PreparedDoc, doc_requests  # noqa: E402


def run_lm_eval(lm, task, items, root):
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=lm_eval_configs(task, root), samples={f"qjax_{task}": list(range(items))},
                          log_samples=True)
    seconds = time.perf_counter() - start
    samples = sorted(out["samples"][f"qjax_{task}"], key=lambda s: s["doc_id"])
    lls = np.array([[float(r[0]) for r in s["filtered_resps"]] for s in samples], dtype=object)
    return out["results"][f"qjax_{task}"]["acc,none"], lls, seconds


def run_qjax(task, params, config, tokenizer, items, root):
    spec = get_task(task)
    docs = spec.load(spec.eval_split, str(root))[:items]
    start = time.perf_counter()
    requests = [doc_requests(spec, PreparedDoc(i, d, (spec.doc_text(d),))) for i, d in enumerate(docs)]
    flat = [encode_pair(tokenizer, c, x) for reqs in requests for c, x in reqs]
    scores = score_requests(params, config, flat, batch_size=16)
    seconds = time.perf_counter() - start
    correct, k = [], 0
    for d, reqs in zip(docs, requests):
        lls = [s[0] for s in scores[k:k + len(reqs)]]
        k += len(reqs)
        correct.append(int(np.argmax(lls)) in spec.gold_indices(d))
    return float(np.mean(correct)), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--tasks", default="arc_easy,piqa")
    args = parser.parse_args()
    import torch
    from lm_eval.models.huggingface import HFLM

    from qjax.eval.lm_eval_model import QjaxLM

    torch.set_num_threads(os.cpu_count() or 1)
    root = data_dir()
    config, params, tokenizer = load_model("smollm2-135m")
    gguf = resolve("smollm2-135m")
    hf = HFLM(pretrained=str(gguf.parent), gguf_file=gguf.name, dtype="float32", device="cpu", batch_size=16)
    ours = QjaxLM(config, params, tokenizer, batch_size=16)
    for task in args.tasks.split(","):
        acc_q, lls_q, s_q = run_lm_eval(ours, task, args.items, root)
        acc_own, s_own = run_qjax(task, params, config, tokenizer, args.items, root)
        acc_h, lls_h, s_h = run_lm_eval(hf, task, args.items, root)
        same = np.mean([int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(lls_q, lls_h)])
        diff = max(float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float)))) for a, b in zip(lls_q, lls_h))
        print(f"{task}: {args.items} items  lm-eval+QjaxLM acc {acc_q:.4f} ({s_q:.1f} s)  qjax runner acc "
              f"{acc_own:.4f} ({s_own:.1f} s)  lm-eval+HF acc {acc_h:.4f} ({s_h:.1f} s)  "
              f"HF/QjaxLM time ratio {s_h / s_q:.2f}  same choice {same:.3f}  max |dll| {diff:.2e}", flush=True)
        print(f"RESULT {task} qjax_lm={acc_q} qjax={acc_own} hf={acc_h} same_choices={same}", flush=True)


if __name__ == "__main__":
    main()
