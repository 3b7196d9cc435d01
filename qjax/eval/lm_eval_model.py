"""A qjax model as an lm-evaluation-harness model (`lm_eval.api.model.LM`): lm-eval's tasks run on
qjax's forward, float or quantized, with qjax's batching and shared-prefix scoring.

    lm = QjaxLM(config, params, tokenizer, runtime=runtime, batch_size=16)
    lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"])

The three request kinds:
- loglikelihood (context, continuation): encoded as lm-eval's HF backend does (`encode_pair`) and
  scored by `qjax.eval.loglikelihood.score_requests` (shared contexts and prefixes computed once;
  contexts cut from the left to the model's window) -> (log-likelihood, greedy).
- loglikelihood_rolling (text,): lm-eval's disjoint rolling windows of `max_length` tokens
  (`rolling_windows`, prefix token BOS/EOS) scored the same way and summed.
- generate_until (context, gen_kwargs): the context encoded without special tokens and cut from the
  left to max_length - max_gen_toks (as the HF backend), greedy or sampled (`temperature`,
  `do_sample`) with `qjax.eval.generate.generate_ids`, cut at the first `until` string.
This module needs the `bench` extra (lm-eval). Loading checkpoints is not its job (the eval room does
not import `qjax.checkpoints`): `experiments/lm_eval_qjax.py` registers `qjax` with lm-eval's model
registry as a subclass that loads `model=` (and `quant_config=` / `recipe=`) from `--model_args`.
"""

from __future__ import annotations

from typing import Any, Optional

from lm_eval.api.model import LM

from qjax.eval.generate import eos_token_ids, generate_ids
from qjax.eval.loglikelihood import encode_pair, prefix_token_id, rolling_windows, score_requests
from qjax.ops.runtime import Runtime

DEFAULT_MAX_GEN_TOKS = 256


class QjaxLM(LM):
    """lm-eval LM over (config, params, tokenizer) of a qjax model (module docstring)."""

    def __init__(self, config, params, tokenizer, *, runtime: Runtime = Runtime(), runtime_state: Any = None,
                 batch_size: int = 16, max_length: Optional[int] = None, seed: int = 0, name: str = "qjax"):
        super().__init__()
        self.config, self.params, self.tokenizer = config, params, tokenizer
        self.runtime, self.runtime_state = runtime, runtime_state
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or config.max_position_embeddings)
        self.seed = seed
        self.name = name

    # -- scoring --------------------------------------------------------------------------------------
    def _score(self, pairs):
        return score_requests(self.params, self.config, pairs, runtime=self.runtime,
                              runtime_state=self.runtime_state, batch_size=self.batch_size,
                              max_length=self.max_length)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, *r.args[:2]) for r in requests]
        results = self._score(pairs)
        for r, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", r.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        prefix = prefix_token_id(self.tokenizer)
        pairs, spans = [], []
        for r in requests:
            ids = self.tokenizer(r.args[0], add_special_tokens=False, return_attention_mask=False)["input_ids"]
            windows = rolling_windows(ids, prefix, self.max_length)
            spans.append((len(pairs), len(pairs) + len(windows)))
            pairs.extend(windows)
        scores = self._score(pairs)
        out = [float(sum(s[0] for s in scores[a:b])) for a, b in spans]
        for r, value in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, value)
        return out

    # -- generation -----------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(self._decoding(r.args[1]), []).append(i)
        out: list[Optional[str]] = [None] * len(requests)
        for (until, max_gen_toks, temperature), members in groups.items():
            budget = self.max_length - max_gen_toks
            if budget < 1:
                raise ValueError(f"max_gen_toks={max_gen_toks} leaves no room in the {self.max_length}-token window")
            ids = [self.tokenizer(requests[i].args[0], add_special_tokens=False)["input_ids"][-budget:] or
                   [prefix_token_id(self.tokenizer)] for i in members]
            decode = lambda t: self.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731

            def stop_fn(_, tokens, until=until):
                text = decode(tokens)
                return any(s in text for s in until)

            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            generated = generate_ids(self.params, self.config, ids, max_new_tokens=max_gen_toks,
                                     eos_ids=eos_token_ids(self.config, self.tokenizer), temperature=temperature,
                                     seed=self.seed, runtime=self.runtime, runtime_state=self.runtime_state,
                                     batch_size=min(self.batch_size, len(ids)), pad_id=pad,
                                     stop_fn=stop_fn if until else None)
            for i, tokens in zip(members, generated):
                text = decode(tokens)
                cuts = [text.find(s) for s in until if s and s in text]
                out[i] = text[:min(cuts)] if cuts else text
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out  # type: ignore[return-value]

    def _decoding(self, kwargs: Optional[dict]) -> tuple:
        """(until strings, max_gen_toks, temperature) of a request's gen_kwargs (lm-eval's keys)."""
        kwargs = dict(kwargs or {})
        until = kwargs.pop("until", None) or []
        until = (until,) if isinstance(until, str) else tuple(until)
        max_gen_toks = int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0) if do_sample else 0.0
        return until, max_gen_toks, temperature

    # -- chat templates (lm-eval's --apply_chat_template) ---------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", self.name).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
