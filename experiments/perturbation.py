"""The perturbation lens on SmolLM2: five studies of which perturbations of weights and activations hurt.

  python experiments/perturbation.py --study=1 [--config=configs/perturbation.py[:quick]]

  1. perplexity vs intensity (relative L2) per kind, on weights (per tensor) and activations (per token);
  2. equal-L2 Gaussian noise confined to the smallest- vs the largest-|w| elements, per tensor family;
  3. clipping the largest-|x| share, vs Gaussian noise of the clipping's own per-tensor L2;
  4. RTN quantization error vs Gaussian / magnitude-proportional noise of the same per-tensor L2;
  5. companded (power 1/3) vs uniform grids: W4, W3 weights and 8/6-bit activations (W8A8).

Every study scores the same fixed WikiText-2 test windows (config: `windows` x `seqlen` tokens) and
appends one row per point to `<results_dir>/perturbation.jsonl` (a ResultStore; a re-run skips the
points already there), then writes `<results_dir>/study<N>.md` (tables) and `study<N>.png` (plot).
Sweeps compile once per kind (`qjax.perturb.sweep`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from cli import run  # experiments/cli.py
from qjax.checkpoints import load_model
from qjax.eval.perplexity import load_windows
from qjax.eval.results import ResultStore, make_row
from qjax.models.llama import Decoder, _to_linen
from qjax.ops.runtime import Runtime
from qjax.perturb.activations import FakeQuantActivation, linear_sites, with_activation_rule
from qjax.perturb.kinds import Clip, Confined, Gaussian, Kind, Proportional, make_kind, relative_l2
from qjax.perturb.sweep import ActivationTarget, NLLEvaluator, WeightTarget, evaluate_point, sweep
from qjax.perturb.weights import GridRoundTrip, quantization_error, quantize_params
from qjax.quant.rules import DEFAULT_WEIGHT_PATTERN, flatten_params
from qjax.formats.spec import WeightQuantSpec

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

_CONFIG = config_flags.DEFINE_config_file("config", "configs/perturbation.py", "study config")
_STUDY = flags.DEFINE_list("study", ["1"], "studies to run, 1..5 (comma-separated)")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)")

WEIGHT_FAMILIES = {
    "qkv": r"layers_\d+/attn/[qkv]_proj/kernel",
    "o": r"layers_\d+/attn/o_proj/kernel",
    "gate_up": r"layers_\d+/mlp/(gate|up)_proj/kernel",
    "down": r"layers_\d+/mlp/down_proj/kernel",
}


# ------------------------------------------------------------------------------------ the context


@dataclasses.dataclass
class Context:
    """The model, the fixed windows, the metric and the result store shared by every study."""

    cfg: Any
    config: Any
    params: dict
    windows: jax.Array
    evaluate: NLLEvaluator
    store: ResultStore
    out_dir: Path
    task: str
    values: dict  # transform -> result row already in the store

    @classmethod
    def create(cls, cfg, data_dir: Optional[str]) -> "Context":
        config, params, tokenizer = load_model(cfg.model)
        windows = load_windows(tokenizer, cfg.dataset, cfg.split, cfg.seqlen, cfg.windows, data_dir)
        if len(windows) < cfg.windows:
            raise ValueError(f"{cfg.dataset}/{cfg.split} has only {len(windows)} windows of {cfg.seqlen}")
        out_dir = Path(cfg.results_dir)
        store = ResultStore(out_dir / "perturbation.jsonl")
        task = f"{cfg.dataset}/{cfg.split}:{cfg.windows}x{cfg.seqlen}"
        values = {r["transform"]: r for r in store.rows()
                  if r["model"] == cfg.model and r["task"] == task and r["metric"] == "perplexity"}
        return cls(cfg, config, params, jnp.asarray(windows), NLLEvaluator(config, cfg.window_batch),
                   store, out_dir, task, values)

    def key(self, transform: str) -> tuple:
        return (self.cfg.model, transform, self.task, "perplexity")

    def has(self, transform: str) -> bool:
        return self.store.has(self.key(transform))

    def record(self, transform: str, nll: float, seconds: float, **details) -> dict:
        row = make_row(model=self.cfg.model, transform=transform, task=self.task, metric="perplexity",
                       value=math.exp(nll), items=int(self.windows.size - self.windows.shape[0]),
                       seconds=seconds, config=self.cfg.to_dict(), nll=nll, **details)
        self.store.append(row)
        self.values[transform] = row
        return row

    def ppl(self, transform: str) -> float:
        return self.values[transform]["value"]

    def measure(self, transform: str, compute: Callable[[], float], **details) -> float:
        """The perplexity of `transform`, computed by compute() -> mean NLL unless already stored."""
        if not self.has(transform):
            start = time.perf_counter()
            nll = float(compute())
            self.record(transform, nll, time.perf_counter() - start, **details)
            print(f"  {transform:<60} ppl {math.exp(nll):10.3f}", flush=True)
        return self.ppl(transform)

    def nll(self, params: dict, runtime: Runtime = Runtime()) -> float:
        return float(_jit_eval(self.evaluate, params, self.windows, runtime))

    def baseline(self) -> float:
        return self.measure("float", lambda: self.nll(self.params), study=0)


# evaluate(params, windows) under a static runtime: one compilation per runtime, any params values
_jit_eval = jax.jit(lambda evaluate, params, windows, runtime: evaluate(params, windows, runtime, None),
                    static_argnums=(0, 3))


# a weight perturbation with per-tensor intensities (a traced {path: amount} mapping)
_mapped_point = jax.jit(
    lambda evaluate, kind, pattern, params, windows, amounts, key: evaluate_point(
        evaluate, params, kind, amounts, key, target=WeightTarget(pattern), data=windows),
    static_argnums=(0, 1, 2))


def point_name(study: int, target: str, kind: Kind, amount: float, seed: Optional[int]) -> str:
    seed_part = "" if seed is None else f"/seed={seed}"
    return f"s{study}/{target}/{kind.name}/{kind.amount_name}={amount:g}{seed_part}"


def run_sweep(ctx: Context, study: int, target_name: str, target, kind: Kind, amounts: Sequence[float],
              deterministic: bool = False, **details) -> None:
    """Sweeps the points of one kind that are not stored yet (one compilation) and records them."""
    seeds = [ctx.cfg.seeds[0]] if deterministic else list(ctx.cfg.seeds)
    name = lambda a, s: point_name(study, target_name, kind, a, None if deterministic else s)
    missing = [a for a in amounts if any(not ctx.has(name(a, s)) for s in seeds)]
    if not missing:
        return
    start = time.perf_counter()
    result = sweep(ctx.evaluate, ctx.params, [kind], missing, seeds, target=target, config=ctx.config,
                   data=ctx.windows, batch_size=None)
    per_point = (time.perf_counter() - start) / (len(missing) * len(seeds))
    for _, amount, seed, nll in result.rows():
        transform = name(amount, seed)
        if not ctx.has(transform):
            ctx.record(transform, nll, per_point, study=study, target=target_name, kind=kind.name,
                       amount=amount, seed=seed, **details)
    print(f"  {target_name}/{kind.name}: {len(missing)} x {len(seeds)} points, "
          f"{time.perf_counter() - start:.0f} s", flush=True)


def mean_ppl(ctx: Context, names: Sequence[str]) -> float:
    """exp of the mean NLL over seeds (the perplexity of the seed-averaged loss)."""
    return math.exp(np.mean([ctx.values[n]["nll"] for n in names]))


def seed_names(ctx: Context, study: int, target: str, kind: Kind, amount: float) -> list[str]:
    return [point_name(study, target, kind, amount, s) for s in ctx.cfg.seeds]


# ------------------------------------------------------------------------------------- reporting


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(ctx: Context, study: int, title: str, sections: Sequence[str], fig) -> None:
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    png = ctx.out_dir / f"study{study}.png"
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    cfg = ctx.cfg
    text = [f"# Study {study}: {title}", "",
            f"{cfg.model}, {cfg.dataset} {cfg.split}: the first {cfg.windows} windows of {cfg.seqlen} "
            f"tokens ({ctx.windows.size - ctx.windows.shape[0]} scored tokens); seeds {list(cfg.seeds)}. "
            f"Unperturbed perplexity: {ctx.ppl('float'):.3f}.", "", *sections, "", f"![plot]({png.name})",
            ""]
    (ctx.out_dir / f"study{study}.md").write_text("\n".join(text))
    print(f"wrote {ctx.out_dir / f'study{study}.md'} and {png}")


# --------------------------------------------------------------------------------------- studies


def study1(ctx: Context) -> None:
    cfg = ctx.cfg
    targets = (("weights", WeightTarget(), cfg.s1_weight_intensities, "tensor"),
               ("activations", ActivationTarget(), cfg.s1_activation_intensities, "row"))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    sections = []
    for ax, (tname, target, intensities, granularity) in zip(axes, targets):
        kinds = [make_kind(k, granularity=granularity) for k in cfg.s1_kinds]
        for kind in kinds:
            run_sweep(ctx, 1, tname, target, kind, intensities)
        rows = []
        for kind in kinds:
            ppls = [mean_ppl(ctx, seed_names(ctx, 1, tname, kind, a)) for a in intensities]
            rows.append([kind.name] + ppls)
            ax.plot(intensities, ppls, marker="o", label=kind.name)
        ax.axhline(ctx.ppl("float"), color="k", lw=0.8, ls=":", label="float")
        ax.set(xscale="log", yscale="log", xlabel="relative L2 intensity ||δ||/||x||",
               ylabel="perplexity", title=f"{tname} ({'per tensor' if granularity == 'tensor' else 'per token'})")
        ax.legend(fontsize=8)
        sections += [f"## {tname} (intensity per {'tensor' if granularity == 'tensor' else 'token'})", "",
                     md_table(["kind"] + [f"{a:g}" for a in intensities], rows), ""]
    write_report(ctx, 1, "perplexity vs intensity per kind", sections, fig)


def study2(ctx: Context) -> None:
    cfg = ctx.cfg
    fams = list(cfg.s2_families)
    fig, axes = plt.subplots(1, len(fams), figsize=(4 * len(fams), 4), squeeze=False)
    rows = []
    for ax, fam in zip(axes[0], fams):
        target = WeightTarget(WEIGHT_FAMILIES[fam])
        for share in cfg.s2_shares:
            for largest in (False, True):
                kind = Confined(share=share, largest=largest)
                run_sweep(ctx, 2, f"weights[{fam}]", target, kind, cfg.s2_intensities, family=fam)
            ppl = {largest: [mean_ppl(ctx, seed_names(ctx, 2, f"weights[{fam}]",
                                                      Confined(share=share, largest=largest), a))
                             for a in cfg.s2_intensities] for largest in (False, True)}
            for largest, style in ((False, "-"), (True, "--")):
                ax.plot(cfg.s2_intensities, ppl[largest], ls=style, marker="o",
                        label=f"{'largest' if largest else 'smallest'} {share:g}")
            for a, small, large in zip(cfg.s2_intensities, ppl[False], ppl[True]):
                rows.append([fam, f"{share:g}", f"{a:g}", small, large, "small" if small > large else "large"])
        ax.axhline(ctx.ppl("float"), color="k", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="relative L2 per tensor", ylabel="perplexity",
               title=f"{fam}")
        ax.legend(fontsize=7)
    sections = ["Gaussian noise confined to the given share of elements with the smallest or largest |w| of "
                "each tensor of the family (all layers), rescaled so ||δ|| / ||W|| equals the intensity.", "",
                md_table(["family", "share", "intensity", "ppl (smallest |w|)", "ppl (largest |w|)",
                          "hurts more"], rows)]
    write_report(ctx, 2, "equal-L2 noise on small vs large weights", sections, fig)


def _clip_l2(ctx: Context, share: float) -> tuple[dict, float]:
    """Per-tensor relative L2 of clipping `share` of every linear kernel, and the global one."""
    per, num, den = {}, 0.0, 0.0
    clip = jax.jit(lambda w, a: Clip()(w, a, jax.random.key(0)))
    for path, w in flatten_params(ctx.params).items():
        if not re.fullmatch(DEFAULT_WEIGHT_PATTERN, path):
            continue
        r = float(relative_l2(w, clip(w, share))[0])
        per[path] = r
        sq = float(jnp.sum(jnp.square(w)))
        num, den = num + r * r * sq, den + sq
    return per, math.sqrt(num / den)


def study3(ctx: Context) -> None:
    cfg = ctx.cfg
    shares = list(cfg.s3_shares)
    run_sweep(ctx, 3, "weights", WeightTarget(), Clip(), shares, deterministic=True)
    run_sweep(ctx, 3, "activations", ActivationTarget(), Clip(granularity="row"), shares,
              deterministic=True)
    rows = []
    for share in shares:
        per, total = _clip_l2(ctx, share)
        names = []
        for seed in cfg.seeds:
            name = f"s3/weights/gaussian-at-clip-l2/share={share:g}/seed={seed}"
            amounts = {p: jnp.float32(v) for p, v in per.items()}
            ctx.measure(name, lambda: _mapped_point(ctx.evaluate, Gaussian(), DEFAULT_WEIGHT_PATTERN,
                                                    ctx.params, ctx.windows, amounts,
                                                    jax.random.key(seed)),
                        study=3, target="weights", kind="gaussian", share=share, clip_l2=total, seed=seed)
            names.append(name)
        rows.append([f"{share:g}", total, ctx.ppl(point_name(3, "weights", Clip(), share, None)),
                     mean_ppl(ctx, names),
                     ctx.ppl(point_name(3, "activations", Clip(granularity="row"), share, None))])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(shares, [r[2] for r in rows], marker="o", label="weights: clip (per tensor)")
    ax.plot(shares, [r[3] for r in rows], marker="s", ls="--", label="weights: Gaussian, same L2 per tensor")
    ax.plot(shares, [r[4] for r in rows], marker="^", label="activations: clip (per token)")
    ax.axhline(ctx.ppl("float"), color="k", lw=0.8, ls=":", label="float")
    ax.set(xscale="log", yscale="log", xlabel="clipped share p of the largest |x|", ylabel="perplexity",
           title="clipping")
    ax.legend(fontsize=8)
    sections = [md_table(["share", "weights: clip rel. L2 (global)", "weights: clip ppl",
                          "weights: Gaussian same-L2 ppl", "activations: clip ppl"], rows)]
    write_report(ctx, 3, "clipping the largest values", sections, fig)


def _global_rel(errs: dict, params_flat: dict) -> float:
    num = sum(float(e) ** 2 * float(jnp.sum(jnp.square(params_flat[p]))) for p, e in errs.items())
    den = sum(float(jnp.sum(jnp.square(params_flat[p]))) for p in errs)
    return math.sqrt(num / den)


def study4(ctx: Context) -> None:
    cfg = ctx.cfg
    flat = flatten_params(ctx.params)
    rows = []
    for bits in cfg.s4_bits:
        rt = GridRoundTrip(WeightQuantSpec(bits, cfg.s4_group_size))
        errs = quantization_error(ctx.params, DEFAULT_WEIGHT_PATTERN, rt)
        total = _global_rel(errs, flat)
        rtn = ctx.measure(f"s4/weights/rtn[{rt.name}]",
                          lambda: ctx.nll(quantize_params(ctx.params, DEFAULT_WEIGHT_PATTERN, rt)),
                          study=4, bits=bits, rel_l2=total)
        row = [rt.name, total, rtn]
        for kind in (Gaussian(), Proportional()):
            names = []
            for seed in cfg.seeds:
                name = f"s4/weights/{kind.name}-at-rtn-l2[{rt.name}]/seed={seed}"
                ctx.measure(name, lambda: _mapped_point(ctx.evaluate, kind, DEFAULT_WEIGHT_PATTERN, ctx.params,
                                                        ctx.windows, errs, jax.random.key(seed)),
                            study=4, bits=bits, kind=kind.name, rel_l2=total, seed=seed)
                names.append(name)
            row.append(mean_ppl(ctx, names))
        rows.append(row)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    x = np.arange(len(rows))
    for j, (label, col) in enumerate((("RTN", 2), ("Gaussian, same L2", 3), ("proportional, same L2", 4))):
        ax.bar(x + (j - 1) * 0.27, [r[col] for r in rows], width=0.27, label=label)
    ax.axhline(ctx.ppl("float"), color="k", lw=0.8, ls=":", label="float")
    ax.set(xticks=x, xticklabels=[r[0] for r in rows], yscale="log", ylabel="perplexity",
           title="quantization as perturbation")
    ax.legend(fontsize=8)
    sections = ["Each tensor's artificial noise has exactly the relative L2 of its own RTN error.", "",
                md_table(["quantizer", "RTN rel. L2 (global)", "RTN ppl", "Gaussian same-L2 ppl",
                          "proportional same-L2 ppl"], rows)]
    write_report(ctx, 4, "RTN error vs artificial noise of the same L2", sections, fig)


def _split_error(params: dict, rt: GridRoundTrip) -> tuple[float, float, float]:
    """Global relative L2 of the round trip: overall, on the smaller half of |w| (per tensor), larger half."""
    acc = np.zeros((3, 2))
    for path, w in flatten_params(params).items():
        if not re.fullmatch(DEFAULT_WEIGHT_PATTERN, path):
            continue
        w = np.asarray(w, np.float64)
        d = np.asarray(rt(w), np.float64) - w
        small = np.abs(w) <= np.median(np.abs(w))
        for i, m in enumerate((np.ones_like(small), small, ~small)):
            acc[i] += (np.sum(d[m] ** 2), np.sum(w[m] ** 2))
    return tuple(float(math.sqrt(n / d)) for n, d in acc)


def _activation_error(ctx: Context, quantizer: FakeQuantActivation) -> tuple[float, float, float]:
    """Global relative L2 of fake-quantizing every linear input of the first window (same split)."""
    _, inter = Decoder(ctx.config).apply(_to_linen(ctx.params), ctx.windows[:1], mutable=["intermediates"])
    acc = np.zeros((3, 2))
    for site in linear_sites(ctx.config):
        node = inter["intermediates"]
        for part in site.split("/"):
            node = node[part]
        x = np.asarray(node["input"][0], np.float64)
        d = np.asarray(quantizer(jnp.asarray(x, jnp.float32)), np.float64) - x
        small = np.abs(x) <= np.median(np.abs(x), axis=-1, keepdims=True)
        for i, m in enumerate((np.ones_like(small), small, ~small)):
            acc[i] += (np.sum(d[m] ** 2), np.sum(x[m] ** 2))
    return tuple(float(math.sqrt(n / d)) for n, d in acc)


def study5(ctx: Context) -> None:
    cfg = ctx.cfg
    rows = []
    for bits in cfg.s5_bits:
        for spec in (WeightQuantSpec(bits, cfg.s5_group_size),
                     WeightQuantSpec(bits, cfg.s5_group_size, symmetric=True),
                     WeightQuantSpec(bits, cfg.s5_group_size, symmetric=True, grid="companded",
                                     companding_power=cfg.s5_power)):
            rt = GridRoundTrip(spec)
            err = _split_error(ctx.params, rt)
            ppl = ctx.measure(f"s5/weights/{rt.name}",
                              lambda: ctx.nll(quantize_params(ctx.params, DEFAULT_WEIGHT_PATTERN, rt)),
                              study=5, rel_l2=err[0], rel_l2_small=err[1], rel_l2_large=err[2])
            rows.append([f"W{bits}A16", rt.name, *err, ppl])
    for abits in cfg.s5_act_bits:
        for power in (1.0, cfg.s5_power):
            aq = FakeQuantActivation(abits, power)
            err = _activation_error(ctx, aq)
            runtime = with_activation_rule(Runtime(), ".*", aq, ctx.config)
            ppl = ctx.measure(f"s5/activations/{aq.name}", lambda: ctx.nll(ctx.params, runtime), study=5,
                              rel_l2=err[0], rel_l2_small=err[1], rel_l2_large=err[2])
            rows.append([f"W16A{abits}", aq.name + " (per token)", *err, ppl])
            grid = "uniform" if power == 1.0 else "companded"
            rt = GridRoundTrip(WeightQuantSpec(8, None, symmetric=True, grid=grid, companding_power=cfg.s5_power))
            werr = _split_error(ctx.params, rt)
            ppl = ctx.measure(f"s5/w8a{abits}/{rt.name}+{aq.name}",
                              lambda: ctx.nll(quantize_params(ctx.params, DEFAULT_WEIGHT_PATTERN, rt), runtime),
                              study=5, weight_rel_l2=werr[0], act_rel_l2=err[0])
            rows.append([f"W8A{abits}", f"{rt.name} + {aq.name}", *werr, ppl])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = [f"{r[0]}\n{r[1]}" for r in rows]
    ax.bar(np.arange(len(rows)), [r[5] for r in rows],
           color=["tab:orange" if ("pow" in r[1]) else "tab:blue" for r in rows])
    ax.axhline(ctx.ppl("float"), color="k", lw=0.8, ls=":", label="float")
    ax.set(xticks=np.arange(len(rows)), yscale="log", ylabel="perplexity",
           title="companded (orange) vs uniform (blue)")
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    sections = ["Quantization error is the global relative L2 ||Q(x) - x|| / ||x|| over every linear kernel "
                "(weights) or every linear input of the first window (activations); 'small' / 'large' restrict "
                "it to the elements with |x| below / above the median of their tensor (weights) or token "
                "(activations). W8A* rows report the weight error.", "",
                md_table(["setting", "quantizer", "rel. L2", "rel. L2 (small half)", "rel. L2 (large half)",
                          "ppl"], rows)]
    write_report(ctx, 5, "companded vs uniform quantization", sections, fig)


STUDIES = {1: study1, 2: study2, 3: study3, 4: study4, 5: study5}


def main(argv):
    del argv
    studies = [int(s) for s in _STUDY.value]
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        raise app.UsageError(f"unknown study {unknown}; choose from {sorted(STUDIES)}")
    ctx = Context.create(_CONFIG.value, _DATA_DIR.value)
    print(f"float perplexity on {ctx.task}: {ctx.baseline():.3f}", flush=True)
    for s in studies:
        start = time.perf_counter()
        print(f"study {s}", flush=True)
        STUDIES[s](ctx)
        print(f"study {s} done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    run(main, config=_CONFIG)
