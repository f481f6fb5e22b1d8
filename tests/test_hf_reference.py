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
    # Mamba-1 layers with attention on odd layers and experts on even ones (offsets inside the periods).
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 0,
              "num_experts": 4, "num_experts_per_tok": 2, "mamba_d_state": 8, "mamba_d_conv": 4, "mamba_expand": 2,
              "mamba_dt_rank": 6},
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


def test_jamba_cache_and_linear_flops_equal_transformers():
    """A tiny Jamba's prefill in transformers (its PyTorch path): the attention layers' keys and values per token
    and the Mamba layers' recurrent state equal kvplan's; transformers keeps the last conv_kernel inputs of x
    where kvplan (as vLLM) keeps conv_kernel - 1. FlopCounterMode's matrix products of the linear layers (routed
    experts counted as the tokens pick them) equal the estimate's linear FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from kvplan.dtypes import FORMATS
    from kvplan.estimator import Deployment, Estimator
    from kvplan.hardware import get_gpu

    config = {"model_type": "jamba", **SMALL, **CASES["jamba"]}
    desc = model_from_config(config)
    hf_model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config),
                                                             experts_implementation="eager").eval()
    batch, prompt = 2, 10
    ids = torch.randint(0, 128, (batch, prompt), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        cache = hf_model(ids, use_cache=True, logits_to_keep=1).past_key_values
    fp32 = FORMATS["fp32"]
    est = Estimator(desc, Deployment(get_gpu("h100-sxm"), kv_format=fp32, activation_format=fp32))
    kv = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if hasattr(layer, "keys"))
    assert kv == batch * prompt * est.kv_bytes_per_token
    mamba = [layer for layer in cache.layers if hasattr(layer, "recurrent_states")]
    assert len(mamba) == len(desc.recurrent_layer_ids) == 2
    kind = desc.recurrent
    for layer in mamba:
        assert layer.recurrent_states[0].numel() == batch * kind.state_elements()
        assert layer.conv_states[0].numel() == batch * kind.conv_channels() * kind.conv_kernel
    assert est.state_bytes_per_sequence == 2 * 4 * (kind.state_elements() + kind.conv_state_elements())
    assert counter.get_flop_counts()["Global"][torch.ops.aten.mm] == est.prefill_linear_flops(batch, prompt)


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
