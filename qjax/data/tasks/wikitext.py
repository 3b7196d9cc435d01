"""WikiText-2 documents for rolling perplexity: local `wikitext-2/{test,valid}.txt` cut into articles at
their top-level headings (" = Title = " lines), as `EleutherAI/wikitext_document_level`.

lm-eval's `wikitext`: the scored text is the page after `detokenize`; words and bytes are counted on
the page before it. The local copy is the tokenized WikiText-2 (rare words as <unk>), not the raw
version lm-eval reads, so values are not directly comparable with published raw-WikiText numbers.
"""

from __future__ import annotations

import re

from qjax.data.paths import DataError
from qjax.data.io import task_file
from qjax.data.tasks.spec import ROLLING, TaskSpec

_HEADING = re.compile(r"^ = [^=].* = $")


def detokenize(doc: dict) -> str:
    """lm-eval's `wikitext_detokenizer` applied to doc["page"]."""
    s = doc["page"]
    s = s.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for sep in ("-", ",", "."):
        s = s.replace(f" @{sep}@ ", sep)
    for mark in (":", ";", ".", "!", "?", ","):
        s = s.replace(f" {mark} ", f"{mark} ")
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    s = s.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    s = s.replace(" " + chr(176) + " ", chr(176))
    s = s.replace(" \n", "\n").replace("\n ", "\n")
    s = s.replace(" N ", " 1 ").replace(" 's", "'s")
    return s


def load(split: str, data_dir=None) -> list[dict]:
    """Documents {page}: the lines of one article (heading included) joined by newlines."""
    if split not in ("test", "valid", "validation"):
        raise DataError(f"wikitext has splits test, valid; got {split!r}")
    path = task_file(f"wikitext-2/{'valid' if split.startswith('valid') else 'test'}.txt", data_dir)
    pages: list[list[str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if _HEADING.match(line):
                pages.append([])
            if pages:
                pages[-1].append(line)
    if not pages:
        raise DataError(f"{path}: no article headings (' = Title = ' lines) found")
    return [{"page": "\n".join(lines).strip("\n")} for lines in pages]


TASKS = (
    TaskSpec(name="wikitext", kind=ROLLING, load=load, eval_split="test", text="{page}", target=detokenize,
             metrics=("word_perplexity", "byte_perplexity", "bits_per_byte"),
             hub="EleutherAI/wikitext_document_level", strata=lambda doc: None),
)
