"""Attention kinds: what each caches per token per layer, its weights, and its FLOPs.

Conventions used by every formula here (and by kvplan.models, which implements them):
- Elements, not bytes: callers multiply through a StorageFormat (kvplan.dtypes).
- A query at 0-based position i attends keys 0..i, so i+1 keys; a window of w keeps the w most recent
  (itself included), min(i+1, w); DSA attends min(i+1, index_topk) keys chosen by its indexer, which itself
  scores all i+1 keys.
- FLOPs count multiply-adds as 2 and cover matrix products only (softmax, RoPE, norms and other
  elementwise work is left out, as PyTorch's FlopCounterMode also leaves it out).
- "prefill" runs attention over materialised Q, K, V (MLA decompresses its latent, TPA rebuilds Q, K, V
  from its factors); "decode" runs over the cache as stored (MLA absorbed, TPA factorized). DSA uses
  MLA's absorbed form in both, as DeepSeek-V3.2 does.
- Tensor parallelism over `tp` GPUs splits heads; what cannot be split (MQA's one head, MLA's latent,
  TPA's B factors, the DSA indexer key) is replicated on every GPU.
"""

from __future__ import annotations

from dataclasses import dataclass


DSA_QUERY_CHUNK = 1024  # queries per chunk of DSA prefill; bounds the indexer's score matrix


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class DenseAttention:
    """MHA (n_kv_heads == n_heads), GQA (1 < n_kv_heads < n_heads) and MQA (n_kv_heads == 1)."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    qkv_bias: bool = False

    @property
    def kind(self) -> str:
        if self.n_kv_heads == self.n_heads:
            return "mha"
        return "mqa" if self.n_kv_heads == 1 else "gqa"

    @property
    def label(self) -> str:
        return self.kind if self.kind != "gqa" else f"gqa(kv_heads={self.n_kv_heads})"

    def cache_vectors(self, tp: int = 1) -> tuple[tuple[int, int], ...]:
        """(count, length) of the vectors cached per token per layer on one GPU: K and V per KV head."""
        kv_heads_per_gpu = ceil_div(self.n_kv_heads, tp)  # tp > n_kv_heads replicates heads
        return ((2 * kv_heads_per_gpu, self.head_dim),)

    def params(self, d_model: int, tp: int = 1) -> int:
        """Weights one GPU holds under `tp`-way tensor parallelism (tp=1: the layer's whole count)."""
        q_out = ceil_div(self.n_heads, tp) * self.head_dim
        kv_out = ceil_div(self.n_kv_heads, tp) * self.head_dim
        bias = (q_out + 2 * kv_out) if self.qkv_bias else 0
        return d_model * (q_out + 2 * kv_out) + q_out * d_model + bias

    def linear_params(self, d_model: int) -> int:
        """Weights used in matrix products per token (2 FLOPs each)."""
        q_out, kv_out = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return d_model * (q_out + 2 * kv_out) + q_out * d_model

    def pair_flops(self, phase: str) -> int:
        """FLOPs per (query, key) pair: QK^T and PV over all heads."""
        return 4 * self.n_heads * self.head_dim

    def token_flops(self, phase: str) -> int:
        """Attention FLOPs per query token beyond the linear layers and the (query, key) pairs."""
        return 0

    def indexer_pair_flops(self) -> int:
        return 0

    def activation_elements(self) -> int:
        """Per-token elements live at the attention kernel in prefill: the q/k/v projection (alive through v),
        rotated q and k, and the output. Measured exactly on the H100 (examples/tp1-h100.csv: 19456 elements
        per token at 32 heads, 8 KV heads of 128, with d_model 4096 of input)."""
        return 3 * self.n_heads * self.head_dim + 3 * self.n_kv_heads * self.head_dim

    @property
    def sparse_topk(self) -> int | None:
        return None


@dataclass(frozen=True)
class MLA:
    """DeepSeek Multi-head Latent Attention: caches the latent c_KV (kv_lora_rank) and the shared RoPE key."""

    n_heads: int
    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int = 0  # 0: queries projected directly from the hidden state

    kind = "mla"

    @property
    def label(self) -> str:
        return f"mla(kv_lora_rank={self.kv_lora_rank})"

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def cache_vectors(self, tp: int = 1) -> tuple[tuple[int, int], ...]:
        # The latent is shared by all heads, so tensor parallelism replicates it.
        return ((1, self.kv_lora_rank), (1, self.qk_rope_head_dim))

    def linear_params(self, d_model: int) -> int:
        h = self.n_heads
        if self.q_lora_rank:
            q = d_model * self.q_lora_rank + self.q_lora_rank * h * self.qk_head_dim
        else:
            q = d_model * h * self.qk_head_dim
        kv_down = d_model * (self.kv_lora_rank + self.qk_rope_head_dim)
        kv_up = self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim)
        out = h * self.v_head_dim * d_model
        return q + kv_down + kv_up + out

    def params(self, d_model: int, tp: int = 1) -> int:
        """Weights one GPU holds under `tp`-way tensor parallelism: the per-head up- and output projections
        split, the down-projections to the latents (and their norms) replicated."""
        heads = ceil_div(self.n_heads, tp)
        norms = self.kv_lora_rank + self.q_lora_rank
        q_down = d_model * self.q_lora_rank
        q_up = (self.q_lora_rank or d_model) * heads * self.qk_head_dim
        kv_down = d_model * (self.kv_lora_rank + self.qk_rope_head_dim)
        kv_up = self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
        return q_down + q_up + kv_down + kv_up + heads * self.v_head_dim * d_model + norms

    def pair_flops(self, phase: str) -> int:
        h = self.n_heads
        if phase == "decode":
            # Absorbed: scores against [latent, rope key], values are the latent itself.
            return 2 * h * (self.kv_lora_rank + self.qk_rope_head_dim) + 2 * h * self.kv_lora_rank
        return 2 * h * self.qk_head_dim + 2 * h * self.v_head_dim

    def token_flops(self, phase: str) -> int:
        # Absorbed decode folds W_UK into the query and W_UV into the output (2 h kv_lora_rank (nope + v)
        # FLOPs per token) instead of decompressing the new token's latent: the same count as kv_up's
        # product, which linear_params already holds, so nothing is added in either phase.
        return 0

    def indexer_pair_flops(self) -> int:
        return 0

    def activation_elements(self) -> int:
        """Per-token elements live at the attention kernel in prefill: the rotated query and the assembled key
        (h x qk_head_dim each), the decompressed [k_nope | v] buffer that v views (h x (nope + v)), and the
        output (h x v); the query latent and the cached latent are freed by then. Measured exactly on the H100
        (examples/tp1-h100.csv: 28672 elements per token at h = 32 with d_model 4096 of input)."""
        h = self.n_heads
        return h * (2 * self.qk_head_dim + self.qk_nope_head_dim + 2 * self.v_head_dim)

    @property
    def sparse_topk(self) -> int | None:
        return None


@dataclass(frozen=True)
class TPA:
    """Tensor Product Attention (T6): Q, K, V as rank-R sums of outer products a (heads) x b (head_dim).

    The cache holds A_K (R_K x h), B_K (R_K x d_h, RoPE applied), A_V (R_V x h), B_V (R_V x d_h) per token
    per layer: (R_K + R_V)(h + d_h) elements.
    """

    n_heads: int
    head_dim: int
    q_rank: int = 6
    k_rank: int = 2
    v_rank: int = 2

    kind = "tpa"

    @property
    def label(self) -> str:
        return f"tpa(q={self.q_rank},k={self.k_rank},v={self.v_rank})"

    def cache_vectors(self, tp: int = 1) -> tuple[tuple[int, int], ...]:
        # A factors are per head and split with the heads; B factors are shared by all heads.
        heads_per_gpu = ceil_div(self.n_heads, tp)
        ranks = self.k_rank + self.v_rank
        return ((ranks, heads_per_gpu), (ranks, self.head_dim))

    def linear_params(self, d_model: int) -> int:
        h, d_h = self.n_heads, self.head_dim
        factors = d_model * (self.q_rank + self.k_rank + self.v_rank) * (h + d_h)
        return factors + h * d_h * d_model

    def params(self, d_model: int, tp: int = 1) -> int:
        """Weights one GPU holds under `tp`-way tensor parallelism: A projections and the output split by
        head, B projections (shared by all heads) replicated."""
        heads = ceil_div(self.n_heads, tp)
        ranks = self.q_rank + self.k_rank + self.v_rank
        return d_model * ranks * (heads + self.head_dim) + heads * self.head_dim * d_model

    def pair_flops(self, phase: str) -> int:
        h, d_h = self.n_heads, self.head_dim
        if phase == "decode":
            # q . B_K for each rank, then a sum over ranks weighted by A_K; P contracted with B_V per rank.
            return 2 * h * self.k_rank * (d_h + 1) + 2 * h * self.v_rank * d_h
        return 4 * h * d_h

    def token_flops(self, phase: str) -> int:
        # Rebuilding a head-by-dim tensor from R factor pairs costs 2 R h d_h per token.
        h, d_h = self.n_heads, self.head_dim
        ranks = self.q_rank if phase == "decode" else self.q_rank + self.k_rank + self.v_rank
        return 2 * ranks * h * d_h

    def indexer_pair_flops(self) -> int:
        return 0

    def activation_elements(self) -> int:
        """Per-token elements live at the attention kernel in prefill: Q, K and V rebuilt from their factors
        and the output (the factors are freed once cached). Measured exactly on the H100
        (examples/tp1-h100.csv: 20480 elements per token at h = 32, d_h = 128, with d_model 4096 of input)."""
        return 4 * self.n_heads * self.head_dim

    @property
    def sparse_topk(self) -> int | None:
        return None


@dataclass(frozen=True)
class DSA:
    """DeepSeek Sparse Attention: MLA whose queries attend only the index_topk keys a lightning indexer picks.

    The indexer has index_n_heads small heads of index_head_dim; its keys are cached in FP8 with one fp32
    scale per 128 elements (as DeepSeek-V3.2-Exp does), whatever the KV dtype of the MLA cache.
    """

    mla: MLA
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 2048

    kind = "dsa"
    INDEX_SCALE_GROUP = 128
    INDEX_SCALE_BYTES = 4

    @property
    def n_heads(self) -> int:
        return self.mla.n_heads

    @property
    def label(self) -> str:
        return f"dsa(topk={self.index_topk})"

    def cache_vectors(self, tp: int = 1) -> tuple[tuple[int, int], ...]:
        return self.mla.cache_vectors(tp)

    def indexer_cache_bytes(self) -> int:
        """Bytes of indexer key per token per layer (FP8 plus scales), replicated under tensor parallelism."""
        return self.index_head_dim + ceil_div(self.index_head_dim, self.INDEX_SCALE_GROUP) * self.INDEX_SCALE_BYTES

    def indexer_params(self, d_model: int) -> int:
        q_in = self.mla.q_lora_rank or d_model
        return (q_in * self.index_n_heads * self.index_head_dim  # indexer queries
                + d_model * self.index_head_dim  # indexer key
                + d_model * self.index_n_heads)  # per-head weights

    def linear_params(self, d_model: int) -> int:
        return self.mla.linear_params(d_model) + self.indexer_params(d_model)

    def params(self, d_model: int, tp: int = 1) -> int:
        """The MLA part as MLA splits it; the indexer (and its key LayerNorm) replicated on every GPU."""
        return self.mla.params(d_model, tp) + self.indexer_params(d_model) + 2 * self.index_head_dim

    def pair_flops(self, phase: str) -> int:
        # DSA runs MLA in its absorbed (MQA) form in prefill too: each selected latent serves every head.
        return self.mla.pair_flops("decode")

    def token_flops(self, phase: str) -> int:
        return self.mla.token_flops("decode")

    def prefill_query_bytes(self, tokens: int, act_bytes: float, tp: int = 1) -> int:
        """Transient bytes per query row of sparse prefill (run in chunks of DSA_QUERY_CHUNK queries): its
        indexer scores (fp32) over all keys, its top-k indices (int64), the gathered latents, and the scores
        and probabilities over the selected keys."""
        keys = min(tokens, self.index_topk)
        heads = ceil_div(self.n_heads, tp)
        latent = self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        return int(tokens * 4 + keys * 8 + keys * latent * act_bytes + 2 * heads * keys * act_bytes)

    def indexer_pair_flops(self) -> int:
        """Per (query, key) scored by the indexer: a dot product per head, then a weighted sum over heads."""
        return 2 * self.index_n_heads * self.index_head_dim + 2 * self.index_n_heads

    def activation_elements(self) -> int:
        # Sparse prefill never decompresses the latent: it holds the queries, the indexer's queries, weights
        # and key, the latent with its RoPE key, and an output buffer the query chunks write into
        # (d_model wide, counted by the estimator); the chunk scratch is prefill_query_bytes.
        mla = self.mla
        return (mla.q_lora_rank + mla.n_heads * mla.qk_head_dim + self.index_n_heads * (self.index_head_dim + 1)
                + mla.kv_lora_rank + mla.qk_rope_head_dim + self.index_head_dim)

    @property
    def sparse_topk(self) -> int | None:
        return self.index_topk


Attention = DenseAttention | MLA | TPA | DSA


def keys_attended_sum(n_queries: int, cap: int | None, start: int = 0) -> int:
    """Sum over queries at positions start..start+n_queries-1 of min(position+1, cap) (cap None: no cap)."""

    def prefix(n: int) -> int:  # sum_{j=1..n} min(j, cap)
        if cap is None or n <= cap:
            return n * (n + 1) // 2
        return cap * (cap + 1) // 2 + (n - cap) * cap

    return prefix(start + n_queries) - prefix(start)
