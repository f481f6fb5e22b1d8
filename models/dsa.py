"""DeepSeek Sparse Attention (V3.2-Exp): MLA whose queries attend only the top-k keys a lightning indexer picks.

The indexer has index_n_heads small heads: queries from the query latent, one shared key per token
(LayerNorm, RoPE on its first qk_rope_head_dim elements), per-head weights from the hidden state;
score(t, s) = sum_j w[t, j] relu(q[t, j] . k[s]). Its keys are cached in FP8 (e4m3) with one fp32 scale per
128 elements, and its queries are rounded to FP8 the same way (as DeepSeek-V3.2-Exp's inference code does), so
the products run on FP8 tensor cores where kvplan.models.triton_dsa serves. Attention runs in MLA's absorbed (MQA) form in prefill and decode alike, over the
min(i+1, index_topk) keys chosen for each query; prefill goes in query chunks of DSA_QUERY_CHUNK so the
indexer's score matrix stays chunk x prompt (kvplan.kinds.dsa.DSA.query_scratch_bytes). In a chunked layer
the indexer scores, and attention takes its top-k from, the keys of the query's own chunk; query chunks then
also end where an attention chunk ends (common.query_pieces).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kvplan.kinds.dsa import DSA, QUERY_CHUNK as DSA_QUERY_CHUNK

from . import triton_decode, triton_dsa
from .common import Rope, apply_rope, band_mask, query_pieces
from .mla import MLALayer, latent_attention

FP8_MAX = 448.0  # largest finite float8_e4m3fn
INDEX_ROWS = 1024  # (query, indexer head) rows scored per matrix product in prefill


class DSALayer(MLALayer):
    def __init__(self, spec: DSA, d_model: int, window: int | None, max_batch: int, max_context: int,
                 rope: Rope, cache_dtype: torch.dtype, chunked: bool = False, **factory):
        super().__init__(spec.mla, d_model, window, max_batch, max_context, rope, cache_dtype, chunked, **factory)
        self.dsa = spec
        n, d_i, q_in = spec.index_n_heads, spec.index_head_dim, spec.mla.q_lora_rank or d_model
        self.index_wq = nn.Linear(q_in, n * d_i, bias=False, **factory)
        self.index_wk = nn.Linear(d_model, d_i, bias=False, **factory)
        self.index_k_norm = nn.LayerNorm(d_i, **factory)
        self.index_weights = nn.Linear(d_model, n, bias=False, **factory)
        self.group = spec.INDEX_SCALE_GROUP
        self.weight_scale = 1.0 / math.sqrt(n * d_i)  # the scores' scale, folded into the head weights
        device = factory.get("device")
        self.register_buffer("index_k", torch.zeros(max_batch, self.slots, d_i, dtype=torch.float8_e4m3fn,
                                                    device=device), persistent=False)
        groups = -(-d_i // self.group)
        self.register_buffer("index_scale", torch.zeros(max_batch, self.slots, groups, dtype=torch.float32,
                                                        device=device), persistent=False)
        self.token_dims = {"kv_cache": 1, "index_k": 1, "index_scale": 1}

    @classmethod
    def shard_state(cls, spec: DSA, state: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
        """MLA's slices of its MLA part; the indexer (index_wq, index_wk, index_k_norm, index_weights) whole:
        its heads are not the attention heads, and every rank selects keys for all of its own heads."""
        return super().shard_state(spec.mla, state, tp, rank)

    # --- the lightning indexer --------------------------------------------------------------------------
    def _index_inputs(self, x, q_latent, cos, sin):
        """Indexer queries [B, T, n, d_i] (rotated), weights [B, T, n], FP8 keys [B, T, d_i] and scales."""
        return self._index_rotated(*self._index_projections(x, q_latent), cos, sin)

    def _index_projections(self, x, q_latent):
        """Indexer queries [B, T, n, d_i] and normed keys [B, T, d_i], both before RoPE, and unscaled head
        weights [B, T, n]."""
        B, T, _ = x.shape
        q = self.index_wq(x if q_latent is None else q_latent).view(B, T, self.dsa.index_n_heads, -1)
        return q, self.index_k_norm(self.index_wk(x)), self.index_weights(x)

    def _index_rotated(self, q, k, weights, cos, sin):
        """_index_projections' outputs -> queries rotated in place, weights scaled in place, FP8 keys and scales."""
        rope = self.spec.qk_rope_head_dim
        q[..., :rope] = apply_rope(q[..., :rope], cos, sin)
        k = k.unsqueeze(2)
        k[..., :rope] = apply_rope(k[..., :rope], cos, sin)
        k_fp8, k_scale = self._quantize(k.squeeze(2))
        return q, weights.mul_(self.weight_scale), k_fp8, k_scale

    def _quantize(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FP8 values and one fp32 scale (amax / 448) per group of 128 elements of the last dimension (the last
        group may be shorter): the indexer's keys, and its queries per head as DeepSeek-V3.2-Exp quantizes them
        (act_quant, whose scales it folds into the head weights)."""
        d, g = k.size(-1), self.group
        groups = F.pad(k.float(), (0, -d % g)).unflatten(-1, (-1, g))
        # x (1 / 448), not / 448: CUDA divides by a scalar as a product with its reciprocal and the CPU does not; a
        # product rounds alike on both and in the decode kernel (triton_decode.dsa_decode_inputs).
        scale = groups.abs().amax(-1).clamp_min(1e-12) * (1 / FP8_MAX)
        return (groups / scale[..., None]).flatten(-2)[..., :d].to(torch.float8_e4m3fn), scale

    def _dequantize(self, k_fp8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        d, g = k_fp8.size(-1), self.group
        k = k_fp8.to(dtype)
        if d % g == 0:
            k.unflatten(-1, (-1, g)).mul_(scale[..., None].to(dtype))
        else:
            k.mul_(scale.to(dtype).repeat_interleave(g, dim=-1)[..., :d])
        return k

    def _index_scores(self, q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """q [B, C, n, d_i], weights [B, C, n], keys [B, S, d_i] -> fp32 scores [B, C, S].

        (query, head) rows go through in blocks of INDEX_ROWS so the per-head scores stay small; both
        contractions (over d_i, then over heads) are matrix products.
        """
        B, C, n, _ = q.shape
        scores = torch.empty(B, C, keys.size(1), dtype=torch.float32, device=q.device)
        step = max(1, INDEX_ROWS // n)
        for start in range(0, C, step):
            end = min(start + step, C)
            per_head = torch.matmul(q[:, start:end], keys.unsqueeze(1).transpose(-1, -2)).relu_()  # [B, c, n, S]
            scores[:, start:end] = torch.matmul(weights[:, start:end].unsqueeze(-2), per_head).squeeze(-2)
        return scores

    # --- attention over the selected keys --------------------------------------------------------------
    def prefill(self, x: torch.Tensor, write_cache: bool = True) -> torch.Tensor:
        B, T, _ = x.shape
        cos, sin = self.rope.at(T)
        latent = self._latent(x, cos, sin)  # [B, T, L + R]
        q_latent, q = self._query(x)
        index_q, index_w, k_fp8, k_scale = self._index_inputs(x, q_latent, cos, sin)
        if write_cache:
            self.fill("kv_cache", latent)
            self.fill("index_k", k_fp8)
            self.fill("index_scale", k_scale)
        fused = triton_dsa.serves(x)
        if not fused:
            index_keys = self._dequantize(k_fp8, k_scale, x.dtype)
            positions = torch.arange(T, device=x.device)
            batch_rows = torch.arange(B, device=x.device)[:, None, None]
        out = x.new_empty(B, T, x.size(-1))
        for start, end, first in query_pieces(T, DSA_QUERY_CHUNK, self.window, self.attention_chunk):
            k = min(self.dsa.index_topk, end - first)
            if fused:  # the kernels of kvplan.models.triton_dsa: no dequantized keys, per-head scores or gathers
                if k == end - first:  # every visible key is chosen: no scores to rank
                    top = torch.arange(k, device=x.device, dtype=torch.int32).expand(B, end - start, k)
                else:
                    q_fp8, q_scale = triton_dsa.quantize(index_q[:, start:end], self.group)
                    scores = triton_dsa.index_scores(q_fp8, q_scale, index_w[:, start:end].contiguous(), k_fp8,
                                                     k_scale, self.group, start, first, self.window)
                    top = triton_dsa.select_topk(scores, k)  # [B, C, k] int32, in position order
                    del scores
                q_cat = self._absorbed_query(q[:, start:end], cos[start:end], sin[start:end])
                o_latent = triton_dsa.sparse_latent_attention(q_cat, latent, top, start, first,
                                                              self.spec.kv_lora_rank, self.window, ascending=True)
            else:
                q_fp8, q_scale = self._quantize(index_q[:, start:end])  # per chunk: the fp32 scratch stays small
                allowed = band_mask(positions[start:end], positions[first:end], self.window)  # [C, S]
                scores = self._index_scores(self._dequantize(q_fp8, q_scale, x.dtype), index_w[:, start:end],
                                            index_keys[:, first:end])
                scores.masked_fill_(~allowed, float("-inf"))
                top = scores.topk(k, dim=-1).indices  # [B, C, k]
                del scores
                chosen = latent[:, first:end][batch_rows, top]  # [B, C, k, L + R]
                chosen_allowed = allowed.expand(B, -1, -1).gather(-1, top)  # early queries have < k keys
                q_cat = self._absorbed_query(q[:, start:end], cos[start:end], sin[start:end])
                o_latent = latent_attention(q_cat, chosen, self.spec.kv_lora_rank, chosen_allowed.unsqueeze(-2))
                del chosen
            del q_cat
            out[:, start:end] = self._absorbed_output(o_latent)
        return out

    def decode(self, x: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        B = x.size(0)
        cos, sin = self.rope.at(input_pos)
        self._write_latent(x, cos, sin, input_pos)
        q_latent, q = self._query(x)
        q_cat = self._absorbed_query(q, cos, sin)[:, 0]  # [B, h, L + R]
        k = min(self.dsa.index_topk, self.slots)  # static k: every step has the same shapes
        limit = self.decode_limit(input_pos)
        kernel = triton_decode.enabled(x)
        if kernel:  # the key written, the queries quantized, in one kernel; scores -inf past the limit
            index_q, index_key, index_w = self._index_projections(x, q_latent)
            q_fp8, q_scale, index_w = triton_decode.dsa_decode_inputs(
                index_q[:, 0], index_key[:, 0], index_w[:, 0], cos, sin, self.index_k, self.index_scale, input_pos,
                self.group, self.weight_scale)
            scores = triton_decode.dsa_index_scores(q_fp8, q_scale, index_w, self.index_k[:B], self.index_scale[:B],
                                                    self.group, limit)
            top = triton_decode.topk_indices(scores, k)  # [B, k], the k chosen slots in any order
        else:
            index_q, index_w, k_fp8, k_scale = self._index_inputs(x, q_latent, cos, sin)
            self.write("index_k", k_fp8, input_pos)
            self.write("index_scale", k_scale, input_pos)
            index_q = self._dequantize(*self._quantize(index_q), x.dtype)  # FP8 queries, as prefill's
            index_keys = self._dequantize(self.index_k[:B], self.index_scale[:B], x.dtype)
            scores = self._index_scores(index_q, index_w, index_keys)[:, 0]  # [B, slots]
            scores.masked_fill_(~self.decode_slots(input_pos), float("-inf"))
            top = scores.topk(k, dim=-1).indices  # [B, k]
        del scores
        if kernel and self.kv_cache.dtype == x.dtype:
            # The chosen rows read in place; chosen slots past the limit (early steps have fewer than k live
            # slots) are left out by the kernel.
            o_latent = triton_decode.mla_decode(q_cat, self.kv_cache[:B], limit, self.spec.kv_lora_rank, chosen=top)
        else:
            keys = self.read("kv_cache", B, x.dtype)
            top = top.long()  # radix_topk's are int32
            chosen = keys.gather(1, top.unsqueeze(-1).expand(-1, -1, keys.size(-1)))  # [B, k, L + R]
            allowed = self.decode_slots(input_pos)[top].unsqueeze(1)  # [B, 1, k]
            o_latent = latent_attention(q_cat, chosen, self.spec.kv_lora_rank, allowed)
        return self._absorbed_output(o_latent.unsqueeze(1))
