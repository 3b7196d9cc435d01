"""Quickstart on SmolLM2-135M: perplexity on a few WikiText-2 windows, printed as a table."""

from __future__ import annotations

from absl import app

from qjax.checkpoints import load_model
from qjax.eval.perplexity import load_windows, perplexity_of_windows

MODEL = "smollm2-135m"
SEQLEN = 2048
WINDOWS = 4


def main(argv):
    del argv
    config, params, tokenizer = load_model(MODEL)
    windows = load_windows(tokenizer, "wikitext2", "test", SEQLEN, WINDOWS)
    rows = [("float32", perplexity_of_windows(params, config, windows))]
    print(f"\n{MODEL}, WikiText-2 test, {WINDOWS} windows x {SEQLEN} tokens")
    print(f"| {'weights':<10} | {'perplexity':>10} | {'tokens':>7} | {'seconds':>7} |")
    print(f"|{'-' * 12}|{'-' * 12}|{'-' * 9}|{'-' * 9}|")
    for name, r in rows:
        print(f"| {name:<10} | {r['ppl']:>10.3f} | {r['tokens']:>7} | {r['seconds']:>7.1f} |")


if __name__ == "__main__":
    app.run(main)
