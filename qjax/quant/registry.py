"""The weight-method registry: each method module declares itself, the recipe finds it by name.

A method is a `Method(name, config_cls, block_fn, ...)` registered by its own module with
`register(...)` at import time:

  name        the recipe's method prefix, e.g. "gptq" in `gptq:w4g128`
  config_cls  a frozen dataclass of the method's options; its field defaults are the defaults of
              the recipe text (`gptq:w4g128,act_order=false` overrides one field)
  block_fn    `(capture, specs_by_site, config) -> (block params, info)`, run by the shared
              block-by-block calibration loop (`qjax.quant.calibration.quantize_blockwise`):
              capture is the block's `BlockCapture`, specs_by_site maps each site of the block the
              recipe quantizes (e.g. "mlp/down_proj") to its `WeightQuantSpec` (different sites may
              have different specs), config is a `config_cls` instance. None for a method that needs
              no calibration (RTN): `quant_fn(weight, spec, path) -> weight object` is used instead
  check_spec  optional `spec -> None` raising ValueError for a spec the method cannot use
  summarize   optional `(block infos, {path: spec}, config) -> dict` merged into the report

`get_method(name)` imports every module of `qjax.quant` once (so each has registered itself) and
returns the Method; adding a method is one new module that calls `register`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Optional

_REGISTRY: dict[str, "Method"] = {}
_DISCOVERED = False


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered weight-quantization method (module docstring)."""

    name: str
    config_cls: type
    block_fn: Optional[Callable[..., tuple[dict, dict]]] = None
    quant_fn: Optional[Callable[..., Any]] = None
    check_spec: Optional[Callable[[Any], None]] = None
    summarize: Optional[Callable[..., dict]] = None
    doc: str = ""

    def __post_init__(self):
        if (self.block_fn is None) == (self.quant_fn is None):
            raise ValueError(f"method {self.name!r}: give exactly one of block_fn (calibrated) and quant_fn")
        if not (dataclasses.is_dataclass(self.config_cls) and self.config_cls.__dataclass_params__.frozen):
            raise ValueError(f"method {self.name!r}: config_cls must be a frozen dataclass")

    @property
    def calibrated(self) -> bool:
        return self.block_fn is not None


def register(method: Method) -> Method:
    """Adds `method` to the registry (a second method of the same name is an error)."""
    old = _REGISTRY.get(method.name)
    if old is not None and old != method:
        raise ValueError(f"weight method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    package = importlib.import_module("qjax.quant")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"qjax.quant.{info.name}")
    _DISCOVERED = True


def get_method(name: str) -> Method:
    """The registered method called `name`; ValueError listing the known ones otherwise."""
    if name not in _REGISTRY:
        _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown weight method {name!r}; known: {method_names()}")
    return _REGISTRY[name]


def method_names() -> tuple[str, ...]:
    """Every registered method name, sorted."""
    _discover()
    return tuple(sorted(_REGISTRY))


__all__ = ["Method", "register", "get_method", "method_names"]
