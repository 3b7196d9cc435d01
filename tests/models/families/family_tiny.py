"""Tiny random checkpoints of every supported family, made from transformers configs.

`save_family(name, directory)` builds the transformers model (seed 0; norms and biases perturbed so a
dropped term shows), saves it with `save_pretrained` beside a word-level tokenizer and returns the
torch model (eval mode, float32) for reference outputs.
"""

from __future__ import annotations

import torch
import transformers

T = transformers
VOCAB = 128
LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)

# name -> (config class, model class, config kwargs)
FAMILIES = {
    "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(LLAMA_LIKE, head_dim=16)),
    "gemma": (T.GemmaConfig, T.GemmaForCausalLM, dict(LLAMA_LIKE, head_dim=16)),
    "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM, dict(
        LLAMA_LIKE, head_dim=16, query_pre_attn_scalar=24, sliding_window=6, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0)),
    "gemma3": (T.Gemma3TextConfig, T.Gemma3ForCausalLM, dict(
        LLAMA_LIKE, head_dim=16, query_pre_attn_scalar=24, sliding_window=6,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}})),
    "phi3": (T.Phi3Config, T.Phi3ForCausalLM, dict(LLAMA_LIKE, pad_token_id=0, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    "stablelm": (T.StableLmConfig, T.StableLmForCausalLM, dict(LLAMA_LIKE, use_qkv_bias=True)),
    "gpt_neox": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM, dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256)),
    "gpt_neox_sequential": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM, dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, use_parallel_residual=False)),
    "falcon": (T.FalconConfig, T.FalconForCausalLM, dict(  # falcon-7b: multi-query, one shared norm
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_hidden_size=96)),
    "falcon_new": (T.FalconConfig, T.FalconForCausalLM, dict(  # falcon-40b: grouped kv, two norms
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
        new_decoder_architecture=True, bias=True, ffn_hidden_size=96)),
    "opt": (T.OPTConfig, T.OPTForCausalLM, dict(
        vocab_size=VOCAB, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, word_embed_proj_dim=64)),
    "bloom": (T.BloomConfig, T.BloomForCausalLM, dict(vocab_size=VOCAB, hidden_size=96, n_layer=2, n_head=6)),
    # variants
    "gemma3_multimodal": (T.Gemma3Config, T.Gemma3ForConditionalGeneration, dict(
        text_config=dict(LLAMA_LIKE, head_dim=16, query_pre_attn_scalar=24, sliding_window=6, eos_token_id=None,
                         layer_types=["sliding_attention", "full_attention"]),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=VOCAB - 1, boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2)),
    "falcon_alibi": (T.FalconConfig, T.FalconForCausalLM, dict(  # falcon-rw: ALiBi, sequential, biases
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_hidden_size=96,
        alibi=True, multi_query=False, parallel_attn=False, bias=True)),
    "opt_350m": (T.OPTConfig, T.OPTForCausalLM, dict(  # post-norm blocks, project_in / project_out
        vocab_size=VOCAB, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, word_embed_proj_dim=32, do_layer_norm_before=False)),
    "stablelm_qk_parallel": (T.StableLmConfig, T.StableLmForCausalLM, dict(
        LLAMA_LIKE, qk_layernorm=True, use_parallel_residual=True)),
    "phi3_longrope": (T.Phi3Config, T.Phi3ForCausalLM, dict(  # long factors beyond 12 positions
        LLAMA_LIKE, pad_token_id=0, max_position_embeddings=48, original_max_position_embeddings=12,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                         "short_factor": [1.0, 1.25, 1.5, 2.0], "long_factor": [1.0, 3.0, 9.0, 27.0]})),
    "mixtral": (T.MixtralConfig, T.MixtralForCausalLM, dict(LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM, dict(
        LLAMA_LIKE, **MOE, num_experts=4, shared_expert_intermediate_size=48)),
    "qwen3_moe": (T.Qwen3MoeConfig, T.Qwen3MoeForCausalLM, dict(
        LLAMA_LIKE, **MOE, num_experts=4, head_dim=16, norm_topk_prob=True)),
    "olmoe": (T.OlmoeConfig, T.OlmoeForCausalLM, dict(LLAMA_LIKE, num_experts=4, num_experts_per_tok=2,
                                                       intermediate_size=32, clip_qkv=0.5)),
    "mamba": (T.MambaConfig, T.MambaForCausalLM, dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8, time_step_rank=4)),
}
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


def word_level_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def save_family(name: str, directory, **overrides):
    """Saves family `name`'s tiny model (config kwargs updated by `overrides`) to `directory`;
    returns the torch model."""
    config_cls, model_cls, kwargs = FAMILIES[name]
    torch.manual_seed(0)
    config = config_cls(**{**kwargs, **overrides})
    config.eos_token_id = None
    model = model_cls(config).eval().float()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or "ln" in pname.split(".")[-2] or pname.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory, safe_serialization=True)
    tok = T.PreTrainedTokenizerFast(tokenizer_object=word_level_tokenizer(VOCAB - 16), unk_token="<unk>")
    tok.save_pretrained(directory)
    return model
