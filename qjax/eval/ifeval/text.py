"""Text utilities of the IFEval checkers: word, sentence and token counting.

Semantics follow google-research's `instruction_following_eval/instructions_util.py`:
  * words: runs of `\\w+` (nltk's `RegexpTokenizer(r"\\w+")`);
  * sentences (`count_sentences`): nltk's Punkt sentence tokenizer. The reference loads the
    pretrained English Punkt model (`tokenizers/punkt/english.pickle`), a data download that this
    offline machine does not have; we use Punkt with its default parameters plus a fixed list of
    common English abbreviations (`ABBREVIATIONS`), so "Mr. Smith" or "e.g. this" do not end a
    sentence. Counts can differ from the reference on rare abbreviations the pretrained model
    learned;
  * `word_tokens`: nltk's Treebank-style `word_tokenize` with `preserve_line=True` (no Punkt data
    needed); it differs from the reference only in leaving a sentence-final period attached to
    its word mid-text, which does not change whether a token is upper case.
"""

from __future__ import annotations

import functools
import re

import nltk
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

# ISO 639-1 code -> language name, as the IFEval instructions name them.
LANGUAGE_CODES = {
    "en": "English", "es": "Spanish", "pt": "Portuguese", "ar": "Arabic", "hi": "Hindi",
    "fr": "French", "ru": "Russian", "de": "German", "ja": "Japanese", "it": "Italian",
    "bn": "Bengali", "uk": "Ukrainian", "th": "Thai", "ur": "Urdu", "ta": "Tamil", "te": "Telugu",
    "bg": "Bulgarian", "ko": "Korean", "pl": "Polish", "he": "Hebrew", "fa": "Persian",
    "vi": "Vietnamese", "ne": "Nepali", "sw": "Swahili", "kn": "Kannada", "mr": "Marathi",
    "gu": "Gujarati", "pa": "Punjabi", "ml": "Malayalam", "fi": "Finnish",
}

ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "u.s", "u.k",
    "inc", "ltd", "co", "corp", "no", "vol", "fig", "approx", "dept", "est", "gen", "gov", "sen",
    "rep", "rev", "capt", "lt", "col", "sgt", "mt", "ave", "blvd", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "a.m", "p.m", "ph.d", "cf", "al",
})

_WORD = re.compile(r"\w+")


def count_words(text: str) -> int:
    """Number of `\\w+` runs."""
    return len(_WORD.findall(text))


@functools.lru_cache(maxsize=1)
def _sentence_tokenizer() -> PunktSentenceTokenizer:
    params = PunktParameters()
    params.abbrev_types = set(ABBREVIATIONS)
    return PunktSentenceTokenizer(params)


def split_sentences(text: str) -> list[str]:
    """Sentences found by the Punkt tokenizer (see the module docstring)."""
    return _sentence_tokenizer().tokenize(text)


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def word_tokens(text: str) -> list[str]:
    """Treebank-style word tokens (punctuation split off)."""
    return nltk.word_tokenize(text, preserve_line=True)
