"""Which parameter gets which quantization spec: ordered (regex, spec) rules, first match wins.

Parameter paths are the "/"-joined dict keys of the params pytree, e.g. `layers_3/attn/q_proj/kernel`.
A rule's regex must match the WHOLE path (`re.fullmatch`). A rule whose spec is None keeps the
matched parameters float (use it before a broader rule to exclude them). Parameters no rule matches
stay as they are. `DEFAULT_WEIGHT_PATTERN` names every linear kernel of the decoder blocks;
embeddings, norms and lm_head are only quantized when a rule names them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence

log = logging.getLogger(__name__)

# attention, MLP, MoE experts (one by one) and the shared expert, Mamba's mixer; MoE routers
# (moe/router, moe/shared_expert_gate) and Mamba's conv1d stay float unless a rule names them.
DEFAULT_WEIGHT_PATTERN = r"layers_\d+/(attn|mlp|moe/experts_\d+|moe/shared_expert|mixer)/\w+_proj/kernel"

Rule = tuple  # (regex: str, spec | None)


@dataclasses.dataclass(frozen=True)
class CompiledRule:
    pattern: str
    regex: re.Pattern
    spec: Any


@dataclasses.dataclass
class RuleReport:
    """What a rule application did.

    matched: path -> index of the rule that matched it (spec None rules included).
    transformed: paths whose leaf was replaced (matched by a rule with a spec).
    unused_rules: patterns of rules that matched no parameter.
    """

    matched: dict
    transformed: list
    unused_rules: list

    def summary(self) -> str:
        return (f"{len(self.transformed)} parameters transformed, {len(self.matched) - len(self.transformed)} "
                f"kept float by a rule, unused rules: {self.unused_rules or 'none'}")


def compile_rules(rules: Sequence[Rule]) -> list[CompiledRule]:
    """Validate and compile ((regex, spec), ...); a bad regex raises ValueError naming it."""
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise ValueError(f"rules must be a sequence of (regex, spec) pairs, got {type(rules).__name__}")
    out = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ValueError(f"rule {i} must be a (regex string, spec) pair, got {rule!r}")
        pattern, spec = rule
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"rule {i}: regex {pattern!r} does not compile: {e}") from e
        out.append(CompiledRule(pattern, regex, spec))
    return out


def default_rules(spec) -> tuple:
    """((DEFAULT_WEIGHT_PATTERN, spec),): every decoder-block linear kernel gets `spec`."""
    return ((DEFAULT_WEIGHT_PATTERN, spec),)


def match_rule(path: str, rules: Sequence[CompiledRule]) -> Optional[int]:
    """Index of the first rule whose regex fullmatches `path`, or None."""
    for i, rule in enumerate(rules):
        if rule.regex.fullmatch(path):
            return i
    return None


def _is_container(x) -> bool:
    return isinstance(x, Mapping)


def flatten_params(params: Mapping, prefix: str = "") -> dict:
    """{path: leaf} for every non-dict leaf of nested dicts (QArrays and arrays are leaves)."""
    out = {}
    for key, value in params.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if _is_container(value):
            out.update(flatten_params(value, path))
        else:
            out[path] = value
    return out


def map_params_by_rule(params: Mapping, rules: Sequence[Rule],
                       fn: Callable[[str, Any, Any], Any], *,
                       raise_on_unused: bool = False) -> tuple[dict, RuleReport]:
    """Replace each leaf matched by a rule with a spec by fn(path, leaf, spec).

    Returns (new params as plain nested dicts, RuleReport). Rules matching nothing are logged as a
    warning and listed in the report; with raise_on_unused=True they raise ValueError instead.
    """
    compiled = compile_rules(rules)
    matched: dict = {}
    transformed: list = []

    def walk(node, prefix):
        new = {}
        for key, value in node.items():
            path = f"{prefix}/{key}" if prefix else str(key)
            if _is_container(value):
                new[key] = walk(value, path)
                continue
            i = match_rule(path, compiled)
            if i is not None:
                matched[path] = i
                if compiled[i].spec is not None:
                    value = fn(path, value, compiled[i].spec)
                    transformed.append(path)
            new[key] = value
        return new

    new_params = walk(params, "")
    used = set(matched.values())
    unused = [r.pattern for i, r in enumerate(compiled) if i not in used]
    if unused:
        msg = f"quantization rules matched no parameter: {unused}"
        if raise_on_unused:
            raise ValueError(msg)
        log.warning(msg)
    return new_params, RuleReport(matched=matched, transformed=transformed, unused_rules=unused)


__all__ = ["DEFAULT_WEIGHT_PATTERN", "CompiledRule", "RuleReport", "compile_rules", "default_rules",
           "match_rule", "flatten_params", "map_params_by_rule"]
