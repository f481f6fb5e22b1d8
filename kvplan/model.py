"""Model descriptions: a stack of layers, each with attention (optionally windowed) and a feed-forward."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .kinds import Attention, keys_attended_sum
from .units import ceil_div


def chunked_keys_sum(n: int, chunk: int, cap: int | None = None) -> int:
    """Sum over positions 0..n-1 of min(p mod chunk + 1, cap): the keys chunked attention attends
    (Model.chunked), at most `cap` per query (a sparse kind's top-k; None: no cap)."""
    whole, rest = divmod(n, chunk)
    return whole * keys_attended_sum(chunk, cap) + keys_attended_sum(rest, cap)


@dataclass(frozen=True)
class FeedForward:
    """Gated feed-forward (SwiGLU/GeGLU: three d_model x intermediate matrices), dense or mixture-of-experts.

    A layer is MoE when it comes after the first `n_dense_layers`, is every `moe_step`-th layer
    ((index + 1) % moe_step == 0, as Qwen2-MoE's decoder_sparse_step and Llama 4's interleave_moe_layer_step
    count), and is not listed in `dense_layer_ids` (Qwen's mlp_only_layers); other layers are dense with
    `intermediate`. An MoE layer routes each token to `n_active_experts` of `n_experts` experts of
    `moe_intermediate`, plus always-on shared experts `shared_intermediate` wide in all (0: n_shared_experts x
    moe_intermediate), and a d_model x n_experts router.
    """

    intermediate: int
    n_experts: int = 0
    n_active_experts: int = 0
    n_shared_experts: int = 0
    moe_intermediate: int = 0
    n_dense_layers: int | None = None  # None: every layer dense (no MoE)
    moe_step: int = 1
    dense_layer_ids: tuple[int, ...] = ()
    shared_intermediate: int = 0

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def is_moe_layer(self, index: int) -> bool:
        """Whether layer `index` (0-based) routes to experts."""
        return (self.is_moe and self.n_dense_layers is not None and index >= self.n_dense_layers
                and (index + 1) % self.moe_step == 0 and index not in self.dense_layer_ids)

    def moe_layer_count(self, first: int, last: int) -> int:
        """MoE layers among layers first..last-1."""
        if not self.is_moe or self.n_dense_layers is None:
            return 0
        if self.moe_step == 1 and not self.dense_layer_ids:
            return max(0, last - max(first, self.n_dense_layers))
        return sum(self.is_moe_layer(i) for i in range(first, last))

    def dense_layer_count(self, n_layers: int) -> int:
        return n_layers - self.moe_layer_count(0, n_layers)

    def expert_params(self, d_model: int) -> int:
        return 3 * d_model * self.moe_intermediate

    def shared_width(self) -> int:
        """Intermediate width of the shared experts together."""
        return self.shared_intermediate or self.n_shared_experts * self.moe_intermediate

    def dense_params(self, d_model: int) -> int:
        return 3 * d_model * self.intermediate

    def moe_layer_params(self, d_model: int) -> int:
        """All weights of one MoE layer: routed and shared experts and the router."""
        return self.n_experts * self.expert_params(d_model) + 3 * d_model * self.shared_width() + d_model * self.n_experts

    def moe_layer_active_params(self, d_model: int) -> int:
        """Weights one token multiplies through in an MoE layer."""
        return (self.n_active_experts * self.expert_params(d_model) + 3 * d_model * self.shared_width()
                + d_model * self.n_experts)

    def activation_elements(self, d_model: int) -> int:
        """Per-token elements live at the feed-forward's peak: gate, up and their product."""
        if self.is_moe:
            width = self.n_active_experts * self.moe_intermediate + self.shared_width()
            return max(3 * self.intermediate, 3 * width)
        return 3 * self.intermediate


ROPE_CONVENTIONS = ("hf", "t6")
BLOCK_NORMS = ("rmsnorm", "rmsnorm-unweighted")


@dataclass(frozen=True)
class Model:
    """One model: per-layer attention windows over a single attention kind, and a feed-forward.

    `layer_windows[i]` is None for a global (full-context) layer, else the window in tokens. With `chunked`,
    a windowed layer attends within fixed chunks of that many tokens instead of a sliding window (Llama 4's
    chunked attention: position p attends positions from p - p mod chunk to p); its cache never holds more
    than one chunk.
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
    chunked: bool = False
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
        if self.chunked:
            spans = ','.join(str(w) for w in sorted(w for w in windows if w is not None))
            return f"{base} chunked({spans})" + ("/global" if None in windows else "")
        if None in windows:
            local = sorted(w for w in windows if w is not None)
            return f"{base} local({','.join(map(str, local))})/global"
        return f"{base}+window({','.join(str(w) for w in sorted(windows))})"

    def attention_params(self) -> int:
        return self.n_layers * self.attention.params(self.d_model)

    def ffn_params(self) -> int:
        moe_layers = self.ffn.moe_layer_count(0, self.n_layers)
        dense_layers = self.n_layers - moe_layers
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
        moe_layers = self.ffn.moe_layer_count(0, self.n_layers)
        dense_layers = self.n_layers - moe_layers
        ffn = dense_layers * self.ffn.dense_params(self.d_model)
        ffn += moe_layers * self.ffn.moe_layer_active_params(self.d_model)
        return self.n_layers * self.attention.linear_params(self.d_model) + ffn

    def active_params(self) -> int:
        """Weights one token's forward pass uses: every weight except the routed experts it does not select
        (embedding table and LM head counted whole, as Mixtral's, Qwen's and DeepSeek's published "activated"
        counts are)."""
        unselected = self.ffn.n_experts - self.ffn.n_active_experts
        return self.total_params() - self.ffn.moe_layer_count(0, self.n_layers) * unselected * self.ffn.expert_params(
            self.d_model)

    def lm_head_params(self) -> int:
        return self.vocab_size * self.d_model

    def stage_params(self, first: int, last: int, tp: int = 1, pipeline: bool = False, ep: int = 1) -> int:
        """Weights one GPU holds for layers first..last-1 under `tp`-way tensor parallelism.

        Attention splits as its kind says (attention.params); feed-forwards, embeddings and the LM head
        split evenly (vocabulary-parallel); norms replicate. With `ep` > 1 (expert parallelism) each GPU holds
        ceil(n_experts / ep) whole routed experts, the shared experts split over tp and the router whole. The
        stage holding layer 0 holds the input embedding, the one holding the last layer the final norm and the
        LM head (with `pipeline`, a tied LM head is a second copy there).
        """
        d, ffn = self.d_model, self.ffn
        moe_here = ffn.moe_layer_count(first, last)
        dense_here = (last - first) - moe_here
        total = (last - first) * (self.attention.params(d, tp) + 2 * self.norm_width)
        total += dense_here * ceil_div(ffn.dense_params(d), tp)
        if moe_here and ep > 1:
            routed = ceil_div(ffn.n_experts, ep) * ffn.expert_params(d)
            total += moe_here * (routed + ceil_div(3 * d * ffn.shared_width(), tp) + d * ffn.n_experts)
        elif moe_here:
            total += moe_here * ceil_div(ffn.moe_layer_params(d), tp)
        embedding = ceil_div(self.vocab_size * d, tp)
        if first == 0:
            total += embedding
        if last == self.n_layers:
            total += self.norm_width + (embedding if not self.tie_embeddings or pipeline else 0)
        return total
