"""How a deployment spreads over GPUs, and what its communication costs.

Four dimensions, as serving engines name them:
- tp (tensor parallelism; vLLM --tensor-parallel-size, SGLang --tp): heads and feed-forward columns split
  over tp GPUs, the hidden state all-reduced twice per layer.
- pp (pipeline parallelism; --pipeline-parallel-size): consecutive layers on pp stages, activations sent
  from stage to stage. Stages run one after another for a batch (no micro-batches), so pp adds memory, not speed.
- dp (data-parallel attention; vLLM --data-parallel-size, SGLang --dp with --enable-dp-attention): dp
  copies of the attention (and dense layers), each holding the cache of its own share of the sequences.
- ep (expert parallelism; vLLM --enable-expert-parallel, SGLang --ep): the routed experts of each MoE layer
  spread over ep GPUs (whole experts, not split), each token's hidden state dispatched to the GPUs of its
  top-k experts and combined back (an all-to-all each way per MoE layer). ep = 1: experts split like the
  feed-forward under tp.
GPUs in all = tp x pp x dp; ep divides the tp x dp GPUs of a stage (ep = tp x dp is what engines run).

Links: a group of GPUs within one node (gpus_per_node, an NVLink domain) talks over the GPU link
(GPU.link_bytes_per_s, one direction); a group spanning nodes over the network (GPU.network_bytes_per_s per GPU).
Every collective also pays a fixed latency per call: the GPU's communication and all_to_all kernels
(kvplan.roofline) give it where measured (all-to-all: NCCL on 2 H100s, 53 us per call, examples/ep2-h100.csv);
LINK_LATENCY_SECONDS and NETWORK_LATENCY_SECONDS below are assumptions.
"""

from __future__ import annotations

from .units import InputError, ceil_div, maximum

LINK_LATENCY_SECONDS = 5e-6  # per collective on NVLink-class links; an assumption, not a measurement
NETWORK_LATENCY_SECONDS = 10e-6  # per collective across nodes (InfiniBand/RoCE); an assumption
DISPATCH_BYTES_PER_ELEMENT = 1 + 4 / 128  # fp8 hidden state with one fp32 scale per 128 elements (DeepEP)
COMBINE_BYTES_PER_ELEMENT = 2  # bf16


# Runtime memory an engine holds on each GPU besides weights, cache and activations (Deployment's default reserve):
# NCCL's buffers once a GPU talks to others (aiconfigurator 0.12.0's h100_sxm/h200_sxm system files: 342 MB
# with 2 GPUs, 392 MB with 4 or 8), and the CUDA context with its library workspaces (512 MiB, an assumption:
# about what nvidia-smi shows a PyTorch process hold on an H100 before it allocates a tensor).
CUDA_CONTEXT_BYTES = 512 * 2**20
NCCL_BUFFER_BYTES = {1: 0, 2: 358612992}
NCCL_BUFFER_BYTES_LARGE = 411041792  # 4 GPUs or more


def runtime_reserve_bytes(gpus: int) -> int:
    """CUDA context plus NCCL buffers on each of `gpus` GPUs serving one model."""
    return CUDA_CONTEXT_BYTES + NCCL_BUFFER_BYTES.get(gpus, NCCL_BUFFER_BYTES_LARGE)


def check_layout(tp: int, pp: int, dp: int, ep: int) -> None:
    """Raise InputError for a layout that engines cannot run."""
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp), ("ep", ep)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive whole number, not {value!r}")
    if (tp * dp) % ep:
        raise InputError(f"ep ({ep}) must divide the tp x dp = {tp * dp} GPUs of a stage that hold the experts")


def experts_touched(n_experts: int, top_k: int, tokens: float) -> float:
    """Distinct experts that `tokens` tokens select, each picking top_k of n_experts uniformly at random:
    E (1 - (1 - k/E)^tokens)."""
    return n_experts * (1 - (1 - top_k / n_experts) ** tokens)


def link_for(group: int, gpus_per_node: int, link_bytes_per_s: float, network_bytes_per_s: float) -> tuple[float, float]:
    """(bytes/s, latency s) of the slowest link inside a group of `group` GPUs."""
    if group <= gpus_per_node:
        return link_bytes_per_s, LINK_LATENCY_SECONDS
    return network_bytes_per_s, NETWORK_LATENCY_SECONDS


def all_reduce_seconds(message_bytes: float, ranks: int, bytes_per_s: float, latency: float) -> float:
    """Ring all-reduce of a message on every rank: each sends 2 (ranks - 1) / ranks of it."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * message_bytes / bytes_per_s + latency


def all_to_all_seconds(bytes_out_per_gpu: float, ranks: int, gpus_per_node: int, link_bytes_per_s: float,
                       network_bytes_per_s: float, call_seconds: float = LINK_LATENCY_SECONDS) -> float:
    """All-to-all in which every GPU sends `bytes_out_per_gpu` spread evenly over `ranks` destinations
    (itself included, which costs nothing): the part for GPUs of its own node goes over the GPU link, the rest
    over the network, both at once; `call_seconds` per call inside a node (across nodes at least
    NETWORK_LATENCY_SECONDS)."""
    if ranks <= 1:
        return 0.0
    same_node = min(ranks, gpus_per_node)
    inside = bytes_out_per_gpu * (same_node - 1) / ranks
    across = bytes_out_per_gpu * (ranks - same_node) / ranks
    latency = maximum(call_seconds, NETWORK_LATENCY_SECONDS) if ranks > same_node else call_seconds
    return maximum(inside / link_bytes_per_s, across / network_bytes_per_s) + latency


def send_seconds(message_bytes: float, bytes_per_s: float, latency: float) -> float:
    return message_bytes / bytes_per_s + latency


def sequences_per_rank(sequences: int, dp: int) -> int:
    """Sequences on the most loaded of dp attention ranks."""
    return ceil_div(sequences, dp)
