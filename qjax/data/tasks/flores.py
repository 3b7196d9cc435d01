"""FLORES-200 translation (FLORES+, `openlanguagedata/flores_plus`), one task per language pair:
"flores200:{src}-{tgt}", e.g. "flores200:eng_Latn-fra_Latn".

A local copy in the hub's layout (`flores_plus/<split>/<lang>.parquet` under the data directory) is
used if present, else the hub (`qjax.data.hub`). Documents pair the sentences of the two languages
that share an id. Prompt "{Src} sentence: {source}\\n{Tgt} sentence:", with `num_fewshot` (default 0)
solved examples from `dev` drawn per document; evaluated on `devtest`; stop at "\\n"; corpus BLEU and
chrF (sacrebleu, 0-100).
"""

from __future__ import annotations

import functools

from qjax.data.hub import hub_rows
from qjax.data.paths import DataError
from qjax.data.tasks.spec import GENERATE_UNTIL, GenerationSpec, TaskSpec

PREFIX = "flores200:"
HUB = "openlanguagedata/flores_plus"
LOCAL_DIR = "flores_plus"

LANGUAGE_NAMES = {
    "eng_Latn": "English", "fra_Latn": "French", "deu_Latn": "German", "spa_Latn": "Spanish",
    "ita_Latn": "Italian", "por_Latn": "Portuguese", "nld_Latn": "Dutch", "rus_Cyrl": "Russian",
    "zho_Hans": "Chinese", "jpn_Jpan": "Japanese", "kor_Hang": "Korean", "arb_Arab": "Arabic",
    "hin_Deva": "Hindi", "tur_Latn": "Turkish", "pol_Latn": "Polish", "ukr_Cyrl": "Ukrainian",
    "ces_Latn": "Czech", "swe_Latn": "Swedish", "fin_Latn": "Finnish", "vie_Latn": "Vietnamese",
    "ind_Latn": "Indonesian", "swh_Latn": "Swahili", "ben_Beng": "Bengali", "heb_Hebr": "Hebrew",
}


def sentences(lang: str, split: str, data_dir=None) -> dict:
    """FLORES+ sentences of one language code (e.g. "fra_Latn") and split ("dev"/"devtest"), by id."""
    rows = hub_rows(HUB, lang, split, data_dir, local_dir=LOCAL_DIR, local_pattern=f"{split}/{lang}.*",
                    required=("id", "text"))
    return {r["id"]: r["text"] for r in rows}


def load(src: str, tgt: str, split: str, data_dir=None) -> list[dict]:
    """Documents {id, source, target} for the sentence ids both languages have."""
    a, b = sentences(src, split, data_dir), sentences(tgt, split, data_dir)
    ids = sorted(set(a) & set(b))
    if not ids:
        raise DataError(f"FLORES {split}: {src} and {tgt} share no sentence ids")
    return [{"id": i, "source": a[i], "target": b[i]} for i in ids]


def task(name: str) -> TaskSpec:
    """The declaration of "flores200:<src>-<tgt>"; ValueError for another form."""
    pair = name[len(PREFIX):].split("-")
    if not name.startswith(PREFIX) or len(pair) != 2 or not all(pair):
        raise ValueError(f"FLORES task {name!r} must be {PREFIX}<src>-<tgt>, e.g. {PREFIX}eng_Latn-fra_Latn")
    src, tgt = pair
    src_name, tgt_name = LANGUAGE_NAMES.get(src, src), LANGUAGE_NAMES.get(tgt, tgt)
    return TaskSpec(name, GENERATE_UNTIL, functools.partial(load, src, tgt), "devtest", fewshot_split="dev",
                    text=f"{src_name} sentence: {{source}}\n{tgt_name} sentence:", target="{target}",
                    hub=HUB, metrics=("bleu", "chrf"),
                    generation=GenerationSpec(until=("\n",), max_new_tokens=256, scorer="bleu_chrf",
                                              reference="{target}", strip=True))
