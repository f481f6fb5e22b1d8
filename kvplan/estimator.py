"""The estimate: memory, FLOPs, roofline latency and cost of one model on one deployment.

Every figure kvplan prints comes from `Estimator`; budget, recommend, cost and profile reuse it.

Conventions (units in names: *_bytes are bytes, *_seconds seconds, *_flops FLOPs):
- `context` L: tokens each sequence holds in its cache. Prefill processes a prompt of `prompt` tokens
  (default L); the decode step is the one that writes the L-th token (0-based position L-1), attending
  min(L, cap) keys, over a cache holding L tokens once it is written.
- `batch`: sequences in flight in the whole deployment; each of the dp attention ranks holds and runs
  ceil(batch / dp) of them (kvplan.parallel describes tp, pp, dp and ep).
- Weights are counted in bytes as the checkpoint stores each weight group (Model.weights: quantization_config or
  safetensors headers; dtypes.WeightsFormat), or all in the format --weight-dtype names (bf16 if neither);
  fp8 weights run fp8 GEMMs, weight-only formats bf16 ones (dtypes.gemm_dtype). The row says which
  (weights_format).
- Memory on one GPU = its pipeline stage's weights (attention split as each kind splits under tensor
  parallelism, routed experts over ep, Model.weight_groups) + its share of the cache + its prefill
  activation peak + reserve. Whole-deployment columns sum over GPUs, counting replicated copies.
- Linear FLOPs count every weight a token multiplies through (2 per weight); the LM head runs on the last
  prompt token in prefill (serving engines only need that logit) and on every decoded token.
- Roofline: time = max(FLOPs / (G * effective FLOP/s), bytes / (G * effective bandwidth)) + communication,
  G = tp x the dp ranks that have a sequence (work spreads evenly over them). Communication (kvplan.parallel):
  tensor parallelism all-reduces the hidden state after each mixer and feed-forward (twice per layer), and
  inside a mixer whatever its kind sums over the split (AttentionKind.mixer_all_reduce_elements: Mamba's x_proj), expert
  parallelism dispatches (fp8) and combines (bf16) each token's top-k expert copies per MoE layer, pipeline
  stages send activations on. With `overlap` communication hides behind compute (time = max of the two), as
  two micro-batches do in DeepSeek's serving; the no-overlap time is the sum. Pipeline stages run one after
  another for a batch (no micro-batching), so pp adds memory, not speed.
- Decode reads all dense weights, the MoE experts that the batch's tokens select (uniform routing: of E
  experts each token picking k, E (1 - (1 - k/E)^tokens) are touched), and every cached byte (DSA: every
  indexer key, but only the top-k latents).
- A recurrent layer (hybrids: Model.recurrent) holds a fixed state per sequence whatever the context, counted
  in the cache columns; prefill runs its chunked form, and each decode step reads the whole state and writes
  it back (kinds.recurrent).
- A chunked layer (Model.chunked, Llama 4) holds at most one chunk of cache per sequence and a query at
  position p attends p mod chunk + 1 keys; decode reads every slot the layer holds.
- Parameters: `params` counts every weight; `active_params` every weight but the routed experts a token does
  not select, embedding table and LM head included (Model.active_params).
- Cost: $/GPU-hour x GPUs x time / tokens.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from . import parallel
from .kinds import keys_attended_sum
from .dtypes import FORMATS, StorageFormat, served_weights
from .hardware import GPU
from .model import Model, chunked_keys_sum
from .roofline import OPERATIONS, SCORE_BYTES
from .units import InputError, ceil_div, maximum, minimum, whole

LOGIT_BYTES = 4  # logits are computed in fp32
GEMM_CALLS_PER_LAYER = 4  # query/key/value, output, gate/up, down projections
MOE_CALLS_PER_LAYER = 2  # grouped gate/up and down over the selected experts
ELEMENTWISE_CALLS_PER_LAYER = 4  # two fused residual-add + norms, the gated activation, RoPE
ROLES = ("both", "prefill", "decode")
# Memory and prefill as vLLM decides them by default:
VLLM_PREFILL_CHUNK = 8192  # max_num_batched_tokens with chunked prefill: tokens per step across the batch
VLLM_MEMORY_UTILIZATION = 0.9  # --gpu-memory-utilization: the fraction of each GPU's memory it fills


@dataclass(frozen=True)
class Deployment:
    """Where and how a model is served."""

    gpu: GPU
    tp: int = 1  # tensor-parallel GPUs
    pp: int = 1  # pipeline stages
    dp: int = 1  # data-parallel attention ranks
    ep: int = 1  # expert-parallel GPUs (1: experts split like the feed-forward under tp)
    kv_format: StorageFormat = FORMATS["bf16"]
    weight_format: StorageFormat | None = None  # None: as the checkpoint stores them (Model.weights), else bf16
    activation_format: StorageFormat = FORMATS["bf16"]
    block_size: int = 0  # paged KV cache block in tokens; 0 = contiguous
    reserve_bytes: int | None = None  # per GPU for the runtime; None: parallel.runtime_reserve_bytes (CUDA context, NCCL)
    flash: bool = True  # False: attention materialises the score matrix (quadratic in context)
    prefill_chunk: int = VLLM_PREFILL_CHUNK  # tokens per prefill forward across the batch; 0 = whole prompts
    # True: a fused MoE kernel holds every active expert's intermediates at once (vLLM's fused_moe); False: the
    # routed experts run one at a time, as kvplan.models runs them (FeedForward.prefill_peak_bytes).
    fused_moe: bool = True
    gpus_per_node: int = 0  # GPUs on one link domain; 0 = the GPU's own figure
    overlap: bool = False  # communication hidden behind compute (two micro-batches)
    role: str = "both"  # "both" prefill and decode, or a disaggregated pool: "prefill" or "decode" only
    memory_utilization: float = VLLM_MEMORY_UTILIZATION  # of each GPU's memory the engine may use

    def __post_init__(self) -> None:
        parallel.check_layout(self.tp, self.pp, self.dp, self.ep)
        if self.role not in ROLES:
            raise InputError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if not 0 < self.memory_utilization <= 1:
            raise InputError(f"GPU memory utilization is a fraction in (0, 1], not {self.memory_utilization}")
        if self.reserve_bytes is None:
            object.__setattr__(self, "reserve_bytes", parallel.runtime_reserve_bytes(self.gpus))

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def usable_memory_bytes(self) -> int:
        """Bytes of each GPU the engine may fill: memory x memory_utilization, as vLLM budgets it."""
        return int(self.gpu.memory_bytes * self.memory_utilization)

    @property
    def node_gpus(self) -> int:
        return self.gpus_per_node or self.gpu.gpus_per_node


@dataclass
class Estimator:
    """Precomputes what does not depend on batch and context, so each row costs a few dozen operations."""

    model: Model
    deployment: Deployment
    _groups: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        model, dep = self.model, self.deployment
        attention, kv = model.attention, dep.kv_format
        fixed = attention.fixed_cache_bytes()

        def layer_bytes(tp: int) -> int:
            return sum(count * kv.vector_bytes(length) for count, length in attention.cache_vectors(tp)) + fixed

        self.kv_bytes_per_token_layer = layer_bytes(1)
        self.kv_bytes_per_token_layer_per_gpu = layer_bytes(dep.tp)
        self.kv_bytes_per_token = len(model.attention_layer_ids) * self.kv_bytes_per_token_layer
        topk = attention.sparse_topk
        # (window, layers, attention cap) per distinct window of the attention layers; the cap folds a sparse
        # kind's top-k into the window.
        self._groups = tuple((w, n, min(c for c in (w, topk) if c) if (w or topk) else None)
                             for w, n in model.window_groups)
        stage_size = ceil_div(model.n_layers, dep.pp)
        stage_bounds = [(i, min(i + stage_size, model.n_layers)) for i in range(0, model.n_layers, stage_size)]
        self._stage_groups = [tuple(Counter(model.layer_windows[i] for i in model.attention_layer_ids
                                            if first <= i < last).items()) for first, last in stage_bounds]
        self._init_recurrent_state(stage_bounds)

        self.total_params = model.total_params()
        self.active_params = model.active_params()
        # Bytes per weight of each weight group: an explicit weight format, else the checkpoint's.
        fmt = self.weights_format = served_weights(model.weights, dep.weight_format)
        self.weights_bytes = fmt.bytes_of(model.weight_groups())
        stage_bytes = [fmt.bytes_of(model.weight_groups(first, last, dep.tp, pipeline=dep.pp > 1, ep=dep.ep))
                       for first, last in stage_bounds]
        self.weights_bytes_per_gpu = max(stage_bytes)
        # What all GPUs hold together: more than weights_bytes where tp, dp or ep replicate weights.
        self.weights_bytes_all_gpus = dep.tp * dep.dp * sum(stage_bytes)
        self.linear_flops_per_token = 2 * model.active_linear_params_per_token()
        self.lm_head_flops = 2 * model.lm_head_params()
        self.pair_flops = {p: attention.pair_flops(p) for p in ("prefill", "decode")}
        self.token_flops = {p: attention.token_flops(p) for p in ("prefill", "decode")}
        self.indexer_pair_flops = attention.indexer_pair_flops()
        ffn, d = model.ffn, model.d_model
        moe_layers = ffn.moe_layer_count(0, model.n_layers)
        self._moe_layers = moe_layers
        self._expert_bytes = ffn.expert_params(d) * fmt.bytes_per_weight("mlp.experts") if ffn.is_moe else 0
        # Copies of the routed experts the deployment holds: one per dp rank's tp group, or per ep group.
        self._expert_copies = dep.dp if dep.ep == 1 else dep.tp * dep.dp // dep.ep
        self._routed_expert_bytes = self._expert_copies * moe_layers * ffn.n_experts * self._expert_bytes
        self._act_bytes = dep.activation_format.bytes_per_element
        tp = dep.tp
        # Attention, recurrent and feed-forward intermediates are never live together: prefill peaks in one phase
        # or another, each on top of the residual stream and the normed input (2 d per token); a parallel layer
        # adds its attention output to the residual stream before its recurrent mixer runs.
        self._has_attention = bool(model.attention_layer_ids)
        self._attention_phase_per_token = self._act_bytes * (
            2 * d + attention.prefill_buffer_elements(d) + attention.activation_elements(tp)
        ) if self._has_attention else 0
        self._recurrent_phase_per_token = self._act_bytes * (
            2 * d + model.recurrent.activation_elements(tp)) if model.is_hybrid else 0
        self._ffn_phase_per_token = (self._act_bytes * 2 * d
                                     + ffn.prefill_peak_bytes(d, model.n_layers, tp, self._act_bytes,
                                                              dep.fused_moe))
        self._sparse = attention.sparse_topk is not None  # decode reads part of the cache, not all of it
        self._chunked = model.chunked
        self._kind_label = model.kind_label  # per row it would rebuild a set over the layers
        self._kv_bytes_per_token_layer_all_gpus = self.kv_bytes_per_token_layer_per_gpu * tp
        self._init_time()

    def _init_recurrent_state(self, stage_bounds: list[tuple[int, int]]) -> None:
        """The fixed per-sequence state of the recurrent layers (kinds.recurrent), whatever the context: bytes of
        one sequence over all layers, per recurrent layer on one GPU, and recurrent layers per pipeline stage."""
        model, dep = self.model, self.deployment
        recurrent, layers = model.recurrent, model.recurrent_layer_ids
        compute = dep.activation_format
        self.state_bytes_per_sequence = len(layers) * recurrent.state_bytes(compute) if layers else 0
        self._state_bytes_per_layer_per_gpu = recurrent.state_bytes(compute, dep.tp) if layers else 0
        self._state_bytes_all_gpus = len(layers) * self._state_bytes_per_layer_per_gpu * dep.tp  # one sequence
        self._stage_recurrent = [sum(first <= i < last for i in layers) for first, last in stage_bounds]
        self._recurrent_decode_flops = len(layers) * recurrent.decode_flops() if layers else 0

    # --- memory -------------------------------------------------------------------------------------
    def cached_tokens(self, context: int, window: int | None) -> int:
        """Token slots one sequence holds in a layer: min(context, window), rounded up to whole pages."""
        tokens = context if window is None else min(context, window)
        block = self.deployment.block_size
        if not block:
            return tokens
        blocks = ceil_div(tokens, block)
        if window is not None and context > window:
            # A window straddles page boundaries: one more page than it spans, never more than the context.
            blocks = min(ceil_div(window, block) + 1, ceil_div(context, block))
        return blocks * block

    def kv_cache_bytes(self, batch: int, context: int) -> int:
        """Whole cache across all GPUs (replicas included when tp replicates), recurrent layers' state included."""
        if self.deployment.block_size:
            tokens = sum(n * self.cached_tokens(context, w) for w, n, _ in self._groups)
        else:  # contiguous: the same sum without a call per group (the 100k-row API path)
            tokens = sum(n * (context if w is None or context < w else w) for w, n, _ in self._groups)
        return batch * (self._kv_bytes_per_token_layer_all_gpus * tokens + self._state_bytes_all_gpus)

    def kv_cache_bytes_per_gpu(self, batch: int, context: int) -> int:
        """Cache on the most loaded GPU (its dp rank's sequences, the largest pipeline stage's share, one
        tensor-parallel slice), recurrent layers' state included."""
        sequences = parallel.sequences_per_rank(batch, self.deployment.dp)
        return sequences * max(
            self.kv_bytes_per_token_layer_per_gpu * sum(n * self.cached_tokens(context, w) for w, n in stage)
            + self._state_bytes_per_layer_per_gpu * recurrent
            for stage, recurrent in zip(self._stage_groups, self._stage_recurrent))

    def activation_bytes_per_gpu(self, batch: int, prompt: int, flash: bool | None = None, cached: int = 0) -> int:
        """Peak transient bytes of prefill on one GPU (the cache excluded); the last `cached` tokens of each
        prompt come from a prefix cache and are not recomputed. A decode-only pool (role "decode") holds one
        decode step's: one token per sequence, attending through a flash decode kernel.

        The larger of two phases, each per token in flight on top of the residual stream and normed input
        (2 d): the attention block's intermediates, plus with naive attention one layer's score and probability
        matrices (2 x heads x queries in flight x prompt) or a kind's own scratch (prefill_scratch_bytes); or the
        feed-forward's (FeedForward.prefill_peak_bytes: gate, up and product; a fused MoE's over every active
        expert, or kvplan.models' experts one at a time).
        Plus the last tokens' fp32 logits. Tokens in flight: the prompts of the GPU's dp rank, or at most
        `prefill_chunk` with chunked prefill.
        """
        flash = self.deployment.flash if flash is None else flash
        batch = parallel.sequences_per_rank(batch, self.deployment.dp)
        if self.deployment.role == "decode":
            prompt, cached, flash = 1, 0, True
        in_flight = batch * (prompt - cached)
        if self.deployment.prefill_chunk:
            in_flight = minimum(in_flight, self.deployment.prefill_chunk)
        attention_phase = in_flight * self._attention_phase_per_token
        if self._has_attention:
            attention_phase += self.model.attention.prefill_scratch_bytes(batch, prompt, in_flight, self._act_bytes,
                                                                          self.deployment.tp, flash)
        recurrent_phase = in_flight * self._recurrent_phase_per_token
        if self.model.is_hybrid:
            recurrent_phase += self.model.recurrent.prefill_scratch_bytes(batch, prompt, in_flight, self._act_bytes,
                                                                          self.deployment.tp, flash)
        ffn_phase = in_flight * self._ffn_phase_per_token
        logits = batch * ceil_div(self.model.vocab_size, self.deployment.tp) * LOGIT_BYTES
        return whole(maximum(attention_phase, recurrent_phase, ffn_phase) + logits)

    # --- FLOPs --------------------------------------------------------------------------------------
    def prefill_attention_flops(self, batch: int, prompt: int, start: int = 0) -> int:
        """Attention FLOPs (pairs, per-token factor products, a sparse kind's indexer) for prompt tokens after
        `start` cached, and the recurrent layers' chunked prefill of those tokens onto the held state.

        An encoder attends both ways: every key in a global layer, and the window//2 keys on either side of
        itself in a local one (ModernBERT's 128-token window: 64 each side); it has no cache to start from.
        """
        if self.model.is_encoder:
            if start:
                raise InputError(f"{self.model.name} is an encoder: it encodes whole sequences, not chunks")
            pairs = sum(layers * (prompt * prompt if window is None else
                                  prompt + 2 * keys_attended_sum(prompt - 1, window // 2))
                        for window, layers, _ in self._groups)
            return batch * (self.pair_flops["prefill"] * pairs + self.model.n_layers * self.token_flops["prefill"] * prompt)
        total = 0
        for window, layers, cap in self._groups:
            pairs = self._pairs(prompt, window, cap, start)
            per_layer = self.pair_flops["prefill"] * pairs + self.token_flops["prefill"] * prompt
            if self.indexer_pair_flops:  # the indexer scores every key the query sees
                per_layer += self.indexer_pair_flops * self._pairs(prompt, window, window, start)
            total += layers * per_layer
        if self.model.is_hybrid:
            total += len(self.model.recurrent_layer_ids) * self.model.recurrent.prefill_flops(prompt)
        return batch * total

    def _pairs(self, n_queries: int, window: int | None, cap: int | None, start: int) -> int:
        """(query, key) pairs of queries at positions start..start+n_queries-1 in a layer of `window`: a chunked
        layer attends within its chunk, min(p mod chunk + 1, cap) keys (Model.chunked), any other min(p + 1, cap)."""
        if self._chunked and window is not None:
            return chunked_keys_sum(start + n_queries, window, cap) - chunked_keys_sum(start, window, cap)
        return keys_attended_sum(n_queries, cap, start)

    def _decode_keys(self, position: int, window: int | None, cap: int | None) -> int:
        """Keys the token at 0-based `position` attends in a layer of `window`: min(position + 1, cap), or in a
        chunked layer min(position mod chunk + 1, cap)."""
        seen = position % window + 1 if self._chunked and window is not None else position + 1
        return seen if cap is None else min(seen, cap)

    def prefill_linear_flops(self, batch: int, prompt: int) -> int:
        return batch * (prompt * self.linear_flops_per_token + self.lm_head_flops)

    def decode_attention_flops(self, position: int) -> int:
        """Attention FLOPs of one token at 0-based `position` (the keys it attends: _decode_keys), and the
        recurrent layers' step on their state (the same at every position)."""
        total = self._recurrent_decode_flops
        for window, layers, cap in self._groups:
            keys = self._decode_keys(position, window, cap)
            per_layer = self.pair_flops["decode"] * keys + self.token_flops["decode"]
            if self.indexer_pair_flops:  # the indexer scores every key the token sees
                per_layer += self.indexer_pair_flops * self._decode_keys(position, window, window)
            total += layers * per_layer
        return total

    def decode_flops_per_token(self, position: int) -> int:
        return self.linear_flops_per_token + self.lm_head_flops + self.decode_attention_flops(position)

    # --- time and cost ------------------------------------------------------------------------------
    def _init_time(self) -> None:
        """What the per-operation roofline (kvplan.roofline) needs that does not depend on batch and context."""
        model, dep, gpu = self.model, self.deployment, self.deployment.gpu
        k = self.kernels = gpu.kernel_figures
        fp8 = self.weights_format.gemm == "fp8" and gpu.fp8_flops > 0  # fp8 x fp8 products (dtypes.gemm_dtype)
        self._gemm = (k.gemm_fp8, gpu.fp8_flops) if fp8 else (k.gemm, gpu.bf16_flops)
        ffn, d = model.ffn, model.d_model
        expert_width = ffn.moe_intermediate if dep.ep > 1 else ceil_div(ffn.moe_intermediate, dep.tp)
        self._moe_gemm = (k.moe_gemm_for(fp8, max(expert_width, 1)), gpu.fp8_flops if fp8 else gpu.bf16_flops)
        self._routed_flops_per_token = (2 * self._moe_layers * ffn.n_active_experts * ffn.expert_params(d)
                                        if ffn.is_moe else 0)
        self._lm_head_bytes = model.lm_head_params() * self.weights_format.bytes_per_weight(
            "embed_tokens" if model.tie_embeddings else "lm_head")
        # Norms and residual adds (2 each per layer; read and write d, read 2d and write d) on the whole hidden
        # state of every tensor-parallel rank, and the gated activation (read gate and up, write their product)
        # on its 1/tp slice.
        self._elementwise_bytes_per_token = model.n_layers * self._act_bytes * (
            10 * d + ceil_div(ffn.activation_elements(d), dep.tp))
        attention = model.attention
        self._head_dim = attention.pair_flops("prefill") / (4 * attention.n_heads)
        # Which kernels price the kind's attention (AttentionKind.roofline_block, latent_prefill_curve), and the
        # keys an indexer reads each decode step.
        self._latent = attention.roofline_block == "latent"
        self._indexer_key_bytes = attention.indexer_key_bytes()
        self._mla = attention.latent_prefill_curve
        self._latent_row_bytes = self.kv_bytes_per_token_layer - attention.fixed_cache_bytes()

    def _link(self, group: int) -> tuple[float, float]:
        """(bytes/s, seconds per collective) of a group's slowest link at the communication kernel's figures."""
        gpu, comm = self.deployment.gpu, self.kernels.communication
        bytes_per_s, latency = parallel.link_for(group, self.deployment.node_gpus, gpu.link_bytes_per_s,
                                                 gpu.network_bytes_per_s)
        if group <= self.deployment.node_gpus and comm.call_seconds:
            latency = comm.call_seconds
        return bytes_per_s * comm.bandwidth, latency

    def communication_seconds(self, sequences: int, tokens_per_sequence: int) -> float:
        """Seconds of communication in one forward of `tokens_per_sequence` tokens of each sequence
        (kvplan.parallel): tp all-reduces, ep dispatch and combine, pp sends, on the most loaded GPU, at the
        communication kernel's fraction of each link and its time per collective."""
        dep, model = self.deployment, self.model
        tokens_per_rank = parallel.sequences_per_rank(sequences, dep.dp) * tokens_per_sequence
        message = tokens_per_rank * model.d_model * self._act_bytes
        seconds = 0.0
        if dep.tp > 1:
            seconds += model.sublayer_count() * parallel.all_reduce_seconds(message, dep.tp, *self._link(dep.tp))
            for layers, elements in model.mixer_all_reduces(dep.tp):  # inside the mixers (Mamba's x_proj)
                seconds += layers * parallel.all_reduce_seconds(tokens_per_rank * elements * self._act_bytes, dep.tp,
                                                                *self._link(dep.tp))
        if dep.ep > 1 and self._moe_layers:
            # Each token leaves from one GPU of its tp group, to the GPUs of its top-k experts, and comes back.
            copies = ceil_div(tokens_per_rank, dep.tp) * model.ffn.n_active_experts * model.d_model
            per_layer = sum(self.all_to_all_seconds(copies * element_bytes)
                            for element_bytes in (parallel.DISPATCH_BYTES_PER_ELEMENT, parallel.COMBINE_BYTES_PER_ELEMENT))
            seconds += self._moe_layers * per_layer
        if dep.pp > 1:
            seconds += (dep.pp - 1) * parallel.send_seconds(message, *self._link(dep.gpus))
        return seconds

    def all_to_all_seconds(self, bytes_out_per_gpu):
        """Seconds of one all-to-all over the ep group in which each GPU sends `bytes_out_per_gpu` (kvplan.parallel),
        at the all_to_all kernel's fraction of the GPU link and its time per call (the communication kernel's
        fraction of the network across nodes)."""
        dep, gpu, a2a = self.deployment, self.deployment.gpu, self.kernels.all_to_all
        return parallel.all_to_all_seconds(bytes_out_per_gpu, dep.ep, dep.node_gpus, gpu.link_bytes_per_s * a2a.bandwidth,
                                           gpu.network_bytes_per_s * self.kernels.communication.bandwidth,
                                           a2a.call_seconds or parallel.LINK_LATENCY_SECONDS)

    def _expert_read_bytes(self, tokens: int, sequences: int):
        """The routed experts' share of weights_read_bytes."""
        if not self._moe_layers:
            return 0
        dep, ffn = self.deployment, self.model.ffn
        if dep.ep == 1:
            groups = minimum(dep.dp, sequences)
            tokens_per_group = parallel.sequences_per_rank(sequences, dep.dp) * (tokens // sequences)
        else:
            groups = self._expert_copies
            tokens_per_group = tokens / groups
        touched = parallel.experts_touched(ffn.n_experts, ffn.n_active_experts, tokens_per_group)
        return groups * self._moe_layers * touched * self._expert_bytes

    def weights_read_bytes(self, tokens: int, sequences: int | None = None) -> float:
        """Weight bytes one forward over `tokens` tokens of `sequences` sequences (default: one token each)
        reads on all GPUs together: every dp rank with a sequence reads the weights it holds (replicated weights
        once per GPU), except that MoE layers read only the routed experts their tokens select and an untied
        input embedding only the rows its tokens look up."""
        model, dep = self.model, self.deployment
        sequences = tokens if sequences is None else sequences
        active_ranks = minimum(dep.dp, sequences)
        tokens_per_rank = parallel.sequences_per_rank(sequences, dep.dp) * (tokens // sequences)
        skipped_rows = 0 if model.tie_embeddings else maximum(model.vocab_size - tokens_per_rank, 0)
        held = (self.weights_bytes_all_gpus - self._routed_expert_bytes) * active_ranks / dep.dp
        row_bytes = model.d_model * self.weights_format.bytes_per_weight("embed_tokens")
        read = held - active_ranks * skipped_rows * row_bytes
        return read + self._expert_read_bytes(tokens, sequences)

    def _operations(self, sequences, tokens: int, logit_tokens, attention_flops, attention_bytes,
                    sparse_bytes, indexer_flops, indexer_scores, prefill_keys, indexer_bytes=0) -> dict:
        """Seconds per operation kind (roofline.OPERATIONS) of one forward over `tokens` tokens of each of
        `sequences` sequences on the most loaded GPU. Whole-deployment work spreads over G = tp x the dp ranks
        with a sequence; what tensor parallelism replicates (norms and residual adds, DSA's indexer, top-k and
        latent reads) only over the dp ranks. attention_* exclude the indexer; prefill_keys None: decode;
        indexer_bytes: the indexer keys its kernel reads while it scores them (the larger of the two counts)."""
        dep, gpu, k, n_layers = self.deployment, self.deployment.gpu, self.kernels, self.model.n_layers
        ranks = minimum(dep.dp, sequences)
        gpus = dep.tp * ranks
        all_tokens = sequences * tokens
        tokens_per_rank = parallel.sequences_per_rank(sequences, dep.dp) * tokens
        bf16, bandwidth = gpu.bf16_flops, gpu.bandwidth_bytes_per_s
        experts = self._expert_read_bytes(all_tokens, sequences)
        lm_head = ranks * self._lm_head_bytes
        dense = self.weights_read_bytes(all_tokens, sequences) - experts - lm_head
        gemm, gemm_peak = self._gemm
        moe, moe_peak = self._moe_gemm
        routed = all_tokens * self._routed_flops_per_token
        dense_flops = all_tokens * self.linear_flops_per_token - routed
        if prefill_keys is None:
            decode = k.mla_decode_attention if self._latent else k.decode_attention
            attention = decode.seconds(attention_flops / gpus, attention_bytes / gpus, bf16, bandwidth, n_layers)
            if self._sparse:  # the selected latent rows each query reads, on every tensor-parallel rank
                attention = attention + k.sparse_attention.seconds(0, sparse_bytes / ranks, bf16, bandwidth, 0)
        elif self._sparse:
            # One sparse kernel a layer: its FLOPs over the selected pairs at its own compute fraction, or the
            # selected latent rows it reads (every tensor-parallel rank reads them all), whichever binds.
            attention = k.sparse_attention.seconds(attention_flops / gpus, sparse_bytes / ranks, bf16, bandwidth,
                                                   n_layers)
        else:
            prefill = k.mla_prefill_attention if self._latent else k.prefill_attention
            efficiency = (k.mla_attention_efficiency(prefill_keys) if self._mla
                          else k.attention_efficiency(prefill_keys, self._head_dim))
            attention = n_layers * prefill.call_seconds + maximum(
                attention_flops / (gpus * bf16 * efficiency), attention_bytes / (gpus * bandwidth * prefill.bandwidth))
        # The indexer and the top-k run once a layer in decode, and in prefill once a layer per query chunk of the
        # kind (prefill_query_chunk: the queries one indexer call scores and one top-k call selects for).
        query_chunk = None if prefill_keys is None else self.model.attention.prefill_query_chunk
        indexer_calls = n_layers * (ceil_div(tokens, query_chunk) if query_chunk else 1)
        topk = k.decode_topk if prefill_keys is None else k.topk
        seconds = {
            "gemm": gemm.seconds(dense_flops / gpus, dense / gpus, gemm_peak, bandwidth, GEMM_CALLS_PER_LAYER * n_layers),
            "moe": (moe.seconds(routed / gpus, experts / gpus, moe_peak, bandwidth, MOE_CALLS_PER_LAYER * self._moe_layers)
                    if self._moe_layers else 0.0),
            "attention": attention,
            "indexer": (k.indexer.seconds(indexer_flops / ranks, indexer_bytes / gpus, gpu.fp8_flops or bf16, bandwidth,
                                          indexer_calls)
                        + topk.seconds(0, indexer_scores * SCORE_BYTES / ranks, bf16, bandwidth, indexer_calls)
                        if self.indexer_pair_flops else 0.0),
            "elementwise": k.elementwise.seconds(0, tokens_per_rank * self._elementwise_bytes_per_token, bf16, bandwidth,
                                                 ELEMENTWISE_CALLS_PER_LAYER * n_layers),
            "logits": gemm.seconds(logit_tokens * self.lm_head_flops / gpus,
                                   (lm_head + logit_tokens * self.model.vocab_size * LOGIT_BYTES) / gpus,
                                   gemm_peak, bandwidth),
            "communication": self.communication_seconds(sequences, tokens),
        }
        return seconds

    def _total(self, operations: dict) -> float:
        """Seconds of a forward: its operations one after another, communication added (or, with `overlap`,
        hidden behind the rest: the larger of the two)."""
        compute = sum(v for name, v in operations.items() if name != "communication")
        if self.deployment.overlap:
            return maximum(compute, operations["communication"])
        return compute + operations["communication"]

    def usd_per_second(self) -> float:
        return self.deployment.gpu.usd_per_hour * self.deployment.gpus / 3600

    def decode_cache_read_bytes(self, batch: int, context: int) -> int:
        """Cache bytes one decode step moves, whole deployment: what each attention layer's kind reads of what it
        holds (all of it, except that a sparse kind reads only part; AttentionKind.decode_read_bytes), and each
        recurrent layer's whole state, read and written back."""
        written_state = batch * self._state_bytes_all_gpus  # kv_cache_bytes counts the state once, as read
        if not self._sparse:
            return self.kv_cache_bytes(batch, context) + written_state
        attention, layer_bytes = self.model.attention, self.kv_bytes_per_token_layer_per_gpu
        per_sequence = sum(n * attention.decode_read_bytes(self.cached_tokens(context, w),
                                                           self._decode_keys(context - 1, w, cap), layer_bytes)
                           for w, n, cap in self._groups)
        return batch * self.deployment.tp * per_sequence + 2 * written_state

    def decode_step(self, batch: int, context: int) -> tuple[int, float]:
        """(FLOPs of the whole batch, seconds) for the step that writes each sequence's context-th token."""
        if self.model.is_encoder:
            raise InputError(f"{self.model.name} is an encoder: it has no decode step")
        flops, operations = self._decode_operations(batch, context, self.decode_attention_flops(context - 1),
                                                    self.decode_cache_read_bytes(batch, context))
        return flops, self._total(operations)

    def _indexed_keys(self, n_queries: int, start: int) -> int:
        """Keys a sparse kind's indexer scores for queries at positions start..start+n_queries-1, all layers."""
        return sum(layers * keys_attended_sum(n_queries, window, start) for window, layers, _ in self._groups)

    def _decode_operations(self, batch: int, context: int, attention_flops_per_token: int,
                           cache_read_bytes: int) -> tuple[int, dict]:
        """(FLOPs of the whole batch, seconds per operation) of one decode step."""
        flops = batch * (self.linear_flops_per_token + self.lm_head_flops + attention_flops_per_token)
        scores = batch * self._indexed_keys(1, context - 1) if self.indexer_pair_flops else 0
        indexer_flops = scores * self.indexer_pair_flops
        # The indexer's kernel reads the cached indexer keys (every tensor-parallel rank all of them) as it scores
        # them: those bytes are the indexer's, not attention's.
        keys = scores * self.deployment.tp * self._indexer_key_bytes
        return flops, self._operations(batch, 1, batch, batch * attention_flops_per_token - indexer_flops,
                                       cache_read_bytes - keys, 0, indexer_flops, scores, None, keys)

    def prefill(self, batch: int, tokens: int, start: int = 0) -> tuple[int, float]:
        """(FLOPs, seconds) of prefilling `tokens` more tokens per sequence onto `start` already cached, as
        chunked prefill does; start=0 is the whole prefill of a `tokens`-token prompt."""
        flops, operations = self._prefill_operations(batch, tokens, start, self.prefill_attention_flops(batch, tokens, start),
                                                     self.kv_cache_bytes(batch, start + tokens))
        return flops, self._total(operations)

    def _prefill_operations(self, batch: int, tokens: int, start: int, attention_flops: int,
                            cache_bytes: int) -> tuple[int, dict]:
        """(FLOPs, seconds per operation) of prefilling `tokens` tokens per sequence onto `start` cached. A sparse
        kind's queries each read their selected latent rows (min(position + 1, top-k) of them per layer)."""
        flops = self.prefill_linear_flops(batch, tokens) + attention_flops
        scores = sparse_bytes = 0
        if self.indexer_pair_flops:
            scores = batch * self._indexed_keys(tokens, start)
        if self._sparse:
            sparse_bytes = batch * self._latent_row_bytes * sum(
                layers * self._pairs(tokens, window, cap, start) for window, layers, cap in self._groups)
        indexer_flops = scores * self.indexer_pair_flops
        operations = self._operations(batch, tokens, batch, attention_flops - indexer_flops, cache_bytes,
                                      sparse_bytes, indexer_flops, scores, self._prefill_keys(tokens, start))
        return flops, self._in_chunks(operations, batch, tokens, start)

    def _prefill_keys(self, tokens: int, start: int):
        """The L at which prefill attention's efficiency curve (RooflineKernels.attention_efficiency) is read.
        The curve is stated for causal attention over L keys, whose queries attend L/2 keys on average, so a
        layer whose queries attend n keys on average (a window's band: n ~ window) reads it at 2n, at most the
        context (a full layer: the context itself). Layer groups of different reach combine as the harmonic
        mean weighted by their pairs: with efficiency ~ L / (L + half), pairs / efficiency then adds up group by
        group."""
        context = start + tokens
        groups = [(window, layers) for window, layers, _ in self._groups if layers]
        if self.model.is_encoder or all(window is None for window, _ in groups):
            return context
        pairs_sum = inverse_sum = 0
        for window, layers in groups:
            pairs = layers * self._pairs(tokens, window, window, start)
            pairs_sum = pairs_sum + pairs
            inverse_sum = inverse_sum + pairs / minimum(context, 2 * pairs / (layers * tokens))
        return pairs_sum / inverse_sum

    def _in_chunks(self, operations: dict, batch: int, tokens: int, start: int) -> dict:
        """A prefill's operations as chunked prefill runs them: each data-parallel rank's batch x tokens go
        through n = ceil(tokens on the rank / prefill_chunk) forwards, and each forward reads the weights and
        pays its calls again. Per forward of c tokens on every busy rank, the GEMMs, experts, elementwise
        kernels and communication cost what `_operations` prices for c tokens (n - 1 full chunks and the last);
        attention and the indexer keep the whole prefill's work, attention adds n - 1 forwards' call times and the
        indexer takes each forward's calls (one per query chunk); the logits are the finished sequences' alone."""
        dep = self.deployment
        chunk, per_rank = dep.prefill_chunk, parallel.sequences_per_rank(batch, dep.dp) * tokens
        if not chunk or self.model.is_encoder:
            return operations
        forwards = ceil_div(per_rank, chunk)
        if isinstance(forwards, (int, float)) and forwards <= 1:
            return operations
        chunked_once = minimum(forwards - 1, 1)  # 1 where a rank needs several forwards (0/1 over arrays of batches)
        ranks = minimum(dep.dp, batch)
        full = self._operations(ranks, chunk, 0, 0, 0, 0, 0, 0, start + tokens)
        last = self._operations(ranks, per_rank - (forwards - 1) * chunk, 0, 0, 0, 0, 0, 0, start + tokens)
        chunked = dict(operations)
        for name in ("gemm", "moe", "elementwise", "communication"):
            in_chunks = (forwards - 1) * full[name] + last[name]
            chunked[name] = operations[name] + chunked_once * (in_chunks - operations[name])
        # With no work, an operation's seconds are its calls' time: attention pays its calls again per forward;
        # the indexer's calls, one per query chunk, are the forwards' own instead of the whole prompt's.
        chunked["attention"] = operations["attention"] + (forwards - 1) * full["attention"]
        whole_calls = self._operations(ranks, tokens, 0, 0, 0, 0, 0, 0, start + tokens)["indexer"]
        chunked["indexer"] = operations["indexer"] + chunked_once * (
            (forwards - 1) * full["indexer"] + last["indexer"] - whole_calls)
        return chunked

    # --- one row --------------------------------------------------------------------------------------
    def row(self, batch: int, context: int, prompt: int | None = None, cached: int = 0) -> dict:
        """Every figure for one (batch, context); see COLUMNS for names and units. `cached`: tokens of each
        prompt found in a prefix cache (held in the cache, not recomputed by prefill)."""
        model, dep = self.model, self.deployment
        prompt = context if prompt is None else prompt
        if not 0 <= cached < prompt:
            raise InputError(f"cached prefix ({cached}) must be at least 0 and below the prompt ({prompt})")
        kv_bytes = self.kv_cache_bytes(batch, context)
        kv_per_gpu = self.kv_cache_bytes_per_gpu(batch, context)
        act_per_gpu = self.activation_bytes_per_gpu(batch, prompt, cached=cached)
        total_per_gpu = self.weights_bytes_per_gpu + kv_per_gpu + act_per_gpu + dep.reserve_bytes
        # As prefill(batch, prompt - cached, cached) and decode_step(batch, context), reusing what this row
        # already has.
        attn_flops = self.prefill_attention_flops(batch, prompt - cached, cached)
        prefill_cache = kv_bytes if prompt == context else self.kv_cache_bytes(batch, prompt)
        prefill_flops, prefill_operations = self._prefill_operations(batch, prompt - cached, cached, attn_flops,
                                                                     prefill_cache)
        prefill_seconds = self._total(prefill_operations)
        usd_per_s = self.usd_per_second()
        if model.is_encoder:  # nothing is decoded: the decode columns stay empty (None, null in JSON)
            decode_flops_per_token = decode_seconds = decode_tokens_per_second = decode_usd_per_mtok = None
            decode_operations = dict.fromkeys(OPERATIONS)
        else:
            decode_attention = self.decode_attention_flops(context - 1)
            decode_cache = (self.decode_cache_read_bytes(batch, context) if self._sparse
                            else kv_bytes + batch * self._state_bytes_all_gpus)
            _, decode_operations = self._decode_operations(batch, context, decode_attention, decode_cache)
            decode_seconds = self._total(decode_operations)
            decode_flops_per_token = self.linear_flops_per_token + self.lm_head_flops + decode_attention
            decode_tokens_per_second = batch / decode_seconds
            decode_usd_per_mtok = usd_per_s * decode_seconds / batch * 1e6
        return {
            "model": model.name,
            "attention": self._kind_label,
            "gpu": dep.gpu.name,
            "gpus": dep.gpus,
            "tp": dep.tp,
            "pp": dep.pp,
            "dp": dep.dp,
            "ep": dep.ep,
            "batch": batch,
            "context": context,
            "prompt": prompt,
            "cached_prefix": cached,
            "kv_dtype": dep.kv_format.name,
            "weights_format": self.weights_format.label,
            "params": self.total_params,
            "active_params": self.active_params,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "state_bytes_per_sequence": self.state_bytes_per_sequence,
            "kv_cache_bytes": kv_bytes,
            "kv_cache_bytes_per_gpu": kv_per_gpu,
            "weights_bytes": self.weights_bytes,
            "weights_bytes_per_gpu": self.weights_bytes_per_gpu,
            "activation_bytes": act_per_gpu * dep.gpus,
            "activation_bytes_per_gpu": act_per_gpu,
            # Both implementations' peaks, so one row shows flash (linear in context) beside naive (quadratic).
            "activation_bytes_flash_per_gpu": act_per_gpu if dep.flash else self.activation_bytes_per_gpu(
                batch, prompt, flash=True),
            "activation_bytes_naive_per_gpu": self.activation_bytes_per_gpu(batch, prompt, flash=False)
            if dep.flash else act_per_gpu,
            "total_bytes": self.weights_bytes_all_gpus + kv_bytes + (act_per_gpu + dep.reserve_bytes) * dep.gpus,
            "total_bytes_per_gpu": total_per_gpu,
            "gpu_memory_bytes": dep.gpu.memory_bytes,
            "usable_memory_bytes": dep.usable_memory_bytes,
            "reserve_bytes_per_gpu": dep.reserve_bytes,
            "prefill_chunk": dep.prefill_chunk,
            "fits": total_per_gpu <= dep.usable_memory_bytes,
            "prefill_flops": prefill_flops,
            "prefill_attention_flops": attn_flops,
            "decode_flops_per_token": decode_flops_per_token,
            "prefill_seconds": prefill_seconds,
            "decode_seconds_per_token": decode_seconds,
            "prefill_tokens_per_second": batch * prompt / prefill_seconds,
            "decode_tokens_per_second": decode_tokens_per_second,
            "prefill_usd_per_mtok": usd_per_s * prefill_seconds / (batch * prompt) * 1e6,
            "decode_usd_per_mtok": decode_usd_per_mtok,
            **{f"prefill_{name}_seconds": prefill_operations[name] for name in OPERATIONS},
            **{f"decode_{name}_seconds": decode_operations[name] for name in OPERATIONS},
        }


COLUMNS = {  # name -> unit and meaning of each key of row(), in order: the CSV header and the README's column table
    "model": "model name ([spec] marks a re-cast)",
    "attention": "attention kind as served",
    "gpu": "GPU preset", "gpus": "GPUs in all (tp x pp x dp)", "tp": "tensor-parallel degree", "pp": "pipeline stages",
    "dp": "data-parallel attention ranks", "ep": "expert-parallel degree (1: experts split over tp)",
    "batch": "sequences", "context": "tokens per sequence", "prompt": "prefill tokens per sequence",
    "cached_prefix": "prompt tokens per sequence found in a prefix cache (not recomputed)",
    "kv_dtype": "cache storage format",
    "weights_format": "how weights are stored and where that comes from: the checkpoint (quantization_config, "
                      "safetensors headers), --weight-dtype, or bf16 where neither states a format",
    "params": "weights in all (routed experts included)",
    "active_params": "weights one token uses: all but the routed experts it does not select (embeddings counted)",
    "kv_bytes_per_token": "bytes of cache per token, all layers, one sequence (window caps not applied)",
    "state_bytes_per_sequence": "bytes of recurrent state per sequence, all layers, whatever the context (hybrids)",
    "kv_cache_bytes": "bytes of cache, whole deployment (recurrent state included)",
    "kv_cache_bytes_per_gpu": "bytes of cache on the most loaded GPU",
    "weights_bytes": "bytes of weights", "weights_bytes_per_gpu": "bytes of weights per GPU",
    "activation_bytes": "bytes of prefill activation peak, all GPUs",
    "activation_bytes_per_gpu": "bytes of prefill activation peak per GPU",
    "activation_bytes_flash_per_gpu": "prefill peak per GPU with FlashAttention-style attention (linear in context)",
    "activation_bytes_naive_per_gpu": "prefill peak per GPU with attention that materialises the scores (quadratic)",
    "total_bytes": "bytes in all", "total_bytes_per_gpu": "bytes on the most loaded GPU",
    "gpu_memory_bytes": "bytes of memory per GPU",
    "usable_memory_bytes": "bytes per GPU the engine may use: gpu_memory_bytes x --gpu-memory-utilization",
    "reserve_bytes_per_gpu": "of total_bytes_per_gpu: runtime reserve (CUDA context, NCCL buffers; --reserve)",
    "prefill_chunk": "tokens per prefill forward across the batch (chunked prefill); 0: whole prompts at once",
    "fits": "total_bytes_per_gpu <= usable_memory_bytes",
    "prefill_flops": "FLOPs of prefill, whole batch", "prefill_attention_flops": "of which attention",
    "decode_flops_per_token": "FLOPs of one decode step, one sequence (null for an encoder, as every decode column)",
    "prefill_seconds": "roofline seconds of prefill", "decode_seconds_per_token": "roofline seconds of one decode step",
    "prefill_tokens_per_second": "prompt tokens per second, whole batch (a cached prefix counted, as DeepSeek counts it)",
    "decode_tokens_per_second": "decoded tokens per second, whole batch",
    "prefill_usd_per_mtok": "$ per million prompt tokens (a cached prefix counted)", "decode_usd_per_mtok": "$ per million decoded tokens",
    **{f"{phase}_{name}_seconds": f"of {phase} seconds: {what}" for phase in ("prefill", "decode") for name, what in (
        ("gemm", "dense linear layers (GEMMs)"), ("moe", "grouped expert GEMMs"),
        ("attention", "attention kernels (a sparse kind's latent reads included)"),
        ("indexer", "a sparse kind's indexer and top-k selection"),
        ("elementwise", "norms, residual adds, activations"), ("logits", "LM head and logits"),
        ("communication", "tp/ep/pp communication (hidden behind the rest with overlap)"))},
}
