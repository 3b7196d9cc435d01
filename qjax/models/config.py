"""Static description of a decoder: its sizes and the parts its architecture declares.

A family is a choice of parts (what each supported family sets is read from its config.json by
`qjax.checkpoints.hf_families`); the decoder in `qjax.models.decoder` is assembled from them, with no
per-family code path. Mamba, which has no attention, has its own `qjax.models.mamba.MambaConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

NORMS = ("rms", "rms_one_plus", "layer")  # RMSNorm * w | RMSNorm * (1 + w) (Gemma) | LayerNorm * w + b
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
MLPS = ("gated", "plain")  # act(gate(x)) * up(x) -> down | act(up(x)) -> down
POSITIONALS = ("rope", "alibi", "learned")
RESIDUALS = ("sequential", "parallel", "sandwich", "post")
# the model's norm over each head's dims (Qwen3, Gemma 3) | over all heads (OLMoE) | a bias-free
# LayerNorm with its own weights per head (StableLM qk_layernorm)
QK_NORMS = (None, "head", "full", "per_head")
LAYER_TYPES = ("full", "sliding")

# The families qjax reads, and the architecture string each is stored under.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3",
                           "stablelm", "gpt_neox", "falcon", "opt", "bloom", "mixtral", "qwen2_moe",
                           "qwen3_moe", "olmoe")


ROPE_SCALINGS = ("linear", "llama3", "longrope")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling as in transformers' `rope_scaling` / `rope_parameters`.

    linear: inverse frequencies / factor. llama3: factor, low/high_freq_factor and
    original_max_position_embeddings as in Llama 3.1. longrope (Phi-3 128k, Phi-3.5): inverse
    frequencies / short_factor (per frequency) while a forward's largest position + 1 is at most
    original_max_position_embeddings, else / long_factor; cos and sin are multiplied by
    attention_factor (transformers' default: sqrt(1 + ln(factor) / ln(original_max)) for factor > 1,
    factor = max_position_embeddings / original_max_position_embeddings).
    """

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    short_factor: tuple = ()
    long_factor: tuple = ()
    attention_factor: float = 1.0

    def __post_init__(self):
        if self.rope_type not in ROPE_SCALINGS:
            raise ValueError(f"RopeScaling.rope_type={self.rope_type!r}; expected one of {ROPE_SCALINGS}")
        if self.rope_type == "longrope" and (not self.short_factor or len(self.short_factor) != len(self.long_factor)):
            raise ValueError("RopeScaling longrope needs short_factor and long_factor of one length, got "
                             f"{len(self.short_factor)} and {len(self.long_factor)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder and the parts it is assembled from (defaults: Llama's).

    Frozen and hashable, so it can be a static argument of jitted functions.
    `head_dim * num_heads` need not equal `hidden_size` (some checkpoints decouple them).

    Sizes: vocab_size, hidden_size, intermediate_size (dense MLP width), num_layers, num_heads,
    num_kv_heads (1: multi-query; < num_heads: grouped), head_dim.
    Parts:
      norm: one of NORMS, for every norm of the model (eps rms_norm_eps, whatever the kind).
      mlp, activation: one of MLPS and ACTIVATIONS (SwiGLU = gated silu, GeGLU = gated gelu_tanh).
      fused_qkv / fused_gate_up: the checkpoint holds one kernel attn/qkv_proj ([q | k | v] columns) /
        mlp/gate_up_proj ([gate | up] columns) instead of separate ones.
      attention_bias (q/k/v bias), o_bias, mlp_bias: which linears carry a bias.
      qk_norm: one of QK_NORMS (eps rms_norm_eps); clip_qkv: q, k, v clamped to [-clip, clip] (OLMoE).
      positional: one of POSITIONALS; rotary_fraction: the leading share of each head's dims that
        RoPE rotates (partial rotary); position_offset: row offset into the learned table (OPT: 2).
      residual: "sequential" (x += attn(n1(x)); x += mlp(n2(x))), "parallel" (x += attn(n1(x)) +
        mlp(n2(x)); with parallel_shared_norm both read n1(x)), "sandwich" (Gemma 2/3: the block
        outputs are normed again before the residual add), "post" (OPT-350m: x = n1(x + attn(x));
        x = n2(x + mlp(x)); n1, n2 keep the pre-norm names input_norm, post_attn_norm).
      final_norm: a norm before the LM head (False: OPT-350m).
      embed_proj_dim: the embedding width when it differs from hidden_size (OPT-350m): the token
        rows go through project_in (embed_proj_dim -> hidden, no bias) before the learned positions
        are added, and the last hidden state through project_out (hidden -> embed_proj_dim) before the
        LM head.
      alibi_scale: multiplies the ALiBi slopes (Falcon adds the bias before the 1/sqrt(head_dim)
        score scale: head_dim ** -0.5; BLOOM after it: 1).
      query_scale: attention's score scale (None: head_dim ** -0.5).
      attn_softcap / final_softcap: cap * tanh(x / cap) on the attention scores / the logits.
      sliding_window, layer_types: layer i attends only its last sliding_window keys when
        layer_types[i] == "sliding" (layer_types None: every layer, when sliding_window is set).
      local_rope_theta: RoPE base of the sliding layers (Gemma 3; None: rope_theta, unscaled).
      embed_scale: embeddings multiplied by sqrt(hidden_size) (Gemma); embed_norm: a norm right after
        the embedding (BLOOM).
      MoE (num_experts > 0): each layer not in dense_layers holds `num_experts` SwiGLU experts of
        width moe_intermediate_size and a router; each token's top num_experts_per_tok experts by
        softmax probability, their weights renormalised to sum 1 when norm_topk_prob;
        shared_expert_size > 0 adds an always-on expert scaled by sigmoid(shared_expert_gate(x)).
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    sliding_window: Optional[int] = None
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    # declared parts (defaults: Llama)
    norm: str = "rms"
    mlp: str = "gated"
    activation: str = "silu"
    fused_qkv: bool = False
    fused_gate_up: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: Optional[str] = None
    clip_qkv: Optional[float] = None
    positional: str = "rope"
    rotary_fraction: float = 1.0
    position_offset: int = 0
    residual: str = "sequential"
    final_norm: bool = True
    embed_proj_dim: Optional[int] = None
    alibi_scale: float = 1.0
    parallel_shared_norm: bool = False
    query_scale: Optional[float] = None
    attn_softcap: Optional[float] = None
    final_softcap: Optional[float] = None
    layer_types: Optional[tuple] = None
    local_rope_theta: Optional[float] = None
    embed_scale: bool = False
    embed_norm: bool = False
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    shared_expert_size: int = 0
    dense_layers: tuple = ()

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; qjax supports {SUPPORTED_ARCHITECTURES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("activation", ACTIVATIONS),
                              ("positional", POSITIONALS), ("residual", RESIDUALS), ("qk_norm", QK_NORMS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; expected one of {allowed}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers or any(t not in LAYER_TYPES for t in self.layer_types):
                raise ValueError(f"ModelConfig.layer_types must hold {self.num_layers} entries of {LAYER_TYPES}, "
                                 f"got {self.layer_types!r}")
        if not 0.0 < self.rotary_fraction <= 1.0 or self.rotary_dim % 2:
            raise ValueError(f"ModelConfig.rotary_fraction={self.rotary_fraction} gives an odd or empty rotary "
                             f"dim {self.rotary_dim} of head_dim {self.head_dim}")
        scaling = self.rope_scaling
        if scaling is not None and scaling.rope_type == "longrope" and len(scaling.short_factor) != self.rotary_dim // 2:
            raise ValueError(f"ModelConfig: longrope has {len(scaling.short_factor)} factors per frequency, the "
                             f"rotary dim {self.rotary_dim} needs {self.rotary_dim // 2}")
        if self.num_experts and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(f"ModelConfig: num_experts_per_tok={self.num_experts_per_tok} must be in "
                             f"[1, num_experts={self.num_experts}]")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def recurrent(self) -> bool:
        """False: every token attends to its keys (see `qjax.models.mamba.MambaConfig.recurrent`)."""
        return False

    @property
    def embed_dim(self) -> int:
        """Width of the embedding table and of the LM head's input (hidden_size unless embed_proj_dim)."""
        return self.embed_proj_dim or self.hidden_size

    @property
    def rotary_dim(self) -> int:
        """Leading dims of each head that RoPE rotates (head_dim unless partial rotary)."""
        return int(self.head_dim * self.rotary_fraction)

    def is_sliding(self, layer: int) -> bool:
        """Whether layer `layer` attends through the sliding window."""
        if self.sliding_window is None:
            return False
        return self.layer_types is None or self.layer_types[layer] == "sliding"

    def is_moe(self, layer: int) -> bool:
        """Whether layer `layer` holds a sparse MoE block instead of a dense MLP."""
        return self.num_experts > 0 and layer not in self.dense_layers

    @property
    def uniform_layers(self) -> bool:
        """Every layer has the same structure and attention (so they can run in one `lax.scan`)."""
        return (len({self.is_sliding(i) for i in range(self.num_layers)}) <= 1
                and len({self.is_moe(i) for i in range(self.num_layers)}) <= 1)
