"""DeepSeek Sparse Attention: MLA whose queries attend only the index_topk keys a lightning indexer picks."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..units import ceil_div, minimum
from .base import AttentionKind
from .mla import MLA, latent_of

QUERY_CHUNK = 1024  # queries per chunk of sparse prefill; bounds the indexer's score matrix
# Top-k selection on the GPU (kvplan.models.triton_dsa.select_topk): the k-th largest of at most this many group
# maxima per k bounds the selection from below, and this many candidate slots per k hold the scores above it.
TOPK_GROUPS_PER_K = 4
TOPK_SLOTS_PER_K = 2


def _power_of_two_above(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def topk_layout(keys: int, k: int) -> tuple[int, int, int, int]:
    """(keys per group G, groups NG, NG padded to a power of two, candidate slots W) of the GPU's top-k over `keys`
    scores: G the smallest power of two leaving at most TOPK_GROUPS_PER_K x k groups, W = TOPK_SLOTS_PER_K x k (k
    padded to a power of two)."""
    k_pad = _power_of_two_above(k)
    group = _power_of_two_above(ceil_div(keys, TOPK_GROUPS_PER_K * k_pad))
    groups = ceil_div(keys, group)
    return group, groups, _power_of_two_above(groups), TOPK_SLOTS_PER_K * k_pad


@dataclass(frozen=True)
class DSA(AttentionKind):
    """The indexer has index_n_heads small heads of index_head_dim; its keys are cached in FP8 with one fp32
    scale per 128 elements (as DeepSeek-V3.2-Exp does), whatever the KV dtype of the MLA cache. Attention runs
    in MLA's absorbed (MQA) form in prefill and decode alike, as DeepSeek-V3.2 does."""

    mla: MLA
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 2048

    name = "dsa"
    roofline_block = "latent"  # MLA's block, absorbed and sparse: the flash curve and sparse_attention
    recast_names = ("dsa",)
    layer = "dsa:DSALayer"
    INDEX_SCALE_GROUP = 128
    INDEX_SCALE_BYTES = 4

    @property
    def n_heads(self) -> int:
        return self.mla.n_heads

    @property
    def label(self) -> str:
        return f"dsa(topk={self.index_topk})"

    @property
    def rope_dim(self) -> int:
        return self.mla.rope_dim

    @property
    def value_head_dim(self) -> int:
        return self.mla.value_head_dim

    @property
    def sparse_topk(self) -> int | None:
        return self.index_topk

    def cache_vectors(self, tp: int = 1) -> tuple[tuple[int, int], ...]:
        return self.mla.cache_vectors(tp)

    def indexer_key_bytes(self) -> int:
        return self.fixed_cache_bytes()  # the indexer's FP8 keys and scales

    def fixed_cache_bytes(self) -> int:
        """The indexer key: FP8 plus its scales."""
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
        # Absorbed (MQA) form in prefill too: each selected latent serves every head.
        return self.mla.pair_flops("decode")

    def token_flops(self, phase: str) -> int:
        return self.mla.token_flops("decode")

    def indexer_pair_flops(self) -> int:
        """A dot product per indexer head, then a weighted sum over heads."""
        return 2 * self.index_n_heads * self.index_head_dim + 2 * self.index_n_heads

    def activation_elements(self, tp: int = 1) -> int:
        # Sparse prefill never decompresses the latent: it holds the queries (split by head), the indexer's
        # queries, weights and key, and the query latent and the latent with its RoPE key (all replicated under
        # tp); the output buffer is prefill_buffer_elements and the query-chunk scratch prefill_scratch_bytes.
        mla = self.mla
        return (mla.q_lora_rank + ceil_div(mla.n_heads, tp) * mla.qk_head_dim
                + self.index_n_heads * (self.index_head_dim + 1) + mla.kv_lora_rank + mla.qk_rope_head_dim
                + self.index_head_dim)

    def prefill_buffer_elements(self, d_model: int) -> int:
        """The output buffer the query chunks write into."""
        return d_model

    def query_scratch_bytes(self, tokens: int, activation_bytes: float, tp: int = 1, kernels: bool = True) -> int:
        """Transient bytes per query row of sparse prefill over a `tokens`-token prompt.

        Both paths hold the row's FP8 indexer queries with their fp32 scales and its fp32 indexer scores over
        every key. The kernels (kvplan.models.triton_dsa, `kernels`) then hold, while selecting, the group maxima
        and candidate slots of select_topk (topk_layout) and the int32 top-k, and while attending, the top-k,
        the absorbed query and the latent output of each head (the latent rows are read in place); the larger
        moment counts. The PyTorch path holds it all at once, the int64 top-k and the gathered latent rows with
        the scores and probabilities over them included."""
        keys = min(tokens, self.index_topk)
        heads = ceil_div(self.n_heads, tp)
        latent = self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        n = self.index_n_heads
        queries = n * self.index_head_dim + n * ceil_div(self.index_head_dim, self.INDEX_SCALE_GROUP) * 4
        if not kernels:
            return int(queries + tokens * 4 + keys * 8 + keys * latent * activation_bytes
                       + 2 * heads * keys * activation_bytes)
        selecting = tokens * 4 + keys * 4
        if keys < tokens:
            _, _, groups_padded, slots = topk_layout(int(tokens), int(keys))
            selecting += groups_padded * 4 + slots * 8
        attending = keys * 4 + heads * (latent + self.mla.kv_lora_rank) * activation_bytes
        return int(queries + n * activation_bytes + max(selecting, attending))

    @property
    def prefill_query_chunk(self) -> int:
        return QUERY_CHUNK

    def decode_scratch_elements(self, cached_tokens: int) -> int:
        """Per cached key the indexer's dequantized key, its per-head scores and their weighted sum; per selected
        key the gathered latent with its RoPE key, and the scores and probabilities of every head."""
        selected = min(cached_tokens, self.index_topk)
        mla = self.mla
        return (cached_tokens * (self.index_head_dim + self.index_n_heads + 1)
                + selected * (mla.kv_lora_rank + mla.qk_rope_head_dim + 2 * mla.n_heads))

    def prefill_scratch_bytes(self, batch: int, prompt: int, in_flight: int, activation_bytes: float, tp: int,
                              flash: bool) -> int:
        """Prefill runs in chunks of prefill_query_chunk queries per sequence; `flash`: through the kernels."""
        queries = minimum(batch * min(prompt, self.prefill_query_chunk), in_flight)
        return self.query_scratch_bytes(prompt, activation_bytes, tp, kernels=flash) * queries

    def decode_read_bytes(self, cached_tokens: int, attended_keys: int, layer_bytes: int) -> int:
        """Every indexer key, but only the latents of the keys it selects (the rest is held, not read)."""
        indexer = self.fixed_cache_bytes()
        return indexer * cached_tokens + (layer_bytes - indexer) * attended_keys

    def shard(self, tp: int) -> "DSA":
        return replace(self, mla=self.mla.shard(tp))

    @classmethod
    def recast_options(cls, name: str) -> dict[str, int]:
        return {"index_topk": 1, "index_n_heads": 1, "index_head_dim": 1}

    @classmethod
    def recast_from(cls, name: str, current: AttentionKind, values: dict[str, int]) -> "DSA":
        base = current if isinstance(current, DSA) else cls(latent_of(current))
        return replace(base, **values)

    @classmethod
    def example(cls) -> "DSA":
        return cls(MLA.example(), index_n_heads=4, index_head_dim=16, index_topk=8)
