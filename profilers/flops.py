"""Counting FLOPs with PyTorch's FlopCounterMode, and what the estimate says that counter should see.

FlopCounterMode counts matrix products (mm, bmm, addmm, baddbmm, einsum through them) and
scaled_dot_product_attention as 2 x b x h_q x s_q x s_k x (d_qk + d_v): the whole query-by-key rectangle,
even when the kernel is causal and skips the upper triangle (its source says "We aren't accounting for
causal attention here"). So a measured prefill count is compared with a *counted* figure built from the
Estimator's per-kind pieces with every query meeting every key of its call, and the exact causal figure
(what the hardware computes, and what the roofline uses) is shown beside it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from kvplan.estimator import Estimator
from kvplan.models.common import query_pieces, window_chunk

aten = torch.ops.aten


def _sdpa_rectangle(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """2 b h_q s_q s_k (d_qk + d_v), also when key/value carry fewer heads (GQA), which some torch versions
    reject in their own formula."""
    b, h_q, s_q, d_qk = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h_q * s_q * s_k * (d_qk + d_v)


# The CPU kernel has no formula in torch's registry (it would count 0); the GPU ones are re-registered so
# GQA shapes count the same way on every torch version.
_SDPA_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
CUSTOM_MAPPING = {getattr(aten, name): _sdpa_rectangle for name in _SDPA_OPS if hasattr(aten, name)}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs FlopCounterMode records while `fn` runs (no gradients are taken)."""
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=CUSTOM_MAPPING) as counter:
        fn()
    return int(counter.get_total_flops())


def _pieces_pairs(pieces, cap: int | None = None) -> int:
    """(query, key) pairs the prefill kernels of one layer are handed over (start, end, first) query pieces
    (kvplan.models.common.query_pieces): each piece's queries against keys first..end-1, at most `cap` of them
    per query (DSA's top-k)."""
    return sum((end - start) * (end - first if cap is None else min(end - first, cap)) for start, end, first in pieces)


def counted_prefill_flops(est: Estimator, batch: int, prompt: int) -> int:
    """Prefill FLOPs as FlopCounterMode reports them for kvplan.models: linear layers and LM head as in the
    estimate; attention over the rectangles the kernels are handed: queries in chunks of the kind's
    prefill_query_chunk (DSA), else one prompt x prompt call, or for a window shorter than the prompt chunks of
    window_chunk(window) queries (kvplan.models.common.attend_prefill), each chunk against the keys it can
    see, or for a chunked layer (Model.chunked) shorter than the prompt one causal call per chunk; a key
    selector (DSA's indexer) scores every visible key and attention takes a fixed min(visible, top-k) keys
    per query. Recurrent layers as in the estimate, less their triangular solves
    (torch.linalg.solve_triangular, which FlopCounterMode does not count)."""
    attention = est.model.attention
    topk = attention.sparse_topk
    total = 0
    for window, layers in est.model.window_groups:
        whole = window is None or window >= prompt
        chunk = window if est.model.chunked and not whole else None
        step = attention.prefill_query_chunk or (prompt if whole else chunk or window_chunk(window))
        pieces = list(query_pieces(prompt, step, None if chunk else window, chunk))
        per_layer = (est.pair_flops["prefill"] * _pieces_pairs(pieces, topk)
                     + est.indexer_pair_flops * _pieces_pairs(pieces))
        total += layers * (per_layer + est.token_flops["prefill"] * prompt)
    if est.model.is_hybrid:
        recurrent = est.model.recurrent
        total += len(est.model.recurrent_layer_ids) * (recurrent.prefill_flops(prompt) - recurrent.solve_flops(prompt))
    return est.prefill_linear_flops(batch, prompt) + batch * total
