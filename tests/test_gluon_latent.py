"""The Gluon latent-attention kernel (kvplan.models.gluon_latent) against PyTorch's attention over the same rows, at
DeepSeek's widths (128 heads, latent 512, RoPE key 64, bf16). Hopper GPUs only: skipped elsewhere (CI, the
interpreter, which does not run Gluon)."""

import pytest
import torch

from kvplan.models.common import band_mask, decode_mask
from kvplan.models.mla import latent_attention

H, L, R = 128, 512, 64


def _hopper():
    from kvplan.models import gluon_latent

    if not gluon_latent.HAVE_GLUON or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and a Triton with Gluon")
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon kernel is written for Hopper (compute capability 9.x)")
    return gluon_latent


def _close(got, expected):
    torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2 * expected.abs().max().item())


@pytest.mark.parametrize("slots, pos, min_keys", [(3000, 2900, 256), (3000, 2999, 4096), (100, 40, 256)])
@pytest.mark.parametrize("gather", [False, True])
def test_decode_equals_attention_over_live_rows(slots, pos, min_keys, gather):
    """Whole-cache and chosen-row decode, over slices of several blocks and a partial last block; the rows no query
    may read hold NaN, so a read of one shows in the output."""
    gluon_latent = _hopper()
    g = torch.Generator().manual_seed(slots + pos)
    kv = torch.randn(2, slots, L + R, generator=g).to("cuda", torch.bfloat16)
    q_cat = (torch.randn(2, H, L + R, generator=g) * (L + R) ** -0.5).to("cuda", torch.bfloat16)
    position = torch.tensor([pos], device="cuda")
    chosen = torch.stack([torch.randperm(slots, generator=g)[:min(2048, slots // 2)] for _ in range(2)]).cuda()
    if gather:
        rows = kv.gather(1, chosen.unsqueeze(-1).expand(-1, -1, L + R))
        expected = latent_attention(q_cat, rows, L, (chosen <= pos).unsqueeze(1))
        unread = torch.ones(2, slots, dtype=torch.bool, device="cuda").scatter(1, chosen, False)
        kv[unread] = float("nan")
    else:
        expected = latent_attention(q_cat, kv, L, decode_mask(slots, position))
        kv[:, pos + 1:] = float("nan")
    got = gluon_latent.decode(q_cat, kv, position, L, chosen if gather else None, gluon_latent.CONFIGS[0] + (4, min_keys))
    _close(got, expected)


@pytest.mark.parametrize("start, end, first, k", [(0, 70, 0, 64), (300, 420, 100, 150)])
def test_sparse_prefill_equals_attention_over_selected_rows(start, end, first, k):
    """Each query over its selected rows (offsets from `first`); picks after the query are skipped, as topk's picks
    among -inf scores are when fewer than k keys are visible."""
    gluon_latent = _hopper()
    g = torch.Generator().manual_seed(start)
    B, T = 2, end
    latent = torch.randn(B, T, L + R, generator=g).to("cuda", torch.bfloat16)
    q_cat = (torch.randn(B, end - start, H, L + R, generator=g) * 0.05).to("cuda", torch.bfloat16)
    top = torch.rand(B, end - start, end - first, generator=g).argsort(-1)[..., :k].cuda()
    top[..., 0] = start - first + torch.arange(end - start, device="cuda")  # each query sees itself
    top = top.to(torch.int32)
    allowed = band_mask(torch.arange(start, end, device="cuda"), torch.arange(first, end, device="cuda"), None)
    chosen = latent[:, first:end][torch.arange(B, device="cuda")[:, None, None], top.long()]
    expected = latent_attention(q_cat, chosen, L, allowed.expand(B, -1, -1).gather(-1, top.long()).unsqueeze(-2))
    got = torch.empty(B, end - start, H, L, device="cuda", dtype=torch.bfloat16)
    for config in gluon_latent.CONFIGS:
        gluon_latent.sparse_prefill(q_cat, latent, top, start, first, L, got, config)
        _close(got, expected)
    # Distinct picks in ascending order (select_topk's): the kernel stops at each query's position.
    scores = torch.rand(B, end - start, end - first, generator=g)
    scores[:, torch.arange(end - start), start - first + torch.arange(end - start)] = 2.0  # each query picks itself
    top = scores.argsort(-1, descending=True)[..., :k].sort(-1).values.to("cuda", torch.int32)
    chosen = latent[:, first:end][torch.arange(B, device="cuda")[:, None, None], top.long()]
    expected = latent_attention(q_cat, chosen, L, allowed.expand(B, -1, -1).gather(-1, top.long()).unsqueeze(-2))
    for config in gluon_latent.CONFIGS:
        gluon_latent.sparse_prefill(q_cat, latent, top, start, first, L, got, config, ascending=True)
        _close(got, expected)


def test_kernels_dispatch_to_gluon_and_match_triton():
    """mla_decode and sparse_latent_attention run the Gluon kernel when it serves (its config first when untimed,
    as inside a graph capture) and give the Triton kernels' results."""
    gluon_latent = _hopper()
    from kvplan.models import triton_decode, triton_dsa

    g = torch.Generator().manual_seed(1)
    kv = torch.randn(2, 1000, L + R, generator=g).to("cuda", torch.bfloat16)
    q_cat = (torch.randn(2, H, L + R, generator=g) * 0.05).to("cuda", torch.bfloat16)
    position = torch.tensor([900], device="cuda")
    key = ("mla", 2, H, L + R, L, 1000, 1000, False, torch.bfloat16)
    triton_decode.CHOSEN[key] = ("gluon",) + gluon_latent.CONFIGS[0] + (4, 256)
    try:
        got = triton_decode.mla_decode(q_cat, kv, position, L)
    finally:
        del triton_decode.CHOSEN[key]
    gluon_latent.ENABLED = False
    try:
        assert not gluon_latent.serves(q_cat, L)
        expected = triton_decode.mla_decode(q_cat, kv, position, L)
        q_prefill = q_cat[:1].unsqueeze(0).expand(1, 4, H, L + R)
        top = torch.arange(8, device="cuda", dtype=torch.int32).expand(1, 4, 8).contiguous()
        sparse_expected = triton_dsa.sparse_latent_attention(q_prefill, kv[:1], top, 3, 0, L, None)
    finally:
        gluon_latent.ENABLED = True
    _close(got, expected)
    sparse_got = triton_dsa.sparse_latent_attention(q_prefill, kv[:1], top, 3, 0, L, None, config=("gluon",) + gluon_latent.CONFIGS[0])
    _close(sparse_got, sparse_expected)


@pytest.mark.parametrize("rows, n_keys, per_sm, min_keys", [(16, 131072, 1, 4096), (3, 3000, 4, 256), (1, 100, 2, 64),
                                                            (5, 777, 1, 1 << 20)])
def test_balanced_split_deals_every_key_block_once(rows, n_keys, per_sm, min_keys):
    """The BALANCED grid's arithmetic (CPU only): programs cover the rows' blocks laid end to end exactly once, each
    run at most `per` blocks; the slices a row's blocks fall in are numbered 0 .. row_slices - 1 from the program
    holding its first block, within the `most` slices the partial outputs hold (the kernel and the merge count
    them so)."""
    from kvplan.models import gluon_latent

    block = 64
    programs, per, most = gluon_latent.balanced_split(rows, 2, n_keys, block, torch.device("cpu"), per_sm, min_keys)
    n_blocks = -(-n_keys // block)
    owner = [g // per for g in range(rows * n_blocks)]  # the program of each block
    assert max(owner) == programs - 1 and per >= -(-min_keys // block)
    for r in range(rows):
        held = sorted(set(owner[r * n_blocks:(r + 1) * n_blocks]))
        slices = [p - r * n_blocks // per for p in held]
        assert slices == list(range(len(held))) and len(held) == gluon_latent.row_slices(r, n_blocks, per) <= most
