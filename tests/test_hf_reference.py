"""HF transformers as an independent reference: a tiny model of each family, built from its config class, has
kvplan's parameter count, and a prefill through it holds kvplan's cache bytes and runs kvplan's linear-layer FLOPs
(FlopCounterMode). Skipped where transformers is not installed."""

import pytest

from kvplan.dtypes import FORMATS
from kvplan.estimator import Deployment, Estimator
from kvplan.families import model_from_config
from kvplan.hardware import get_gpu

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402  (torch is optional)

aten = torch.ops.aten

SMALL = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
         "intermediate_size": 96, "vocab_size": 128, "max_position_embeddings": 256, "tie_word_embeddings": False}
MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 32}

CASES = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {**MOE, "num_experts": 4, "shared_expert_intermediate_size": 48, "decoder_sparse_step": 2},
    "qwen3_moe": {**MOE, "num_experts": 4, "mlp_only_layers": [0]},
    # num_key_value_heads equal to the heads, as DeepSeek's configs have it (HF's MLA repeats keys by heads / it).
    "deepseek_v2": {**MOE, "n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 1,
                    "num_key_value_heads": 4,
                    "kv_lora_rank": 16, "q_lora_rank": None, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
                    "v_head_dim": 16},
    "glm4_moe": {**MOE, "n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 1},
    # Hybrids: Gated DeltaNet with gated attention every 2nd layer; Mamba-2, attention and MLP blocks; attention
    # and Mamba-2 side by side.
    "qwen3_next": {**MOE, "num_experts": 4, "shared_expert_intermediate_size": 48, "full_attention_interval": 2,
                   "linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 8,
                   "linear_value_head_dim": 12, "linear_conv_kernel_dim": 4},
    "nemotron_h": {"hybrid_override_pattern": "M*-M", "mamba_num_heads": 4, "mamba_head_dim": 16, "ssm_state_size": 8,
                   "n_groups": 2, "conv_kernel": 4, "mlp_hidden_act": "relu2", "attention_head_dim": 16},
    "falcon_h1": {"mamba_d_ssm": 64, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_n_groups": 2, "mamba_d_state": 8,
                  "mamba_d_conv": 4, "mamba_rms_norm": True},
}


def hf_config(model_type: str):
    config = {"model_type": model_type, **SMALL, **CASES[model_type]}
    try:
        return config, transformers.AutoConfig.for_model(**config)
    except ValueError:
        pytest.skip(f"transformers {transformers.__version__} lacks {model_type}")


@pytest.mark.parametrize("model_type", list(CASES))
def test_parameter_count_equals_transformers(model_type):
    config, hf = hf_config(model_type)
    with torch.device("meta"):
        hf_model = transformers.AutoModelForCausalLM.from_config(hf)
    # kvplan leaves out per-head q/k norms (Qwen3, 2 x head_dim per layer) and shared-expert gates (Qwen2-MoE).
    left_out = sum(p.numel() for name, p in hf_model.named_parameters()
                   if name.endswith(("q_norm.weight", "k_norm.weight", "shared_expert_gate.weight",
                                     "e_score_correction_bias")))
    assert model_from_config(config).total_params() == hf_model.num_parameters() - left_out


def tensor_bytes(value, seen=None) -> int:
    """Bytes of every tensor a cache object holds, through its attributes, lists and dicts."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in value)
    if type(value).__module__.startswith("transformers"):
        return tensor_bytes(vars(value), seen)
    return 0


BATCH, PROMPT = 2, 12


@pytest.mark.parametrize("model_type", list(CASES))
def test_prefill_cache_bytes_and_linear_flops_equal_transformers(model_type):
    # fp32 on the CPU, eager attention (its score products are bmm, apart from the linear layers' mm/addmm) and
    # eager experts (one matrix product per selected expert, so that the counter sees them); logits of the last
    # token only, as kvplan counts prefill's LM head.
    config, hf = hf_config(model_type)
    torch.manual_seed(0)
    build = transformers.AutoModelForCausalLM.from_config
    try:
        hf_model = build(hf, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager")
    except (TypeError, ValueError):  # a version without experts_implementation runs each expert as its own Linear
        hf_model = build(hf, torch_dtype=torch.float32, attn_implementation="eager")
    hf_model.eval()
    tokens = torch.randint(0, SMALL["vocab_size"], (BATCH, PROMPT), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = hf_model(tokens, use_cache=True, logits_to_keep=1)
    counts = counter.get_flop_counts()["Global"]
    linear = counts.get(aten.mm, 0) + counts.get(aten.addmm, 0)

    model = model_from_config(config)
    est = Estimator(model, Deployment(get_gpu("h100-sxm"), kv_format=FORMATS["fp32"],
                                      activation_format=FORMATS["fp32"]))
    # kvplan leaves out the shared-expert gates (a d_model x 1 linear layer per MoE layer; Qwen2-MoE, Qwen3-Next).
    gates = sum(p.numel() for name, p in hf_model.named_parameters() if name.endswith("shared_expert_gate.weight"))
    assert linear == est.prefill_linear_flops(BATCH, PROMPT) + 2 * BATCH * PROMPT * gates
    # transformers keeps a recurrent layer's whole convolution window (conv_kernel inputs per channel); the state
    # that decode needs, and kvplan counts, is the last conv_kernel - 1.
    window = (BATCH * len(model.recurrent_layer_ids) * model.recurrent.conv_channels() * 4 if model.is_hybrid else 0)
    cache = getattr(out, "past_key_values", None) or out.cache
    assert tensor_bytes(cache) == est.kv_cache_bytes(BATCH, PROMPT) + window
