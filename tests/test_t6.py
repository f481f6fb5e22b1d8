"""The TPA paper's models as its code trains them (tensorgi/TPA): from_t6 against an independent float64
restatement of the reference's forward (model/T6.py), both decode contraction orders, the dense baseline with
the reference's conventions (model/llama-gqa.py), and the presets' parameter counts against the reference's
modules."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kvplan.kinds import TPA, DenseAttention
from kvplan.model import FeedForward
from kvplan.models import build, from_t6
from kvplan.presets import get_preset
from kvplan.units import InputError

# A small T6 with an odd head count: n_embd 32, 5 heads of 8, q_rank 3, rank (K and V) 2, 2 layers.
L, D, H, DH, RQ, R, VOCAB = 2, 32, 5, 8, 3, 2, 37
HIDDEN = math.floor(8 / 3 * D)  # model/T6.py MLP


def reference_state(seed=0, layers=L, heads=H, q_rank=RQ, rank=R):
    """Random weights under the reference's parameter names and shapes (nn.Linear weights are [out, in])."""
    g = torch.Generator().manual_seed(seed)

    def w(rows, cols):
        return torch.randn(rows, cols, generator=g, dtype=torch.float64) * cols ** -0.5

    wte = torch.randn(VOCAB, D, generator=g, dtype=torch.float64)
    state = {"transformer.wte.weight": wte, "lm_head.weight": wte}
    for i in range(layers):
        p = f"transformer.h.{i}."
        state |= {p + "attn.c_qkv.W_A_q.weight": w(heads * q_rank, D), p + "attn.c_qkv.W_A_k.weight": w(heads * rank, D),
                  p + "attn.c_qkv.W_A_v.weight": w(heads * rank, D), p + "attn.c_qkv.W_B_q.weight": w(q_rank * DH, D),
                  p + "attn.c_qkv.W_B_k.weight": w(rank * DH, D), p + "attn.c_qkv.W_B_v.weight": w(rank * DH, D),
                  p + "attn.c_proj.weight": w(D, heads * DH), p + "mlp.c_fc1.weight": w(HIDDEN, D),
                  p + "mlp.c_fc2.weight": w(HIDDEN, D), p + "mlp.c_proj.weight": w(D, HIDDEN)}
    return state


# --- the reference's forward, restated in float64 ---------------------------------------------------------
def rms_norm(x):
    """F.rms_norm(x, (d,)) with its default eps, the dtype's machine epsilon; no weight."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def rotate(x):
    """apply_rotary_emb of model/T6.py on [B, T, N, d]: halves (x1, x2) -> (x1 cos + x2 sin, -x1 sin + x2 cos)
    at angle t * 10000^(-2i/d) for position t."""
    T, d = x.size(1), x.size(-1)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = angle.cos()[None, :, None, :], angle.sin()[None, :, None, :]
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)


def causal_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v over keys up to each query: q, k, v [B, T, h, d] -> [B, T, h, d]."""
    T = q.size(1)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v)


def swiglu_residual(x, state, prefix):
    y = rms_norm(x)
    gated = F.silu(y @ state[prefix + "mlp.c_fc1.weight"].T) * (y @ state[prefix + "mlp.c_fc2.weight"].T)
    return x + gated @ state[prefix + "mlp.c_proj.weight"].T


def t6_reference_logits(state, tokens, layers=L, heads=H, q_rank=RQ, rank=R):
    """GPT.forward(tokens, output_all_seq=True) of model/T6.py: Q, K, V per token as (1/R) A^T B with A viewed
    (heads, rank), B (rank, head_dim), RoPE on B_q and B_k; unweighted RMSNorm; SwiGLU; tied LM head."""
    B, T = tokens.shape
    x = state["transformer.wte.weight"][tokens]
    for i in range(layers):
        p = f"transformer.h.{i}."
        y = rms_norm(x)

        def factor(name, shape):
            return (y @ state[f"{p}attn.c_qkv.{name}.weight"].T).view(B, T, *shape)

        a_q, a_k, a_v = factor("W_A_q", (heads, q_rank)), factor("W_A_k", (heads, rank)), factor("W_A_v", (heads, rank))
        b_q, b_k, b_v = rotate(factor("W_B_q", (q_rank, DH))), rotate(factor("W_B_k", (rank, DH))), factor("W_B_v", (rank, DH))
        q = torch.einsum("bthr,btrd->bthd", a_q, b_q) / q_rank
        k = torch.einsum("bthr,btrd->bthd", a_k, b_k) / rank
        v = torch.einsum("bthr,btrd->bthd", a_v, b_v) / rank
        x = x + causal_attention(q, k, v).reshape(B, T, heads * DH) @ state[p + "attn.c_proj.weight"].T
        x = swiglu_residual(x, state, p)
    return rms_norm(x) @ state["transformer.wte.weight"].T


def assert_relative(got, expected, tol=1e-6):
    assert (got - expected).abs().max() <= tol * expected.abs().max()


def tokens(batch=2, length=11, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def decode_logits(net, toks, prompt):
    """Prefill toks[:, :prompt], then decode the rest one token at a time: last-token logits at prompt-1 onward."""
    out = [net.prefill(toks[:, :prompt])]
    for pos in range(prompt, toks.size(1)):
        out.append(net.decode(toks[:, pos:pos + 1], torch.tensor([pos])))
    return torch.stack(out, dim=1)


# --- from_t6 -----------------------------------------------------------------------------------------------
def test_from_t6_reads_the_sizes_and_the_reference_conventions():
    net = from_t6(reference_state(), max_batch=2, max_context=11, dtype=torch.float64)
    desc = net.desc
    assert desc.attention == TPA(n_heads=H, head_dim=DH, q_rank=RQ, k_rank=R, v_rank=R)
    assert (desc.n_layers, desc.d_model, desc.vocab_size, desc.ffn.intermediate) == (L, D, VOCAB, HIDDEN)
    assert desc.tie_embeddings and desc.rope_convention == "t6" and desc.block_norm == "rmsnorm-unweighted"
    # The reference's parameters, each once (wte and lm_head are one tensor), and nothing else.
    reference = reference_state()
    del reference["lm_head.weight"]
    assert sum(p.numel() for p in net.parameters()) == sum(t.numel() for t in reference.values())


def test_from_t6_forward_equals_the_reference():
    state, toks = reference_state(), tokens()
    net = from_t6(state, max_batch=2, max_context=11, dtype=torch.float64)
    assert_relative(net.forward(toks), t6_reference_logits(state, toks))


@pytest.mark.parametrize("order", ["flash", "rebuild"])
def test_from_t6_prefill_then_decode_equals_the_reference(order):
    state, toks = reference_state(seed=2), tokens(seed=3)
    net = from_t6(state, max_batch=2, max_context=11, dtype=torch.float64)
    assert net.layers[0].attention.decode_order == "flash"  # R_Q (h + d_h) = 39 < h d_h = 40
    for block in net.layers:
        block.attention.decode_order = order
    assert_relative(decode_logits(net, toks, 4), t6_reference_logits(state, toks)[:, 3:])


def test_flash_and_rebuild_orders_agree_where_rebuild_is_cheaper():
    # q_rank 6 at 5 heads of 8: R_Q (h + d_h) = 78 > h d_h = 40, so decode rebuilds q; both orders match anyway.
    state, toks = reference_state(seed=4, q_rank=6), tokens(seed=5)
    net = from_t6(state, max_batch=2, max_context=11, dtype=torch.float64)
    assert net.desc.attention.decode_order == "rebuild"
    expected = t6_reference_logits(state, toks, q_rank=6)[:, 5:]
    for order in ("rebuild", "flash"):
        for block in net.layers:
            block.attention.decode_order = order
        net.reset_cache()
        assert_relative(decode_logits(net, toks, 6), expected)


def test_from_t6_reads_checkpoint_files(tmp_path):
    state, toks = reference_state(), tokens()
    expected = t6_reference_logits(state, toks)
    # train_adam.py's save_pretrained folder (pytorch_model.bin); a nanoGPT-style {"model": ...} file whose names
    # carry torch.compile's prefix; a file keeping only the LM head's name for the tied embedding.
    (tmp_path / "run").mkdir()
    torch.save(state, tmp_path / "run" / "pytorch_model.bin")
    torch.save({"model": {"_orig_mod." + k: v for k, v in state.items()}, "iter_num": 5}, tmp_path / "ckpt.pt")
    torch.save({k: v for k, v in state.items() if k != "transformer.wte.weight"}, tmp_path / "head_only.pt")
    for path in (tmp_path / "run", tmp_path / "ckpt.pt", str(tmp_path / "head_only.pt")):
        net = from_t6(path, max_batch=2, max_context=11, dtype=torch.float64)
        assert_relative(net.forward(toks), expected)


def test_from_t6_refuses_what_it_cannot_load(tmp_path):
    state = reference_state()
    with pytest.raises(InputError, match="lacks transformer.h.1.mlp.c_fc2.weight"):
        from_t6({k: v for k, v in state.items() if k != "transformer.h.1.mlp.c_fc2.weight"}, max_batch=1, max_context=4)
    with pytest.raises(InputError, match="subln"):  # using_groupnorm=True adds a per-head norm kvplan does not build
        from_t6({**state, "transformer.h.0.attn.subln.weight": torch.ones(DH)}, max_batch=1, max_context=4)
    with pytest.raises(InputError, match="ties them"):
        from_t6({**state, "lm_head.weight": torch.zeros(VOCAB, D)}, max_batch=1, max_context=4)
    with pytest.raises(InputError, match="no T6 checkpoint"):
        from_t6(tmp_path, max_batch=1, max_context=4)


# --- the baselines' conventions ------------------------------------------------------------------------------
def test_dense_baseline_follows_the_reference_llama_gqa():
    """model/llama-gqa.py: c_q, c_k, c_v (K and V per group of group_size query heads, repeat_interleave'd), RoPE
    turned T6's way on q and k, unweighted norms, SwiGLU, tied LM head; kvplan's wqkv holds [q | k | v] rows."""
    heads, kv_heads = 6, 2
    desc = replace(get_preset("t6-small-gqa"), n_layers=L, d_model=D, vocab_size=VOCAB, layer_windows=(),
                   attention=DenseAttention(heads, kv_heads, DH), ffn=FeedForward(HIDDEN))
    net = build(desc, max_batch=2, max_context=11, dtype=torch.float64, kv_dtype=None, seed=7)
    toks = tokens(seed=8)
    weights = dict(net.state_dict())
    B, T = toks.shape
    x = weights["tok_embeddings.weight"][toks]
    for i in range(L):
        y = rms_norm(x)
        q, k, v = (y @ weights[f"layers.{i}.attention.wqkv.weight"].T).split((heads * DH, kv_heads * DH, kv_heads * DH), -1)
        q, k = rotate(q.view(B, T, heads, DH)), rotate(k.view(B, T, kv_heads, DH))
        k, v = k.repeat_interleave(heads // kv_heads, 2), v.view(B, T, kv_heads, DH).repeat_interleave(heads // kv_heads, 2)
        x = x + causal_attention(q, k, v).reshape(B, T, -1) @ weights[f"layers.{i}.attention.wo.weight"].T
        y = rms_norm(x)
        gated = F.silu(y @ weights[f"layers.{i}.ffn.w_gate.weight"].T) * (y @ weights[f"layers.{i}.ffn.w_up.weight"].T)
        x = x + gated @ weights[f"layers.{i}.ffn.w_down.weight"].T
    expected = rms_norm(x) @ weights["tok_embeddings.weight"].T
    assert_relative(net.forward(toks), expected)
    assert_relative(decode_logits(net, toks, 5), expected[:, 4:])


# --- presets against the reference's modules -----------------------------------------------------------------
# The config files' values (tensorgi/TPA config/train_*.py) as train_adam.py hands them to the model: n_layer,
# n_embd, n_head, and group_size (query heads per KV head) for llama-gqa; head_dim 64 (train_adam.py's default
# where a file leaves it out); the MLA models get llama-mla.py's q_lora_rank 512, kv_lora_rank 256,
# qk_rope_head_dim 32, v_head_dim 64, which train_adam.py does not override.
REFERENCE = {"small": (12, 768, {"": 34, "mha": 12, "mqa": 23, "gqa": (22, 11), "mla": 13}),
             "medium": (24, 1024, {"": 47, "mha": 16, "mqa": 31, "gqa": (30, 15), "mla": 23}),
             "large": (36, 1280, {"": 61, "mha": 20, "mqa": 39, "gqa": (38, 19), "mla": 34}),
             "xl": (48, 1600, {"": 78, "mha": 25, "mqa": 49, "gqa": (48, 24), "mla": 49})}


def reference_params(kind: str, n_layer: int, n_embd: int, n_head) -> int:
    """sum(p.numel() for p in GPT(config).parameters()) of the reference's model file for `kind`, from its
    modules' shapes: wte (tied to lm_head) 50304 x n_embd; per block the attention's Linears and the MLP's
    c_fc1, c_fc2 (n_embd -> floor(8/3 n_embd)) and c_proj; no norm weights (F.rms_norm)."""
    d, hd = n_embd, 64
    if kind == "":  # T6.py CPLinear: W_A_q (h q_rank), W_A_k, W_A_v (h rank), W_B_q (q_rank hd), W_B_k, W_B_v (rank hd)
        attention = d * (n_head * 6 + 2 * n_head * 2 + 6 * hd + 2 * 2 * hd) + n_head * hd * d
    elif kind in ("mha", "mqa", "gqa"):  # llama-mha.py (c_q, c_k, c_v n_embd wide) / llama-gqa.py
        heads, group = n_head if kind == "gqa" else (n_head, 1 if kind == "mha" else n_head)
        attention = d * heads * hd * 2 + 2 * d * hd * heads // group
    else:  # llama-mla.py: q_a_proj, q_a_layernorm, q_b_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, c_proj
        attention = (d * 512 + 512 + 512 * n_head * (64 + 32) + d * (256 + 32) + 256
                     + 256 * n_head * (64 + 64) + n_head * 64 * d)
    mlp = 3 * d * math.floor(8 / 3 * d)
    return 50304 * d + n_layer * (attention + mlp)


@pytest.mark.parametrize("size", REFERENCE)
def test_preset_parameter_counts_equal_the_reference_code(size):
    n_layer, n_embd, heads = REFERENCE[size]
    for kind, n_head in heads.items():
        name = f"t6-{size}" + (f"-{kind}" if kind else "")
        model = get_preset(name)
        assert model.total_params() == reference_params(kind, n_layer, n_embd, n_head), name
        assert model.rope_convention == "t6" and model.block_norm == "rmsnorm-unweighted"
