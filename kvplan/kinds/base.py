"""The interface every attention kind implements, and the helpers its formulas share.

Conventions used by every formula (and by kvplan.models, which implements them):
- Elements, not bytes: callers multiply through a StorageFormat (kvplan.dtypes), except fixed_cache_bytes,
  which a kind stores in a format of its own whatever the KV dtype.
- A query at 0-based position i attends keys 0..i, so i+1 keys; a window of w keeps the w most recent
  (itself included), min(i+1, w); a sparse kind attends min(i+1, sparse_topk) keys that it selects.
- FLOPs count multiply-adds as 2 and cover matrix products only (softmax, RoPE, norms and other elementwise
  work is left out, as PyTorch's FlopCounterMode also leaves it out).
- "prefill" runs attention over materialised queries, keys and values; "decode" over the cache as stored.
- Tensor parallelism over `tp` GPUs splits heads; what cannot be split is replicated on every GPU.

A new kind is one module here (a frozen dataclass subclassing AttentionKind, listed in kinds/__init__.py),
its torch layer in kvplan.models (named by `layer`), and its tests; see the README's "Adding an attention kind".
Recurrent kinds (linear attention, state-space layers) subclass kinds.recurrent.RecurrentKind, which adds the
per-sequence state and chunked FLOPs; a Model places them on the layers its `layer_mixers` name "linear".
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from ..units import ceil_div, whole


class AttentionKind:
    """One attention layer's shape and what it costs. Subclasses are frozen dataclasses with `n_heads`."""

    name: ClassVar[str]  # registry key, e.g. "mla"
    recast_names: ClassVar[tuple[str, ...]] = ()  # --attention names that build this kind
    layer: ClassVar[str]  # "module:Class" of its torch layer inside kvplan.models
    recurrent: ClassVar[bool] = False  # a per-sequence state instead of a per-token cache (kinds.recurrent)
    # The attention block kvplan.roofline prices it with: "standard" (Kernels.prefill_attention and
    # decode_attention) or "latent" (an MLA block, as vLLM runs it: Kernels.mla_*'s per-layer calls and latent scan).
    roofline_block: ClassVar[str] = "standard"
    # Prefill on MLA's own efficiency curve (Kernels.mla_attention_efficiency: the latent decompressed into
    # per-head keys and values) instead of the flash curve by head width.
    latent_prefill_curve: ClassVar[bool] = False
    n_heads: int

    # --- what it is ------------------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """The kind as a reader names it in a table, e.g. 'gqa(kv_heads=8)'."""
        return self.name

    @property
    def rope_dim(self) -> int:
        """Channels per head that RoPE rotates: the whole head (`head_dim`) unless a kind says otherwise."""
        return self.head_dim

    @property
    def value_head_dim(self) -> int:
        """Width of one head's output (`head_dim` unless a kind says otherwise); a re-cast into another kind
        keeps it as that kind's head_dim."""
        return self.head_dim

    # --- memory ----------------------------------------------------------------------------------------------
    def cache_vectors(self, tp: int = 1) -> tuple[tuple[int, int], ...]:
        """(count, length) of the vectors cached per token per layer on one GPU, stored in the KV dtype."""
        raise NotImplementedError

    def indexer_key_bytes(self) -> int:
        """Bytes per cached token per layer that an indexer reads while scoring keys each decode step (0: none)."""
        return 0

    def fixed_cache_bytes(self) -> int:
        """Bytes cached per token per layer in the kind's own format (not the KV dtype), replicated under tp."""
        return 0

    def params(self, d_model: int, tp: int = 1) -> int:
        """Weights one GPU holds under `tp`-way tensor parallelism (tp=1: the layer's whole count)."""
        raise NotImplementedError

    def linear_params(self, d_model: int) -> int:
        """Weights a token multiplies through (2 FLOPs each)."""
        raise NotImplementedError

    def activation_elements(self, tp: int = 1) -> int:
        """Per-token elements live at the attention layer's prefill peak on one of `tp` GPUs (besides the residual
        stream and the normed input): the parts split over heads shrink with tp, replicated parts do not."""
        raise NotImplementedError

    def prefill_buffer_elements(self, d_model: int) -> int:
        """Per-token elements of buffers that prefill holds besides activation_elements (not split by tp)."""
        return 0

    def prefill_scratch_bytes(self, batch: int, prompt: int, in_flight: int, activation_bytes: float, tp: int,
                              flash: bool) -> int:
        """Transient bytes of one layer's attention kernel on one GPU for `in_flight` of batch x prompt queries:
        none with a flash kernel; else the score and probability matrices (2 x heads x in_flight x prompt)."""
        if flash:
            return 0
        return whole(ceil_div(self.n_heads, tp) * in_flight * prompt * 2 * activation_bytes)

    def decode_scratch_elements(self, cached_tokens: int) -> int:
        """Elements of the transient tensors one decode step of one sequence holds over `cached_tokens` cached
        keys in kvplan.models' PyTorch path (no Triton kernel), every temporary counted as if alive at once:
        the scores and the probabilities of every query head over every key."""
        return 2 * self.n_heads * cached_tokens

    @property
    def prefill_query_chunk(self) -> int | None:
        """Queries per sequence that kvplan.models' prefill hands one attention call whatever the window (None:
        the whole prompt, or for a window shorter than it chunks of kvplan.models.common.window_chunk)."""
        return None

    # --- FLOPs -----------------------------------------------------------------------------------------------
    def pair_flops(self, phase: str) -> int:
        """FLOPs per (query, key) pair attended in `phase` ("prefill" or "decode")."""
        raise NotImplementedError

    def token_flops(self, phase: str) -> int:
        """Attention FLOPs per query token beyond the linear layers and the (query, key) pairs."""
        return 0

    def indexer_pair_flops(self) -> int:
        """FLOPs per (query, key) pair that a key selector scores (every visible key, not only those attended)."""
        return 0

    @property
    def sparse_topk(self) -> int | None:
        """Keys a query attends at most when the kind selects them (None: every visible key)."""
        return None

    def decode_read_bytes(self, cached_tokens: int, attended_keys: int, layer_bytes: int) -> int:
        """Cache bytes one decode step reads in one layer for one sequence on one GPU, of `cached_tokens` held at
        `layer_bytes` per token (fixed_cache_bytes included), `attended_keys` of them attended: all of them."""
        return cached_tokens * layer_bytes

    # --- tensor parallelism ----------------------------------------------------------------------------------
    def check_shardable(self, tp: int) -> str | None:
        """Why this layer cannot run split over `tp` GPUs, or None."""
        if self.n_heads % tp:
            return f"{self.label}: {self.n_heads} heads do not split over tp={tp} GPUs"
        return None

    def shard(self, tp: int) -> "AttentionKind":
        """The attention one of `tp` GPUs runs (call check_shardable first)."""
        return replace(self, n_heads=self.n_heads // tp)

    def mixer_all_reduce_elements(self, tp: int) -> int:
        """Elements per token that one layer split over `tp` GPUs all-reduces inside the mixer, besides the
        all-reduce of its output (none unless a kind's projections sum over what the GPUs split, as Mamba's x_proj)."""
        return 0

    # --- re-casts (--attention NAME:key=value,...) -------------------------------------------------------------
    @classmethod
    def recast_options(cls, name: str) -> dict[str, int]:
        """The whole-number options `--attention name:...` takes, each with its smallest allowed value."""
        return {}

    @classmethod
    def recast_from(cls, name: str, current: "AttentionKind", values: dict[str, int]) -> "AttentionKind":
        """This kind built from a model's `current` attention (its heads and head width) and the given options."""
        raise NotImplementedError

    @classmethod
    def example(cls) -> "AttentionKind":
        """A small instance (d_model 64 models) that the registry's tests build, measure and shard."""
        raise NotImplementedError


def keys_attended_sum(n_queries: int, cap: int | None, start: int = 0) -> int:
    """Sum over queries at positions start..start+n_queries-1 of min(position+1, cap) (cap None: no cap)."""

    def prefix(n: int) -> int:  # sum_{j=1..n} min(j, cap)
        if cap is None or n <= cap:
            return n * (n + 1) // 2
        return cap * (cap + 1) // 2 + (n - cap) * cap

    return prefix(start + n_queries) - prefix(start)
