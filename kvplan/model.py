"""Model descriptions: a stack of layers, each with attention (optionally windowed) and a feed-forward."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

from .dtypes import WeightsFormat
from .kinds import Attention, keys_attended_sum
from .units import ceil_div

INDEX_BYTES = 8  # torch's int64: the expert ids topk returns, the rows torch.where gives


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
    moe_intermediate), and a d_model x n_experts router. Layers in `absent_layer_ids` have no feed-forward
    (Nemotron-H's mixer-only blocks). With `gated` off every MLP is two matrices, up and down, with no gate
    (Nemotron-H's squared ReLU).
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
    absent_layer_ids: tuple[int, ...] = ()
    gated: bool = True

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def matrices(self) -> int:
        """Weight matrices of one MLP: gate, up and down, or up and down."""
        return 3 if self.gated else 2

    def has_layer(self, index: int) -> bool:
        """Whether layer `index` has a feed-forward."""
        return index not in self.absent_layer_ids

    def layer_count(self, first: int, last: int) -> int:
        """Layers among first..last-1 that have a feed-forward."""
        return (last - first) - sum(first <= i < last for i in self.absent_layer_ids)

    def is_moe_layer(self, index: int) -> bool:
        """Whether layer `index` (0-based) routes to experts."""
        return (self.is_moe and self.n_dense_layers is not None and index >= self.n_dense_layers
                and (index + 1) % self.moe_step == 0 and index not in self.dense_layer_ids
                and self.has_layer(index))

    def moe_layer_count(self, first: int, last: int) -> int:
        """MoE layers among layers first..last-1."""
        if not self.is_moe or self.n_dense_layers is None:
            return 0
        if self.moe_step == 1 and not self.dense_layer_ids and not self.absent_layer_ids:
            return max(0, last - max(first, self.n_dense_layers))
        return sum(self.is_moe_layer(i) for i in range(first, last))

    def dense_layer_count(self, n_layers: int, first: int = 0) -> int:
        """Dense feed-forward layers among layers first..n_layers-1."""
        return self.layer_count(first, n_layers) - self.moe_layer_count(first, n_layers)

    def expert_params(self, d_model: int) -> int:
        return self.matrices * d_model * self.moe_intermediate

    def shared_width(self) -> int:
        """Intermediate width of the shared experts together."""
        return self.shared_intermediate or self.n_shared_experts * self.moe_intermediate

    def dense_params(self, d_model: int) -> int:
        return self.matrices * d_model * self.intermediate

    def shared_params(self, d_model: int) -> int:
        return self.matrices * d_model * self.shared_width()

    def moe_layer_params(self, d_model: int) -> int:
        """All weights of one MoE layer: routed and shared experts and the router."""
        return self.n_experts * self.expert_params(d_model) + self.shared_params(d_model) + d_model * self.n_experts

    def moe_layer_active_params(self, d_model: int) -> int:
        """Weights one token multiplies through in an MoE layer."""
        return (self.n_active_experts * self.expert_params(d_model) + self.shared_params(d_model)
                + d_model * self.n_experts)

    def activation_elements(self, d_model: int) -> int:
        """Per-token elements a fused kernel reads and writes in the gated activation: gate, up and their product
        (ungated: up and its activation) over every active expert's width."""
        per_width = 3 if self.gated else 2
        if self.is_moe:
            width = self.n_active_experts * self.moe_intermediate + self.shared_width()
            return per_width * max(self.intermediate, width)
        return per_width * self.intermediate

    def prefill_peak_bytes(self, d_model: int, n_layers: int, tp: int, activation_bytes: float,
                           fused_moe: bool = True) -> float:
        """Bytes per token in flight that the feed-forward holds at its prefill peak on one of `tp` GPUs, besides
        the residual stream and the normed input.

        fused_moe (what serving engines run, e.g. vLLM's fused_moe): every active expert's gate, up and product
        at once, activation_elements / tp. Otherwise as kvplan.models runs it, the larger of a dense and an MoE
        layer's where the first `n_layers` have each:

        Dense: gate (after its activation), up and their product (ungated: up and its activation), each
        intermediate / tp wide. MoE holds each token's k renormalised weights and int64 expert ids throughout and
        peaks in one of three steps: the router's logits and probabilities (2 E); the shared experts' three (two)
        intermediates; or the loop that runs the routed experts one at a time, holding the output accumulator
        (d_model) and, at an expert, its tokens' gathered input (d_model), int64 row and slot indices and three
        (two) intermediates moe_intermediate / tp wide. Uniform routing gives each expert k / E of the tokens; a
        busier expert holds more, by its excess tokens times its share."""
        if fused_moe or not self.is_moe:
            return ceil_div(self.activation_elements(d_model), tp) * activation_bytes
        per_width = 3 if self.gated else 2
        dense = (per_width * ceil_div(self.intermediate, tp) * activation_bytes
                 if self.dense_layer_count(n_layers) else 0.0)
        if not self.moe_layer_count(0, n_layers):
            return dense
        k, experts = self.n_active_experts, self.n_experts
        choices = k * (activation_bytes + INDEX_BYTES)
        router = 2 * experts * activation_bytes
        shared = per_width * ceil_div(self.shared_width(), tp) * activation_bytes
        expert = (k / experts) * ((d_model + per_width * ceil_div(self.moe_intermediate, tp)) * activation_bytes
                                  + 2 * INDEX_BYTES)
        return max(dense, choices + max(router, shared, d_model * activation_bytes + expert))


ROPE_CONVENTIONS = ("hf", "t6")
BLOCK_NORMS = ("rmsnorm", "rmsnorm-unweighted")
# What mixes along the sequence in one layer: the attention kind, the recurrent kind, both side by side on the
# same normed input with their outputs summed (Falcon-H1), or nothing (a feed-forward-only block, Nemotron-H).
MIXERS = ("attention", "recurrent", "parallel", "none")


def hybrid_layers(n_layers: int, attention_every: int) -> tuple[str, ...]:
    """Model.layer_mixers with the recurrent kind on every layer but every `attention_every`-th (0: none kept), as
    Qwen3-Next's full_attention_interval places its attention layers."""
    return tuple("attention" if attention_every and (i + 1) % attention_every == 0 else "recurrent"
                 for i in range(n_layers))


def _count(ids: tuple[int, ...], first: int, last: int) -> int:
    """How many of the sorted layer indexes `ids` fall in first..last-1."""
    return bisect_left(ids, last) - bisect_left(ids, first)


@dataclass(frozen=True)
class Model:
    """One model: per layer a sequence mixer (attention with its window, or a recurrent kind) and a feed-forward.

    `layer_mixers[i]` is one of MIXERS (empty: attention on every layer, as it is stored then); `recurrent` is the
    recurrent kind (kinds.recurrent: linear attention, state-space) of the layers marked "recurrent" or
    "parallel", whose per-sequence state does not grow with the context. `layer_windows[i]` (attention layers)
    is None for a global (full-context) layer, else the window in tokens. With `chunked`, a windowed layer attends
    within fixed chunks of that many tokens instead of a sliding window (Llama 4's chunked attention: position p
    attends positions from p - p mod chunk to p); its cache never holds more than one chunk.
    `rope_convention`: which way RoPE turns each pair (x1, x2) of a vector's halves by angle t: "hf" gives
    (x1 cos t - x2 sin t, x2 cos t + x1 sin t) (transformers' rotate_half: Llama, Qwen, DeepSeek); "t6" the
    opposite turn, (x1 cos t + x2 sin t, x2 cos t - x1 sin t) (tensorgi/T6 model/T6.py apply_rotary_emb).
    `block_norm`: the norm before each mixer and feed-forward and before the LM head: "rmsnorm" with a
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
    recurrent: Attention | None = None
    layer_mixers: tuple[str, ...] = ()
    weights: WeightsFormat | None = None  # how the checkpoint stores its weights (None: not stated; bf16 assumed)
    window_groups: tuple[tuple[int | None, int], ...] = field(init=False, repr=False, compare=False)
    attention_layer_ids: tuple[int, ...] = field(init=False, repr=False, compare=False)
    recurrent_layer_ids: tuple[int, ...] = field(init=False, repr=False, compare=False)
    mixer_layer_ids: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rope_convention not in ROPE_CONVENTIONS:
            raise ValueError(f"{self.name}: rope_convention {self.rope_convention!r} is not one of {ROPE_CONVENTIONS}")
        if self.block_norm not in BLOCK_NORMS:
            raise ValueError(f"{self.name}: block_norm {self.block_norm!r} is not one of {BLOCK_NORMS}")
        windows = self.layer_windows or (None,) * self.n_layers
        if len(windows) != self.n_layers:
            raise ValueError(f"{self.name}: {len(windows)} layer windows for {self.n_layers} layers")
        object.__setattr__(self, "layer_windows", tuple(windows))
        self._place_mixers()
        # Formulas loop over distinct windows, not layers: keeps estimates O(1) in depth.
        attended = Counter(windows[i] for i in self.attention_layer_ids)
        object.__setattr__(self, "window_groups", tuple(sorted(attended.items(), key=lambda kv: kv[0] or 0)))

    def _place_mixers(self) -> None:
        mixers = tuple(self.layer_mixers) or ("attention",) * self.n_layers
        if len(mixers) != self.n_layers or not set(mixers) <= set(MIXERS):
            raise ValueError(f"{self.name}: layer_mixers must give one of {MIXERS} for each of {self.n_layers} layers")
        if self.attention.recurrent:
            raise ValueError(f"{self.name}: {self.attention.label} is recurrent: pass it as `recurrent`")
        uses_recurrent = {"recurrent", "parallel"} & set(mixers)
        if uses_recurrent and not (self.recurrent and self.recurrent.recurrent):
            raise ValueError(f"{self.name}: layers marked {' and '.join(sorted(uses_recurrent))} need a recurrent kind")
        # Stored empty when every layer is attention, so that replace(model, n_layers=...) keeps meaning that.
        object.__setattr__(self, "layer_mixers", () if set(mixers) == {"attention"} else mixers)
        for name, kinds in (("attention_layer_ids", ("attention", "parallel")),
                            ("recurrent_layer_ids", ("recurrent", "parallel")),
                            ("mixer_layer_ids", ("attention", "recurrent", "parallel"))):
            object.__setattr__(self, name, tuple(i for i, mixer in enumerate(mixers) if mixer in kinds))

    def layer_mixer(self, index: int) -> str:
        """Layer `index`'s entry of MIXERS."""
        return self.layer_mixers[index] if self.layer_mixers else "attention"

    @property
    def is_hybrid(self) -> bool:
        """Whether any layer mixes through the recurrent kind."""
        return bool(self.recurrent_layer_ids)

    @property
    def kind_label(self) -> str:
        """The model's attention as a reader names it, e.g. 'gqa', 'gqa+window(4096)', 'gqa local/global', and for
        hybrids 'gdn(heads=32) x36 + gqa(kv_heads=2) x12' (layers of each) or 'gqa || mamba2(...)' (side by
        side in every layer)."""
        base = self._attention_label()
        if not self.is_hybrid:
            return base
        n_attention, n_recurrent = len(self.attention_layer_ids), len(self.recurrent_layer_ids)
        if set(self.layer_mixers) == {"parallel"}:
            return f"{base} || {self.recurrent.label}"
        if not n_attention:
            return self.recurrent.label
        return f"{self.recurrent.label} x{n_recurrent} + {base} x{n_attention}"

    def _attention_label(self) -> str:
        base = self.attention.label
        windows = {self.layer_windows[i] for i in self.attention_layer_ids}
        if windows <= {None}:
            return base
        if self.chunked:
            spans = ','.join(str(w) for w in sorted(w for w in windows if w is not None))
            return f"{base} chunked({spans})" + ("/global" if None in windows else "")
        if None in windows:
            local = sorted(w for w in windows if w is not None)
            return f"{base} local({','.join(map(str, local))})/global"
        return f"{base}+window({','.join(str(w) for w in sorted(windows))})"

    def mixers(self) -> list[tuple[Attention, int | None]]:
        """Every layer's sequence mixers in order, each with its window (None for a recurrent layer): a parallel
        layer's attention, then its recurrent kind."""
        out = []
        for i in range(self.n_layers):
            mixer = self.layer_mixer(i)
            if mixer in ("attention", "parallel"):
                out.append((self.attention, self.layer_windows[i]))
            if mixer in ("recurrent", "parallel"):
                out.append((self.recurrent, None))
        return out

    def check_shardable(self, tp: int) -> str | None:
        """Why the model's mixers cannot run split over `tp` GPUs, or None."""
        reason = self.attention.check_shardable(tp) if self.attention_layer_ids else None
        if reason is None and self.is_hybrid:
            reason = self.recurrent.check_shardable(tp)
        return reason

    def sublayer_count(self, first: int = 0, last: int | None = None) -> int:
        """Mixers (a parallel pair counts once) and feed-forwards among layers first..last-1: each has a norm
        before it and a residual add after it."""
        last = self.n_layers if last is None else last
        return _count(self.mixer_layer_ids, first, last) + self.ffn.layer_count(first, last)

    def mixer_all_reduces(self, tp: int) -> tuple[tuple[int, int], ...]:
        """(layers, elements per token) of the all-reduces inside the mixers when they split over `tp` GPUs
        (AttentionKind.mixer_all_reduce_elements), for each kind that has one."""
        pairs = [(len(self.attention_layer_ids), self.attention.mixer_all_reduce_elements(tp))]
        if self.is_hybrid:
            pairs.append((len(self.recurrent_layer_ids), self.recurrent.mixer_all_reduce_elements(tp)))
        return tuple((layers, elements) for layers, elements in pairs if layers and elements)

    def mixer_params(self, first: int = 0, last: int | None = None, tp: int = 1) -> int:
        """Attention and recurrent weights of layers first..last-1 on one of `tp` GPUs."""
        last = self.n_layers if last is None else last
        total = _count(self.attention_layer_ids, first, last) * self.attention.params(self.d_model, tp)
        if self.is_hybrid:
            total += _count(self.recurrent_layer_ids, first, last) * self.recurrent.params(self.d_model, tp)
        return total

    def attention_params(self) -> int:
        """Weights of every layer's mixers, attention and recurrent."""
        return self.mixer_params()

    def ffn_params(self) -> int:
        moe_layers = self.ffn.moe_layer_count(0, self.n_layers)
        dense_layers = self.ffn.dense_layer_count(self.n_layers)
        return dense_layers * self.ffn.dense_params(self.d_model) + moe_layers * self.ffn.moe_layer_params(self.d_model)

    def embedding_params(self) -> int:
        return self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)

    @property
    def norm_width(self) -> int:
        """Weights of one block norm: d_model, or none for unweighted norms."""
        return self.d_model if self.block_norm == "rmsnorm" else 0

    def norm_params(self) -> int:
        return (self.sublayer_count() + 1) * self.norm_width

    def total_params(self) -> int:
        return self.embedding_params() + self.attention_params() + self.ffn_params() + self.norm_params()

    def active_linear_params_per_token(self) -> int:
        """Weights one token multiplies through in the layers (embedding lookup and LM head excluded)."""
        d, ffn = self.d_model, self.ffn
        total = ffn.dense_layer_count(self.n_layers) * ffn.dense_params(d)
        total += ffn.moe_layer_count(0, self.n_layers) * ffn.moe_layer_active_params(d)
        total += len(self.attention_layer_ids) * self.attention.linear_params(d)
        if self.is_hybrid:
            total += len(self.recurrent_layer_ids) * self.recurrent.linear_params(d)
        return total

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
        """Weights one GPU holds for layers first..last-1 under `tp`-way tensor parallelism (weight_groups)."""
        return sum(self.weight_groups(first, last, tp, pipeline, ep).values())

    def weight_groups(self, first: int = 0, last: int | None = None, tp: int = 1, pipeline: bool = False,
                      ep: int = 1) -> dict[str, int]:
        """Weights one GPU holds for layers first..last-1 under `tp`-way tensor parallelism, per group, each named
        by the Hugging Face module path it sits under (a quantized checkpoint stores groups differently).

        Mixers split as their kinds say (AttentionKind.params); feed-forwards, embeddings and the LM head
        split evenly (vocabulary-parallel); norms replicate. With `ep` > 1 (expert parallelism) each GPU holds
        ceil(n_experts / ep) whole routed experts, the shared experts split over tp and the router whole. The
        stage holding layer 0 holds the input embedding, the one holding the last layer the final norm and the
        LM head (with `pipeline`, a tied LM head is a second copy there). The defaults give the whole model.
        """
        d, ffn = self.d_model, self.ffn
        last = self.n_layers if last is None else last
        moe_here = ffn.moe_layer_count(first, last)
        router = d * ffn.n_experts
        routed = (ceil_div(ffn.n_experts, ep) * ffn.expert_params(d) if ep > 1
                  else ceil_div(ffn.n_experts * ffn.expert_params(d), tp))
        embedding = ceil_div(self.vocab_size * d, tp)
        is_last = last == self.n_layers
        return {
            "self_attn": self.mixer_params(first, last, tp),
            "mlp": ffn.dense_layer_count(last, first=first) * ceil_div(ffn.dense_params(d), tp),
            "mlp.experts": moe_here * routed,
            "mlp.shared_expert": moe_here * ceil_div(ffn.shared_params(d), tp),
            "mlp.gate": moe_here * (router if ep > 1 else ceil_div(router, tp)),
            "embed_tokens": embedding if first == 0 else 0,
            "lm_head": embedding if is_last and (not self.tie_embeddings or pipeline) else 0,
            "norm": (self.sublayer_count(first, last) + is_last) * self.norm_width,
        }
