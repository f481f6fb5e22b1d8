"""Bundled model presets: the published config.json values (the fields kvplan reads), with their source.

Each preset is the subset of the model's config.json that kvplan.families reads, so presets and local
config files go through one parser. The T6 presets are the TPA paper's models as its released code trains
them (tensorgi/TPA, config/train_*_{small,medium,large,xl}*.py read by train_adam.py): GPT-2 small to XL
depth and width, head_dim 64, SwiGLU hidden floor(8/3 d_model) (model/T6.py MLP), vocab 50304 (train_adam.py's
default), tied embeddings, trained at 1024 tokens; the head counts of the comparison models differ because
the paper matches parameter counts, not heads. GQA's config group_size is query heads per KV head.
The MLA baselines follow train_adam.py, which passes head_dim (the non-RoPE part, 64) but not q_lora_rank,
kv_lora_rank, qk_rope_head_dim or v_head_dim to the model: it trains with model/llama-mla.py's defaults 512,
256, 32, 64. The medium, large and XL config files set q_lora_rank 1024 and kv_lora_rank 512 (as the paper's
Table 10 lists them), values that never reach the model; the defaults are what give the MLA models the
parameter counts the paper matches (353.86M against MHA's 353.45M at medium; 417.98M with the file's ranks).

Checked against the published files: tests/configs/ holds each config.json in its published form, and
tests/test_config.py requires it to parse to exactly the preset; parameter counts match the published ones
(e.g. Llama-3.1-8B 8,030,261,248, Qwen2.5-7B 7.62B, DeepSeek-V3 671B without its MTP layer).
"""

from __future__ import annotations

import difflib
import math

from .families import model_from_config
from .model import Model
from .units import InputError

_T6_SOURCE = "TPA paper (arXiv 2501.06425) code, tensorgi/TPA config/{}"
# size: (layers, d_model, config file suffix, heads of T6, MHA, MQA, GQA (2 KV heads), MLA), from the files
# config/train_{T6,llama,llama_mqa,llama_gqa,llama_mla}_<suffix>.py.
_T6_SIZES = {"small": (12, 768, "small_adam", 34, 12, 23, 22, 13),
             "medium": (24, 1024, "medium_adam_80g8", 47, 16, 31, 30, 23),
             "large": (36, 1280, "large_adam_80g8", 61, 20, 39, 38, 34),
             "xl": (48, 1600, "xl_adam_80g8", 78, 25, 49, 48, 49)}
# What train_adam.py builds the MLA baselines with (model/llama-mla.py GPTConfig defaults; see above).
_T6_MLA = {"attention": "mla", "q_lora_rank": 512, "kv_lora_rank": 256, "qk_rope_head_dim": 32, "qk_nope_head_dim": 64,
           "v_head_dim": 64}


def _t6_presets() -> dict[str, tuple[dict, str]]:
    """t6-<size> and its -mha, -mqa, -gqa and -mla baselines for the paper's four sizes."""
    presets = {}
    for size, (layers, d_model, suffix, tpa, mha, mqa, gqa, mla) in _T6_SIZES.items():
        shared = {"model_type": "t6", "num_hidden_layers": layers, "hidden_size": d_model, "head_dim": 64,
                  "intermediate_size": math.floor(8 / 3 * d_model), "vocab_size": 50304,
                  "max_position_embeddings": 1024, "tie_word_embeddings": True}
        variants = {
            "": ({"attention": "tpa", "num_attention_heads": tpa, "q_rank": 6, "k_rank": 2, "v_rank": 2},
                 f"train_T6_{suffix}.py"),
            "-mha": ({"attention": "dense", "num_attention_heads": mha}, f"train_llama_{suffix}.py"),
            "-mqa": ({"attention": "dense", "num_attention_heads": mqa, "num_key_value_heads": 1},
                     f"train_llama_mqa_{suffix}.py ({mqa} heads in one group)"),
            "-gqa": ({"attention": "dense", "num_attention_heads": gqa, "num_key_value_heads": 2},
                     f"train_llama_gqa_{suffix}.py ({gqa} heads in groups of {gqa // 2})"),
            "-mla": ({**_T6_MLA, "num_attention_heads": mla},
                     f"train_llama_mla_{suffix}.py as train_adam.py builds it (q_lora_rank 512, kv_lora_rank 256)"),
        }
        for name, (fields, source) in variants.items():
            presets[f"t6-{size}{name}"] = ({**shared, **fields}, _T6_SOURCE.format(source))
    return presets


# The published checkpoints' formats (quantization_config, as config.json states it).
_MXFP4_EXPERTS = {"quant_method": "mxfp4", "modules_to_not_convert": [
    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
_FP8_BLOCKS = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
_GPT_OSS = {"model_type": "gpt_oss", "hidden_size": 2880, "num_attention_heads": 64, "num_key_value_heads": 8,
            "head_dim": 64, "intermediate_size": 2880, "num_experts_per_tok": 4, "vocab_size": 201088,
            "max_position_embeddings": 131072, "sliding_window": 128, "attention_bias": True,
            "tie_word_embeddings": False, "quantization_config": _MXFP4_EXPERTS}
_GPT_OSS_SOURCE = "openai/gpt-oss-{} config.json (attention sinks and expert biases left out of the counts)"
_LLAMA4 = {"model_type": "llama4_text", "num_hidden_layers": 48, "hidden_size": 5120, "num_attention_heads": 40,
           "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
           "num_experts_per_tok": 1, "attention_chunk_size": 8192, "vocab_size": 202048, "tie_word_embeddings": False}
# Nemotron-H-56B's blocks: M Mamba-2, * attention, - MLP (kvplan.families.nemotron_h).
_NEMOTRON_H_56B = "M-M-M-M*-" + "M-M-M-M-M*-" * 9 + "M-M-M-M-M-"
# Jamba-v0.1 and Jamba-1.5-Mini's shape: attention on layers 4, 12, 20, 28; 16 experts (top 2) on odd layers.
_JAMBA_MINI = {"model_type": "jamba", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
               "num_key_value_heads": 8, "intermediate_size": 14336, "attn_layer_period": 8, "attn_layer_offset": 4,
               "expert_layer_period": 2, "expert_layer_offset": 1, "num_experts": 16, "num_experts_per_tok": 2,
               "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2, "vocab_size": 65536,
               "tie_word_embeddings": False}
_LLAMA4_SOURCE = "meta-llama/Llama-4-{}-Instruct config.json (text_config; the vision encoder left out)"

PRESETS: dict[str, tuple[dict, str]] = {
    "llama-3.1-8b": ({"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
                      "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
                      "max_position_embeddings": 131072, "tie_word_embeddings": False},
                     "meta-llama/Llama-3.1-8B config.json"),
    "llama-3.1-70b": ({"model_type": "llama", "num_hidden_layers": 80, "hidden_size": 8192, "num_attention_heads": 64,
                       "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 128256,
                       "max_position_embeddings": 131072, "tie_word_embeddings": False},
                      "meta-llama/Llama-3.1-70B config.json"),
    "llama-3.1-405b": ({"model_type": "llama", "num_hidden_layers": 126, "hidden_size": 16384, "num_attention_heads": 128,
                        "num_key_value_heads": 8, "intermediate_size": 53248, "vocab_size": 128256,
                        "max_position_embeddings": 131072, "tie_word_embeddings": False},
                       "meta-llama/Llama-3.1-405B config.json"),
    "mistral-7b-v0.1": ({"model_type": "mistral", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
                         "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
                         "max_position_embeddings": 32768, "sliding_window": 4096, "tie_word_embeddings": False},
                        "mistralai/Mistral-7B-v0.1 config.json"),
    "qwen2.5-7b": ({"model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 3584, "num_attention_heads": 28,
                    "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
                    "max_position_embeddings": 131072, "use_sliding_window": False, "tie_word_embeddings": False},
                   "Qwen/Qwen2.5-7B config.json"),
    "gemma-3-27b": ({"model_type": "gemma3_text", "num_hidden_layers": 62, "hidden_size": 5376, "num_attention_heads": 32,
                     "num_key_value_heads": 16, "head_dim": 128, "intermediate_size": 21504, "vocab_size": 262208,
                     "max_position_embeddings": 131072, "sliding_window": 1024, "sliding_window_pattern": 6,
                     "tie_word_embeddings": True},
                    "google/gemma-3-27b-pt config.json (text_config)"),
    "qwen3-8b": ({"model_type": "qwen3", "num_hidden_layers": 36, "hidden_size": 4096, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288, "vocab_size": 151936,
                  "max_position_embeddings": 40960, "tie_word_embeddings": False},
                 "Qwen/Qwen3-8B config.json"),
    "mistral-nemo-12b": ({"model_type": "mistral", "num_hidden_layers": 40, "hidden_size": 5120, "num_attention_heads": 32,
                          "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 14336, "vocab_size": 131072,
                          "max_position_embeddings": 1024000, "tie_word_embeddings": False},
                         "mistralai/Mistral-Nemo-Base-2407 config.json (head_dim 128, not 5120 / 32)"),
    "mistral-small-24b": ({"model_type": "mistral", "num_hidden_layers": 40, "hidden_size": 5120, "num_attention_heads": 32,
                           "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 32768, "vocab_size": 131072,
                           "max_position_embeddings": 32768, "tie_word_embeddings": False},
                          "mistralai/Mistral-Small-24B-Base-2501 config.json"),
    "phi-3.5-mini": ({"model_type": "phi3", "num_hidden_layers": 32, "hidden_size": 3072, "num_attention_heads": 32,
                      "num_key_value_heads": 32, "intermediate_size": 8192, "vocab_size": 32064,
                      "max_position_embeddings": 131072, "sliding_window": 262144, "tie_word_embeddings": False},
                     "microsoft/Phi-3.5-mini-instruct config.json (its 262144-token window exceeds the context: none)"),
    "glm-4-9b": ({"model_type": "glm4", "num_hidden_layers": 40, "hidden_size": 4096, "num_attention_heads": 32,
                  "num_key_value_heads": 2, "head_dim": 128, "intermediate_size": 13696, "vocab_size": 151552,
                  "max_position_embeddings": 32768, "attention_bias": True, "tie_word_embeddings": False},
                 "THUDM/GLM-4-9B-0414 config.json"),
    "mixtral-8x7b": ({"model_type": "mixtral", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
                      "num_key_value_heads": 8, "intermediate_size": 14336, "num_local_experts": 8,
                      "num_experts_per_tok": 2, "vocab_size": 32000, "max_position_embeddings": 32768,
                      "tie_word_embeddings": False},
                     "mistralai/Mixtral-8x7B-v0.1 config.json"),
    "qwen1.5-moe-a2.7b": ({"model_type": "qwen2_moe", "num_hidden_layers": 24, "hidden_size": 2048,
                           "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 5632,
                           "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts": 60,
                           "num_experts_per_tok": 4, "decoder_sparse_step": 1, "vocab_size": 151936,
                           "max_position_embeddings": 32768, "tie_word_embeddings": False},
                          "Qwen/Qwen1.5-MoE-A2.7B config.json (qwen2_moe)"),
    "qwen3-30b-a3b": ({"model_type": "qwen3_moe", "num_hidden_layers": 48, "hidden_size": 2048, "num_attention_heads": 32,
                       "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 6144, "moe_intermediate_size": 768,
                       "num_experts": 128, "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
                       "vocab_size": 151936, "max_position_embeddings": 40960, "tie_word_embeddings": False},
                      "Qwen/Qwen3-30B-A3B config.json"),
    "gpt-oss-20b": ({**_GPT_OSS, "num_hidden_layers": 24, "num_local_experts": 32,
                     "layer_types": ["sliding_attention", "full_attention"] * 12},
                    _GPT_OSS_SOURCE.format("20b")),
    "gpt-oss-120b": ({**_GPT_OSS, "num_hidden_layers": 36, "num_local_experts": 128,
                      "layer_types": ["sliding_attention", "full_attention"] * 18},
                     _GPT_OSS_SOURCE.format("120b")),
    "deepseek-v2-lite": ({"model_type": "deepseek_v2", "num_hidden_layers": 27, "hidden_size": 2048,
                          "num_attention_heads": 16, "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64,
                          "qk_nope_head_dim": 128, "v_head_dim": 128, "intermediate_size": 10944,
                          "moe_intermediate_size": 1408, "n_routed_experts": 64, "num_experts_per_tok": 6,
                          "n_shared_experts": 2, "first_k_dense_replace": 1, "vocab_size": 102400,
                          "max_position_embeddings": 163840, "tie_word_embeddings": False},
                         "deepseek-ai/DeepSeek-V2-Lite config.json (no query compression: q_lora_rank null)"),
    "deepseek-v2": ({"model_type": "deepseek_v2", "num_hidden_layers": 60, "hidden_size": 5120, "num_attention_heads": 128,
                     "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
                     "v_head_dim": 128, "intermediate_size": 12288, "moe_intermediate_size": 1536,
                     "n_routed_experts": 160, "num_experts_per_tok": 6, "n_shared_experts": 2, "first_k_dense_replace": 1,
                     "vocab_size": 102400, "max_position_embeddings": 163840, "tie_word_embeddings": False},
                    "deepseek-ai/DeepSeek-V2 config.json"),
    "glm-4.5-air": ({"model_type": "glm4_moe", "num_hidden_layers": 46, "hidden_size": 4096, "num_attention_heads": 96,
                     "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 10944, "moe_intermediate_size": 1408,
                     "n_routed_experts": 128, "num_experts_per_tok": 8, "n_shared_experts": 1, "first_k_dense_replace": 1,
                     "vocab_size": 151552, "max_position_embeddings": 131072, "attention_bias": True,
                     "tie_word_embeddings": False},
                    "zai-org/GLM-4.5-Air config.json (the multi-token-prediction layer is left out)"),
    "llama-4-scout": ({**_LLAMA4, "num_local_experts": 16, "interleave_moe_layer_step": 1,
                       "max_position_embeddings": 10485760},
                      _LLAMA4_SOURCE.format("Scout-17B-16E")),
    "llama-4-maverick": ({**_LLAMA4, "num_local_experts": 128, "interleave_moe_layer_step": 2,
                          "max_position_embeddings": 1048576},
                         _LLAMA4_SOURCE.format("Maverick-17B-128E")),
    "deepseek-v3": ({"model_type": "deepseek_v3", "num_hidden_layers": 61, "hidden_size": 7168, "num_attention_heads": 128,
                     "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
                     "v_head_dim": 128, "intermediate_size": 18432, "moe_intermediate_size": 2048,
                     "n_routed_experts": 256, "num_experts_per_tok": 8, "n_shared_experts": 1,
                     "first_k_dense_replace": 3, "vocab_size": 129280, "max_position_embeddings": 163840,
                     "tie_word_embeddings": False, "quantization_config": _FP8_BLOCKS},
                    "deepseek-ai/DeepSeek-V3 config.json (the multi-token-prediction layer is left out)"),
    "deepseek-v3.2-exp": ({"model_type": "deepseek_v32", "num_hidden_layers": 61, "hidden_size": 7168,
                           "num_attention_heads": 128, "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64,
                           "qk_nope_head_dim": 128, "v_head_dim": 128, "intermediate_size": 18432,
                           "moe_intermediate_size": 2048, "n_routed_experts": 256, "num_experts_per_tok": 8,
                           "n_shared_experts": 1, "first_k_dense_replace": 3, "vocab_size": 129280,
                           "max_position_embeddings": 163840, "index_n_heads": 64, "index_head_dim": 128,
                           "index_topk": 2048, "tie_word_embeddings": False,
                           "quantization_config": {**_FP8_BLOCKS, "scale_fmt": "ue8m0"}},
                          "deepseek-ai/DeepSeek-V3.2-Exp config.json (the multi-token-prediction layer is left out)"),
    "qwen3-next-80b-a3b": ({"model_type": "qwen3_next", "num_hidden_layers": 48, "hidden_size": 2048,
                            "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
                            "full_attention_interval": 4, "linear_num_value_heads": 32, "linear_num_key_heads": 16,
                            "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
                            "intermediate_size": 5120, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
                            "num_experts": 512, "num_experts_per_tok": 10, "decoder_sparse_step": 1, "mlp_only_layers": [],
                            "vocab_size": 151936, "max_position_embeddings": 262144, "tie_word_embeddings": False},
                           "Qwen/Qwen3-Next-80B-A3B-Instruct config.json (the multi-token-prediction layer is left out)"),
    "qwen3.5-397b-a17b": ({"model_type": "qwen3_5_moe_text", "num_hidden_layers": 60, "hidden_size": 4096,
                           "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 256, "attn_output_gate": True,
                           "full_attention_interval": 4, "linear_num_value_heads": 64, "linear_num_key_heads": 16,
                           "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
                           "mamba_ssm_dtype": "float32", "moe_intermediate_size": 1024,
                           "shared_expert_intermediate_size": 1024, "num_experts": 512, "num_experts_per_tok": 10,
                           "mlp_only_layers": [], "vocab_size": 248320, "max_position_embeddings": 262144,
                           "tie_word_embeddings": False},
                          "Qwen/Qwen3.5-397B-A17B config.json (text_config; the vision encoder and the "
                          "multi-token-prediction layer left out)"),
    "nemotron-h-56b": ({"model_type": "nemotron_h", "num_hidden_layers": 118, "hidden_size": 8192,
                        "hybrid_override_pattern": _NEMOTRON_H_56B, "num_attention_heads": 64, "num_key_value_heads": 8,
                        "attention_head_dim": 128, "mamba_num_heads": 256, "mamba_head_dim": 64, "ssm_state_size": 256,
                        "n_groups": 8, "conv_kernel": 4, "chunk_size": 128, "use_conv_bias": True,
                        "intermediate_size": 32768, "mlp_hidden_act": "relu2", "vocab_size": 131072,
                        "max_position_embeddings": 8192, "tie_word_embeddings": False},
                       "nvidia/Nemotron-H-56B-Base-8K config.json"),
    "falcon-h1-7b": ({"model_type": "falcon_h1", "num_hidden_layers": 44, "hidden_size": 3072, "num_attention_heads": 12,
                      "num_key_value_heads": 2, "head_dim": 128, "intermediate_size": 12288, "mamba_d_ssm": 3072,
                      "mamba_n_heads": 24, "mamba_d_head": 128, "mamba_d_state": 256, "mamba_n_groups": 1,
                      "mamba_d_conv": 4, "mamba_chunk_size": 128, "vocab_size": 130048,
                      "max_position_embeddings": 262144, "tie_word_embeddings": False},
                     "tiiuae/Falcon-H1-7B-Instruct config.json"),
    "falcon-h1-34b": ({"model_type": "falcon_h1", "num_hidden_layers": 72, "hidden_size": 5120, "num_attention_heads": 20,
                       "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 21504, "mamba_d_ssm": 4096,
                       "mamba_n_heads": 32, "mamba_d_head": 128, "mamba_d_state": 256, "mamba_n_groups": 2,
                       "mamba_d_conv": 4, "mamba_chunk_size": 128, "mamba_rms_norm": True, "vocab_size": 261120,
                       "max_position_embeddings": 262144, "tie_word_embeddings": False},
                      "tiiuae/Falcon-H1-34B-Instruct config.json"),
    "jamba-v0.1": ({**_JAMBA_MINI, "max_position_embeddings": 262144}, "ai21labs/Jamba-v0.1 config.json"),
    "jamba-1.5-mini": ({**_JAMBA_MINI, "mamba_dt_rank": 256, "max_position_embeddings": 262144},
                       "ai21labs/AI21-Jamba-1.5-Mini config.json"),
    "jamba-1.5-large": ({**_JAMBA_MINI, "num_hidden_layers": 72, "hidden_size": 8192, "num_attention_heads": 64,
                         "intermediate_size": 24576, "mamba_dt_rank": 512, "max_position_embeddings": 262144},
                        "ai21labs/AI21-Jamba-1.5-Large (the Jamba-1.5 paper's 72 layers, hidden 8192, 64 query and 8 KV "
                        "heads; intermediate_size 24576, which gives the published 398B / 94B)"),
    "modernbert-base": ({"model_type": "modernbert", "num_hidden_layers": 22, "hidden_size": 768, "num_attention_heads": 12,
                         "intermediate_size": 1152, "vocab_size": 50368, "max_position_embeddings": 8192,
                         "global_attn_every_n_layers": 3, "local_attention": 128},
                        "answerdotai/ModernBERT-base config.json (an encoder: its 'cache' is the K/V one forward holds)"),
    "modernbert-large": ({"model_type": "modernbert", "num_hidden_layers": 28, "hidden_size": 1024, "num_attention_heads": 16,
                          "intermediate_size": 2624, "vocab_size": 50368, "max_position_embeddings": 8192,
                          "global_attn_every_n_layers": 3, "local_attention": 128},
                         "answerdotai/ModernBERT-large config.json (an encoder: its 'cache' is the K/V one forward holds)"),
    **_t6_presets(),
}

_CACHE: dict[str, Model] = {}


def preset_rows() -> list[dict]:
    """One row per preset for `kvplan models`: name, family, attention, depth, parameter counts (params: every
    weight; active_params: all but the routed experts a token does not select, embeddings counted), MoE shape,
    bf16 cache bytes per token, bf16 recurrent state bytes per sequence (hybrids), how the checkpoint stores its
    weights (weights_format, as Estimator.row gives it) and the source."""
    from .estimator import Deployment, Estimator
    from .hardware import GPUS

    rows = []
    for name in PRESETS:
        m = get_preset(name)
        ffn = m.ffn
        experts = (f"{ffn.n_active_experts}/{ffn.n_experts}" + (" + shared" if ffn.shared_width() else "")
                   if ffn.is_moe else "")
        est = Estimator(m, Deployment(GPUS["h100-sxm"]))  # bf16 cache and state, one GPU
        rows.append({"name": name, "architecture": m.architecture, "attention": m.kind_label, "layers": m.n_layers,
                     "d_model": m.d_model, "params": m.total_params(), "active_params": m.active_params(),
                     "experts": experts, "kv_bytes_per_token_bf16": est.kv_bytes_per_token,
                     "state_bytes_per_sequence_bf16": est.state_bytes_per_sequence, "max_positions": m.max_positions,
                     "weights_format": est.weights_format.label, "source": m.source})
    return rows


def get_preset(name: str) -> Model:
    if not isinstance(name, str):
        raise InputError(f"model must name a preset (see `kvplan models`), not {name!r}", "model")
    key = name.strip().lower()
    if key not in PRESETS:
        near = difflib.get_close_matches(key, PRESETS, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(near)}?" if near else f"; known models: {', '.join(PRESETS)}"
        raise InputError(f"unknown model {name!r} (not a preset, not a config.json path){hint}")
    if key not in _CACHE:
        config, source = PRESETS[key]
        _CACHE[key] = model_from_config(config, name=key, source=source)
    return _CACHE[key]


def load_model(name_or_path: str) -> Model:
    """A preset by name, a local config.json (file or folder), or a model id (ORG/NAME) in the local Hugging Face
    cache."""
    import os
    from pathlib import Path

    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise InputError(f"model must name a preset (see `kvplan models`) or a config.json file, not {name_or_path!r}",
                         "model")
    if name_or_path.strip().lower() in PRESETS:
        return get_preset(name_or_path)
    path = Path(name_or_path)
    if not path.exists() and _looks_like_model_id(name_or_path):
        from .families.hub import cached_snapshot

        path = cached_snapshot(name_or_path.strip())
    if path.exists() or "/" in name_or_path or name_or_path.endswith(".json"):
        from .families import model_from_file

        return model_from_file(path)
    return get_preset(name_or_path)


def _looks_like_model_id(text: str) -> bool:
    """ORG/NAME, as the Hugging Face Hub names models (not a relative or absolute path, not a .json file)."""
    parts = text.strip().split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and not text.endswith(".json")
