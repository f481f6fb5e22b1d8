"""Model descriptions: a stack of layers, each with attention (optionally windowed) and a feed-forward."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .kinds import Attention
from .units import ceil_div


@dataclass(frozen=True)
class FeedForward:
    """Gated feed-forward (SwiGLU/GeGLU: three d_model x intermediate matrices), dense or mixture-of-experts.

    The first `n_dense_layers` layers are dense with `intermediate`; the rest route each token to
    `n_active_experts` of `n_experts` experts of `moe_intermediate`, plus `n_shared_experts` always-on ones.
    """

    intermediate: int
    n_experts: int = 0
    n_active_experts: int = 0
    n_shared_experts: int = 0
    moe_intermediate: int = 0
    n_dense_layers: int | None = None  # None: every layer dense (no MoE)

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def dense_layer_count(self, n_layers: int) -> int:
        return n_layers if not self.is_moe or self.n_dense_layers is None else min(self.n_dense_layers, n_layers)

    def expert_params(self, d_model: int) -> int:
        return 3 * d_model * self.moe_intermediate

    def dense_params(self, d_model: int) -> int:
        return 3 * d_model * self.intermediate

    def moe_layer_params(self, d_model: int) -> int:
        """All weights of one MoE layer: routed and shared experts and the router."""
        return (self.n_experts + self.n_shared_experts) * self.expert_params(d_model) + d_model * self.n_experts

    def moe_layer_active_params(self, d_model: int) -> int:
        """Weights one token multiplies through in an MoE layer."""
        return (self.n_active_experts + self.n_shared_experts) * self.expert_params(d_model) + d_model * self.n_experts

    def activation_elements(self, d_model: int) -> int:
        """Per-token elements live at the feed-forward's peak: gate, up and their product."""
        if self.is_moe:
            width = (self.n_active_experts + self.n_shared_experts) * self.moe_intermediate
            return max(3 * self.intermediate, 3 * width)
        return 3 * self.intermediate


ROPE_CONVENTIONS = ("hf", "t6")
BLOCK_NORMS = ("rmsnorm", "rmsnorm-unweighted")


@dataclass(frozen=True)
class Model:
    """One model: per-layer attention windows over a single attention kind, and a feed-forward.

    `layer_windows[i]` is None for a global (full-context) layer, else the window in tokens.
    `rope_convention`: which way RoPE turns each pair (x1, x2) of a vector's halves by angle t: "hf" gives
    (x1 cos t - x2 sin t, x2 cos t + x1 sin t) (transformers' rotate_half: Llama, Qwen, DeepSeek); "t6" the
    opposite turn, (x1 cos t + x2 sin t, x2 cos t - x1 sin t) (tensorgi/T6 model/T6.py apply_rotary_emb).
    `block_norm`: the norm before each attention and feed-forward and before the LM head: "rmsnorm" with a
    learned weight per channel (d_model parameters each); "rmsnorm-unweighted" is
    torch.nn.functional.rms_norm with no weight and its default eps (the dtype's machine epsilon), as T6's
    reference blocks call it (model/T6.py Block.forward).
    """

    name: str
    n_layers: int
    d_model: int
    vocab_size: int
    attention: Attention
    ffn: FeedForward
    layer_windows: tuple[int | None, ...] = ()
    tie_embeddings: bool = False
    max_positions: int | None = None
    is_encoder: bool = False
    architecture: str = ""
    source: str = ""
    rope_convention: str = "hf"
    block_norm: str = "rmsnorm"
    window_groups: tuple[tuple[int | None, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rope_convention not in ROPE_CONVENTIONS:
            raise ValueError(f"{self.name}: rope_convention {self.rope_convention!r} is not one of {ROPE_CONVENTIONS}")
        if self.block_norm not in BLOCK_NORMS:
            raise ValueError(f"{self.name}: block_norm {self.block_norm!r} is not one of {BLOCK_NORMS}")
        windows = self.layer_windows or (None,) * self.n_layers
        if len(windows) != self.n_layers:
            raise ValueError(f"{self.name}: {len(windows)} layer windows for {self.n_layers} layers")
        object.__setattr__(self, "layer_windows", tuple(windows))
        # Formulas loop over distinct windows, not layers: keeps estimates O(1) in depth.
        object.__setattr__(self, "window_groups", tuple(sorted(Counter(windows).items(), key=lambda kv: kv[0] or 0)))

    @property
    def kind_label(self) -> str:
        """The model's attention as a reader names it, e.g. 'gqa', 'gqa+window(4096)', 'gqa local/global'."""
        base = self.attention.label
        windows = {w for w in self.layer_windows}
        if windows == {None}:
            return base
        if None in windows:
            local = sorted(w for w in windows if w is not None)
            return f"{base} local({','.join(map(str, local))})/global"
        return f"{base}+window({','.join(str(w) for w in sorted(windows))})"

    def attention_params(self) -> int:
        return self.n_layers * self.attention.params(self.d_model)

    def ffn_params(self) -> int:
        dense_layers = self.ffn.dense_layer_count(self.n_layers)
        moe_layers = self.n_layers - dense_layers
        return dense_layers * self.ffn.dense_params(self.d_model) + moe_layers * self.ffn.moe_layer_params(self.d_model)

    def embedding_params(self) -> int:
        return self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)

    @property
    def norm_width(self) -> int:
        """Weights of one block norm: d_model, or none for unweighted norms."""
        return self.d_model if self.block_norm == "rmsnorm" else 0

    def norm_params(self) -> int:
        return (2 * self.n_layers + 1) * self.norm_width

    def total_params(self) -> int:
        return self.embedding_params() + self.attention_params() + self.ffn_params() + self.norm_params()

    def active_linear_params_per_token(self) -> int:
        """Weights one token multiplies through in the layers (embedding lookup and LM head excluded)."""
        dense_layers = self.ffn.dense_layer_count(self.n_layers)
        moe_layers = self.n_layers - dense_layers
        ffn = dense_layers * self.ffn.dense_params(self.d_model)
        ffn += moe_layers * self.ffn.moe_layer_active_params(self.d_model)
        return self.n_layers * self.attention.linear_params(self.d_model) + ffn

    def lm_head_params(self) -> int:
        return self.vocab_size * self.d_model

    def stage_params(self, first: int, last: int, tp: int = 1, pipeline: bool = False) -> int:
        """Weights one GPU holds for layers first..last-1 under `tp`-way tensor parallelism.

        Attention splits as its kind says (attention.params); feed-forwards, embeddings and the LM head
        split evenly (vocabulary-parallel); norms replicate. The stage holding layer 0 holds the input
        embedding, the one holding the last layer the final norm and the LM head (with `pipeline`, a tied
        LM head is a second copy there).
        """
        d, ffn = self.d_model, self.ffn
        dense_layers = ffn.dense_layer_count(self.n_layers)
        dense_here = max(0, min(last, dense_layers) - first)
        moe_here = (last - first) - dense_here
        total = (last - first) * (self.attention.params(d, tp) + 2 * self.norm_width)
        total += dense_here * ceil_div(ffn.dense_params(d), tp)
        if moe_here:
            total += moe_here * ceil_div(ffn.moe_layer_params(d), tp)
        embedding = ceil_div(self.vocab_size * d, tp)
        if first == 0:
            total += embedding
        if last == self.n_layers:
            total += self.norm_width + (embedding if not self.tie_embeddings or pipeline else 0)
        return total
