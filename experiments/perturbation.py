"""The perturbation lens on SmolLM2: which perturbations of weights and activations hurt.

  python experiments/perturbation.py --study=noise_kinds,clipping [--config=configs/perturbation.py[:quick]]

  noise_kinds       perplexity vs intensity (relative L2) per kind, on weights (per tensor) and
                    activations (per token);
  weight_magnitude  equal-L2 Gaussian noise confined to the smallest- vs the largest-|w| elements, per
                    tensor family;
  clipping          clipping the largest-|x| share, vs Gaussian noise of the clipping's own per-tensor L2;
  rtn_vs_noise      RTN quantization error vs Gaussian / magnitude-proportional noise of the same
                    per-tensor L2;
  companding        companded (power 1/3) vs uniform grids: W4, W3 weights and 8/6-bit activations (W8A8).

Every study scores the same fixed WikiText-2 test windows (config: `windows` x `seqlen` tokens) and
appends one row per point to `<results_dir>/perturbation.jsonl` (a ResultStore), then writes
`<results_dir>/<study>.md` (tables) and `<study>.png` (plot). Sweeps compile once per kind
(`qjax.perturb.sweep`).

Rows name their study: transform "<study>/<target>/<kind>/<amount>[/seed=s]" and detail `study`.
Every row carries the run id of its base (`base_identity`: model, windows, window batch, base recipe,
its calibration, and the data source of the windows and of the calibration, also stored as the
row's `data_source`). A re-run skips the points stored under the same run id and computes the others,
so a point measured on other windows, another base model or another copy of the data is never reused.
Result files written before the studies had names (transforms "s1/..".."s5/..", `study` 1..5) are
read under the new names (`renamed_row`, `STUDY_NUMBERS`); having no run id (nor data source), their
points are recomputed by a re-run rather than trusted.
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

from cli import ConfigError, run  # experiments/cli.py
try:  # run as a script (experiments/ on sys.path) or imported as experiments.*
    from multihost import setup_mesh
except ImportError:
    from experiments.multihost import setup_mesh
from qjax.analysis.table import markdown_table
from qjax.checkpoints import load_model
from qjax.data.corpus import load_windows
from qjax.data.provenance import calibration_identity, corpus_sources, describe as describe_sources
from qjax.eval.results import ResultStore, make_row, run_id
from qjax.models.llama import Decoder, linen_variables
from qjax.ops.runtime import Runtime
from qjax.parallel import active_mesh
from qjax.perturb.activations import FakeQuantActivation, linear_sites, with_activation_rule
from qjax.perturb.kinds import Clip, Confined, Gaussian, Kind, Proportional, make_kind, relative_l2
from qjax.perturb.sweep import ActivationTarget, NLLEvaluator, WeightTarget, evaluate_point, sweep
from qjax.perturb.weights import GridRoundTrip, quantization_error, quantize_params
from qjax.quant.calibration import dequantized
from qjax.quant.recipe import Recipe, apply_recipe
from qjax.quant.rules import DEFAULT_WEIGHT_PATTERN, flatten_params
from qjax.formats.spec import WeightQuantSpec

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

_CONFIG = config_flags.DEFINE_config_file("config", "configs/perturbation.py", "study config")
_STUDY = flags.DEFINE_list("study", ["noise_kinds"], "studies to run (comma-separated): noise_kinds, "
                           "weight_magnitude, clipping, rtn_vs_noise, companding")
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
    run_id: str  # identity of the base every point perturbs (`base_identity`)
    data_source: str  # the windows' (and calibration's) data files or hub revisions
    values: dict  # transform -> result row of this run id already in the store

    @classmethod
    def create(cls, cfg, data_dir: Optional[str]) -> "Context":
        try:
            recipe = Recipe.parse(cfg.recipe)
        except ValueError as e:
            raise ConfigError(f"--config.recipe: {e}") from None
        if recipe.runtime().activations or recipe.kv is not None:
            raise ConfigError(f"--config.recipe={recipe}: perturbation studies perturb the weights and activations "
                              f"themselves, so the base recipe may quantize weights only (no a<bits> / kv<bits>)")
        task = window_task(cfg)
        rid, source = base_identity(cfg, recipe, data_dir)  # reads the data: fails before the model loads
        out_dir = Path(cfg.results_dir)
        store = ResultStore(out_dir / "perturbation.jsonl")
        config, params, tokenizer = load_model(cfg.model, mesh=active_mesh())
        if str(recipe) != "float":  # the studies perturb the base model's (dequantized) weights
            params = dequantized(apply_recipe(recipe, params, config, tokenizer, cfg.calibration,
                                              data_dir=data_dir).params)
        windows = load_windows(tokenizer, cfg.dataset, cfg.split, cfg.seqlen, cfg.windows, data_dir)
        if len(windows) < cfg.windows:
            raise ConfigError(f"--config.windows={cfg.windows}: {cfg.dataset}/{cfg.split} has only {len(windows)} "
                              f"windows of {cfg.seqlen} tokens")
        return cls(cfg, config, params, jnp.asarray(windows), NLLEvaluator(config, cfg.window_batch),
                   store, out_dir, task, rid, source, stored_points(store, cfg.model, task, rid))

    def has(self, transform: str) -> bool:
        return transform in self.values

    def record(self, transform: str, nll: float, seconds: float, **details) -> dict:
        recipe = Recipe.parse(self.cfg.recipe)
        row = make_row(model=self.cfg.model, transform=transform, task=self.task, metric="perplexity",
                       value=math.exp(nll), items=int(self.windows.size - self.windows.shape[0]),
                       seconds=seconds, config=self.cfg.to_dict(), nll=nll, run_id=self.run_id,
                       data_source=self.data_source, recipe=str(recipe), recipe_hash=recipe.hash, **details)
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
        return self.measure("float", lambda: self.nll(self.params), study="float")


def window_task(cfg) -> str:
    """The row's task: "<dataset>/<split>:<windows>x<seqlen>", with "@<recipe>" on a quantized base."""
    task = f"{cfg.dataset}/{cfg.split}:{cfg.windows}x{cfg.seqlen}"
    recipe = Recipe.parse(cfg.recipe)
    return task if str(recipe) == "float" else f"{task}@{recipe}"


def base_identity(cfg, recipe: Recipe, data_dir: Optional[str]) -> tuple[str, str]:
    """(run id, data source) of the base every point perturbs: model, windows, window batch (activation
    noise is drawn per forward call), the base recipe and, when it calibrates, its calibration settings
    and data. Reads the data files (their hashes), so missing data fails here, before any model loads."""
    windows_data = corpus_sources(cfg.dataset, cfg.split, data_dir)
    labels, calibration = list(windows_data), None
    if recipe.calibrated:
        calibration = calibration_identity(cfg.calibration, data_dir)
        labels = labels + [label for label in calibration["data"] if label not in labels]
    rid = run_id(model=cfg.model, task=window_task(cfg), recipe=str(recipe), window_batch=cfg.window_batch,
                 data=windows_data, calibration=calibration)
    return rid, describe_sources(labels)


# The numbers the studies had before they were named: rows of older result files are read as
# "<name>/..." (transform) with study "<name>".
STUDY_NUMBERS = {1: "noise_kinds", 2: "weight_magnitude", 3: "clipping", 4: "rtn_vs_noise", 5: "companding"}


def renamed_row(row: dict) -> dict:
    """A stored row with an old numbered study name ("s3/...", study 3) given its study's name."""
    match = re.match(r"s([1-5])/", row["transform"])
    if match is None:
        return row
    name = STUDY_NUMBERS[int(match.group(1))]
    return {**row, "transform": name + row["transform"][match.end() - 1:], "study": name}


def stored_points(store: ResultStore, model: str, task: str, rid: str) -> dict:
    """transform -> perplexity row of `model` on `task` written under run id `rid` in `store` (the later
    row of a transform wins; old study numbers renamed; rows without a run id are not points of any run)."""
    rows = (renamed_row(r) for r in store.rows())
    return {r["transform"]: r for r in rows
            if r["model"] == model and r["task"] == task and r["metric"] == "perplexity"
            and r.get("run_id") == rid}


# evaluate(params, windows) under a static runtime: one compilation per runtime, any params values
_jit_eval = jax.jit(lambda evaluate, params, windows, runtime: evaluate(params, windows, runtime, None),
                    static_argnums=(0, 3))


# a weight perturbation with per-tensor intensities (a traced {path: amount} mapping)
_mapped_point = jax.jit(
    lambda evaluate, kind, pattern, params, windows, amounts, key: evaluate_point(
        evaluate, params, kind, amounts, key, target=WeightTarget(pattern), data=windows),
    static_argnums=(0, 1, 2))


def point_name(study: str, target: str, kind: Kind, amount: float, seed: Optional[int]) -> str:
    seed_part = "" if seed is None else f"/seed={seed}"
    return f"{study}/{target}/{kind.name}/{kind.amount_name}={amount:g}{seed_part}"


def run_sweep(ctx: Context, study: str, target_name: str, target, kind: Kind, amounts: Sequence[float],
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


def seed_names(ctx: Context, study: str, target: str, kind: Kind, amount: float) -> list[str]:
    return [point_name(study, target, kind, amount, s) for s in ctx.cfg.seeds]


# ------------------------------------------------------------------------------------- reporting


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table, floats to 3 decimals."""
    return markdown_table(header, [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows])


def write_report(ctx: Context, study: str, title: str, sections: Sequence[str], fig) -> None:
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    png = ctx.out_dir / f"{study}.png"
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    cfg = ctx.cfg
    text = [f"# {study}: {title}", "",
            f"{cfg.model}, {cfg.dataset} {cfg.split}: the first {cfg.windows} windows of {cfg.seqlen} "
            f"tokens ({ctx.windows.size - ctx.windows.shape[0]} scored tokens); seeds {list(cfg.seeds)}. "
            f"Unperturbed perplexity: {ctx.ppl('float'):.3f}.", "", *sections, "", f"![plot]({png.name})",
            ""]
    (ctx.out_dir / f"{study}.md").write_text("\n".join(text))
    print(f"wrote {ctx.out_dir / f'{study}.md'} and {png}")


# --------------------------------------------------------------------------------------- studies


def noise_kinds(ctx: Context) -> None:
    cfg = ctx.cfg.noise_kinds
    targets = (("weights", WeightTarget(), cfg.weight_intensities, "tensor"),
               ("activations", ActivationTarget(), cfg.activation_intensities, "row"))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    sections = []
    for ax, (tname, target, intensities, granularity) in zip(axes, targets):
        kinds = [make_kind(k, granularity=granularity) for k in cfg.kinds]
        for kind in kinds:
            run_sweep(ctx, "noise_kinds", tname, target, kind, intensities)
        rows = []
        for kind in kinds:
            ppls = [mean_ppl(ctx, seed_names(ctx, "noise_kinds", tname, kind, a)) for a in intensities]
            rows.append([kind.name] + ppls)
            ax.plot(intensities, ppls, marker="o", label=kind.name)
        ax.axhline(ctx.ppl("float"), color="k", lw=0.8, ls=":", label="float")
        ax.set(xscale="log", yscale="log", xlabel="relative L2 intensity ||δ||/||x||",
               ylabel="perplexity", title=f"{tname} ({'per tensor' if granularity == 'tensor' else 'per token'})")
        ax.legend(fontsize=8)
        sections += [f"## {tname} (intensity per {'tensor' if granularity == 'tensor' else 'token'})", "",
                     md_table(["kind"] + [f"{a:g}" for a in intensities], rows), ""]
    write_report(ctx, "noise_kinds", "perplexity vs intensity per kind", sections, fig)


def weight_magnitude(ctx: Context) -> None:
    cfg = ctx.cfg.weight_magnitude
    fams = list(cfg.families)
    fig, axes = plt.subplots(1, len(fams), figsize=(4 * len(fams), 4), squeeze=False)
    rows = []
    for ax, fam in zip(axes[0], fams):
        target = WeightTarget(WEIGHT_FAMILIES[fam])
        for share in cfg.shares:
            for largest in (False, True):
                kind = Confined(share=share, largest=largest)
                run_sweep(ctx, "weight_magnitude", f"weights[{fam}]", target, kind, cfg.intensities, family=fam)
            ppl = {largest: [mean_ppl(ctx, seed_names(ctx, "weight_magnitude", f"weights[{fam}]",
                                                      Confined(share=share, largest=largest), a))
                             for a in cfg.intensities] for largest in (False, True)}
            for largest, style in ((False, "-"), (True, "--")):
                ax.plot(cfg.intensities, ppl[largest], ls=style, marker="o",
                        label=f"{'largest' if largest else 'smallest'} {share:g}")
            for a, small, large in zip(cfg.intensities, ppl[False], ppl[True]):
                rows.append([fam, f"{share:g}", f"{a:g}", small, large, "small" if small > large else "large"])
        ax.axhline(ctx.ppl("float"), color="k", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="relative L2 per tensor", ylabel="perplexity",
               title=f"{fam}")
        ax.legend(fontsize=7)
    sections = ["Gaussian noise confined to the given share of elements with the smallest or largest |w| of "
                "each tensor of the family (all layers), rescaled so ||δ|| / ||W|| equals the intensity.", "",
                md_table(["family", "share", "intensity", "ppl (smallest |w|)", "ppl (largest |w|)",
                          "hurts more"], rows)]
    write_report(ctx, "weight_magnitude", "equal-L2 noise on small vs large weights", sections, fig)


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


def clipping(ctx: Context) -> None:
    shares = list(ctx.cfg.clipping.shares)
    run_sweep(ctx, "clipping", "weights", WeightTarget(), Clip(), shares, deterministic=True)
    run_sweep(ctx, "clipping", "activations", ActivationTarget(), Clip(granularity="row"), shares,
              deterministic=True)
    rows = []
    for share in shares:
        per, total = _clip_l2(ctx, share)
        names = []
        for seed in ctx.cfg.seeds:
            name = f"clipping/weights/gaussian-at-clip-l2/share={share:g}/seed={seed}"
            amounts = {p: jnp.float32(v) for p, v in per.items()}
            ctx.measure(name, lambda: _mapped_point(ctx.evaluate, Gaussian(), DEFAULT_WEIGHT_PATTERN,
                                                    ctx.params, ctx.windows, amounts,
                                                    jax.random.key(seed)),
                        study="clipping", target="weights", kind="gaussian", share=share, clip_l2=total,
                        seed=seed)
            names.append(name)
        rows.append([f"{share:g}", total, ctx.ppl(point_name("clipping", "weights", Clip(), share, None)),
                     mean_ppl(ctx, names),
                     ctx.ppl(point_name("clipping", "activations", Clip(granularity="row"), share, None))])
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
    write_report(ctx, "clipping", "clipping the largest values", sections, fig)


def _global_rel(errs: dict, params_flat: dict) -> float:
    num = sum(float(e) ** 2 * float(jnp.sum(jnp.square(params_flat[p]))) for p, e in errs.items())
    den = sum(float(jnp.sum(jnp.square(params_flat[p]))) for p in errs)
    return math.sqrt(num / den)


def rtn_vs_noise(ctx: Context) -> None:
    cfg = ctx.cfg.rtn_vs_noise
    flat = flatten_params(ctx.params)
    rows = []
    for bits in cfg.bits:
        rt = GridRoundTrip(WeightQuantSpec(bits, cfg.group_size))
        errs = quantization_error(ctx.params, DEFAULT_WEIGHT_PATTERN, rt)
        total = _global_rel(errs, flat)
        rtn = ctx.measure(f"rtn_vs_noise/weights/rtn[{rt.name}]",
                          lambda: ctx.nll(quantize_params(ctx.params, DEFAULT_WEIGHT_PATTERN, rt)),
                          study="rtn_vs_noise", bits=bits, rel_l2=total)
        row = [rt.name, total, rtn]
        for kind in (Gaussian(), Proportional()):
            names = []
            for seed in ctx.cfg.seeds:
                name = f"rtn_vs_noise/weights/{kind.name}-at-rtn-l2[{rt.name}]/seed={seed}"
                ctx.measure(name, lambda: _mapped_point(ctx.evaluate, kind, DEFAULT_WEIGHT_PATTERN, ctx.params,
                                                        ctx.windows, errs, jax.random.key(seed)),
                            study="rtn_vs_noise", bits=bits, kind=kind.name, rel_l2=total, seed=seed)
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
    write_report(ctx, "rtn_vs_noise", "RTN error vs artificial noise of the same L2", sections, fig)


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
    _, inter = Decoder(ctx.config).apply(linen_variables(ctx.params), ctx.windows[:1], mutable=["intermediates"])
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


def companding(ctx: Context) -> None:
    cfg = ctx.cfg.companding
    rows = []
    for bits in cfg.bits:
        for spec in (WeightQuantSpec(bits, cfg.group_size),
                     WeightQuantSpec(bits, cfg.group_size, symmetric=True),
                     WeightQuantSpec(bits, cfg.group_size, symmetric=True, grid="companded",
                                     companding_power=cfg.power)):
            rt = GridRoundTrip(spec)
            err = _split_error(ctx.params, rt)
            ppl = ctx.measure(f"companding/weights/{rt.name}",
                              lambda: ctx.nll(quantize_params(ctx.params, DEFAULT_WEIGHT_PATTERN, rt)),
                              study="companding", rel_l2=err[0], rel_l2_small=err[1], rel_l2_large=err[2])
            rows.append([f"W{bits}A16", rt.name, *err, ppl])
    for abits in cfg.act_bits:
        for power in (1.0, cfg.power):
            aq = FakeQuantActivation(abits, power)
            err = _activation_error(ctx, aq)
            runtime = with_activation_rule(Runtime(), ".*", aq, ctx.config)
            ppl = ctx.measure(f"companding/activations/{aq.name}", lambda: ctx.nll(ctx.params, runtime),
                              study="companding", rel_l2=err[0], rel_l2_small=err[1], rel_l2_large=err[2])
            rows.append([f"W16A{abits}", aq.name + " (per token)", *err, ppl])
            grid = "uniform" if power == 1.0 else "companded"
            rt = GridRoundTrip(WeightQuantSpec(8, None, symmetric=True, grid=grid, companding_power=cfg.power))
            werr = _split_error(ctx.params, rt)
            ppl = ctx.measure(f"companding/w8a{abits}/{rt.name}+{aq.name}",
                              lambda: ctx.nll(quantize_params(ctx.params, DEFAULT_WEIGHT_PATTERN, rt), runtime),
                              study="companding", weight_rel_l2=werr[0], act_rel_l2=err[0])
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
    write_report(ctx, "companding", "companded vs uniform quantization", sections, fig)


STUDIES = {f.__name__: f for f in (noise_kinds, weight_magnitude, clipping, rtn_vs_noise, companding)}


def main(argv):
    del argv
    studies = list(_STUDY.value)
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        raise app.UsageError(f"unknown study {unknown}; choose from {sorted(STUDIES)}")
    setup_mesh(_CONFIG.value)
    ctx = Context.create(_CONFIG.value, _DATA_DIR.value)
    print(f"float perplexity on {ctx.task}: {ctx.baseline():.3f}", flush=True)
    for s in studies:
        start = time.perf_counter()
        print(f"study {s}", flush=True)
        STUDIES[s](ctx)
        print(f"study {s} done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    run(main, config=_CONFIG)
