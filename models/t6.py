"""T6 checkpoints of the TPA paper's own code (tensorgi/TPA model/T6.py) loaded into kvplan's decoder.

    net = from_t6("out/pytorch_model.bin", max_batch=1, max_context=1024)
    logits = net.forward(tokens)  # the reference's GPT.forward(tokens, output_all_seq=True) logits

Reference parameter names and where they go (sizes are read off the tensors):
    transformer.wte.weight (lm_head.weight is the same tensor)   tok_embeddings.weight (tied LM head)
    transformer.h.{i}.attn.c_qkv.W_A_{q,k,v}.weight               layers.{i}.attention.w_factors.weight, A rows
    transformer.h.{i}.attn.c_qkv.W_B_{q,k,v}.weight               layers.{i}.attention.w_factors.weight, B rows
    transformer.h.{i}.attn.c_proj.weight                          layers.{i}.attention.wo.weight
    transformer.h.{i}.mlp.c_fc1 / c_fc2 / c_proj .weight          layers.{i}.ffn.w_gate / w_up / w_down .weight
The reference reads W_A_q(x) as (heads, rank) (CPLinear.forward: view(B, T, n_head, q_rank)); the fused
projection of kvplan.models.tpa holds A rows rank-major, so each A weight's rows are reordered. B rows are
(rank, head_dim) in both. The reference's norms have no weights and its RoPE turns the other way from
Llama's; the model description carries both (kvplan.model.Model.rope_convention, block_norm).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from kvplan.families import model_from_config
from kvplan.units import InputError

from .common import cache_storage
from .transformer import Transformer

_ATTENTION = "transformer.h.{}.attn."
_FACTORS = ("q", "k", "v")


def load_t6_state(checkpoint) -> dict[str, torch.Tensor]:
    """A reference state dict from a dict, a torch.save'd file (optionally holding it under "model", as
    nanoGPT-style checkpoints do) or a save_pretrained folder (its pytorch_model.bin, as train_adam.py writes
    it); loaded with weights_only=True. torch.compile's "_orig_mod." prefix is dropped, as train_adam.py does."""
    state = checkpoint
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        if path.is_dir():
            path = path / "pytorch_model.bin"
        if not path.is_file():
            raise InputError(f"{checkpoint}: no T6 checkpoint there (a file, or a folder with pytorch_model.bin)")
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{checkpoint if isinstance(checkpoint, (str, Path)) else 'state dict'}: not a state dict "
                         f"of tensors")
    return {name.removeprefix("_orig_mod."): tensor for name, tensor in state.items()}


def _embedding(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tied embedding / LM head: whichever of the two names the checkpoint kept (they must agree)."""
    wte, head = state.get("transformer.wte.weight"), state.get("lm_head.weight")
    if wte is None and head is None:
        raise InputError("T6 checkpoint lacks transformer.wte.weight (and lm_head.weight)")
    if wte is not None and head is not None and not torch.equal(wte, head):
        raise InputError("T6 checkpoint: lm_head.weight differs from transformer.wte.weight; the reference ties them")
    return wte if wte is not None else head


def t6_config(state: dict[str, torch.Tensor]) -> dict:
    """The model_type "t6" config (kvplan.families.t6) of a reference state dict, its sizes read off the tensors:
    rows(W_A_q) = h R_Q, rows(W_B_q) = R_Q d_h, columns(c_proj) = h d_h, so h^2 = rows(W_A_q) columns(c_proj) /
    rows(W_B_q)."""
    vocab, d_model = _embedding(state).shape
    layers = 0
    while f"{_ATTENTION.format(layers)}c_proj.weight" in state:
        layers += 1
    if not layers:
        raise InputError(f"T6 checkpoint has no {_ATTENTION.format(0)}c_proj.weight: not a T6 state dict")
    first = _ATTENTION.format(0)
    try:
        a_q, b_q = (state[f"{first}c_qkv.W_{x}_q.weight"].size(0) for x in "AB")
        a_k, a_v = (state[f"{first}c_qkv.W_A_{n}.weight"].size(0) for n in "kv")
        out_width = state[f"{first}c_proj.weight"].size(1)
        hidden = state["transformer.h.0.mlp.c_fc1.weight"].size(0)
    except KeyError as missing:
        raise InputError(f"T6 checkpoint lacks {missing.args[0]}") from None
    heads = math.isqrt(a_q * out_width // b_q)
    if heads == 0 or heads * heads * b_q != a_q * out_width or any(n % heads for n in (a_q, a_k, a_v, out_width)):
        raise InputError(f"T6 checkpoint: W_A_q ({a_q} rows), W_B_q ({b_q}) and c_proj ({out_width} columns) fit no "
                         f"whole head count")
    return {"model_type": "t6", "attention": "tpa", "num_hidden_layers": layers, "hidden_size": d_model,
            "num_attention_heads": heads, "head_dim": out_width // heads, "q_rank": a_q // heads,
            "k_rank": a_k // heads, "v_rank": a_v // heads, "intermediate_size": hidden, "vocab_size": vocab,
            "tie_word_embeddings": True}


def _kvplan_state(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """The reference's tensors under kvplan.models' names, A rows reordered from (head, rank) to (rank, head)."""
    heads, d_model = config["num_attention_heads"], config["hidden_size"]
    ours = {"tok_embeddings.weight": _embedding(state)}
    used = {"transformer.wte.weight", "lm_head.weight"}

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise InputError(f"T6 checkpoint lacks {name}")
        used.add(name)
        return state[name]

    for i in range(config["num_hidden_layers"]):
        attn, mlp = _ATTENTION.format(i), f"transformer.h.{i}.mlp."
        a_rows = [take(f"{attn}c_qkv.W_A_{n}.weight").view(heads, -1, d_model).transpose(0, 1).reshape(-1, d_model)
                  for n in _FACTORS]
        b_rows = [take(f"{attn}c_qkv.W_B_{n}.weight") for n in _FACTORS]
        ours[f"layers.{i}.attention.w_factors.weight"] = torch.cat(a_rows + b_rows)
        ours[f"layers.{i}.attention.wo.weight"] = take(f"{attn}c_proj.weight")
        for theirs, mine in (("c_fc1", "w_gate"), ("c_fc2", "w_up"), ("c_proj", "w_down")):
            ours[f"layers.{i}.ffn.{mine}.weight"] = take(f"{mlp}{theirs}.weight")
    unknown = sorted(set(state) - used)
    if unknown:
        # e.g. attn.subln.weight: a model trained with using_groupnorm=True, which kvplan does not build
        raise InputError(f"T6 checkpoint holds weights kvplan's T6 has no place for: {', '.join(unknown[:3])}"
                         f"{' ...' if len(unknown) > 3 else ''}")
    return ours


def from_t6(checkpoint, *, max_batch: int, max_context: int, dtype: torch.dtype = torch.bfloat16,
            device: str | torch.device = "cpu", kv_dtype: str | None = None) -> Transformer:
    """kvplan's decoder holding a reference T6 checkpoint (a state dict, a torch.save'd file or a save_pretrained
    folder; load_t6_state), with caches for max_batch sequences of max_context tokens.

    Its forward(tokens) gives the reference's logits for every position, and prefill + decode the same
    last-token logits from the cache. kv_dtype: cache storage ('bf16', 'fp16', 'fp32', 'fp8'); None: `dtype`.
    """
    if max_batch < 1 or max_context < 1:
        raise InputError(f"max_batch and max_context must be positive, not {max_batch} and {max_context}")
    state = load_t6_state(checkpoint)
    config = t6_config(state)
    name = Path(checkpoint).name if isinstance(checkpoint, (str, Path)) else "t6 state dict"
    desc = model_from_config(config, name=name, source="T6 checkpoint (tensorgi/TPA model/T6.py names)")
    cache_dtype, _ = cache_storage(kv_dtype, dtype)
    net = Transformer(desc, max_batch, max_context, cache_dtype, device=torch.device(device), dtype=dtype)
    try:
        net.load_state_dict(_kvplan_state(state, config), strict=True)
    except RuntimeError as error:  # a tensor whose shape disagrees with the sizes read off layer 0
        raise InputError(f"T6 checkpoint: {str(error).splitlines()[-1].strip()}") from None
    return net.eval()
