"""Expert parallelism: one MoE layer with its routed experts spread whole over the ranks, each token's hidden
state dispatched to the ranks of its top-k experts and the results combined back
(torch.distributed.all_to_all_single), set beside the Estimator.

What a rank holds (kvplan.model.Model.stage_params at tp 1 and ep = ranks): ceil(n_experts / ep) whole routed
experts (rank r the r-th run of them), the router and the shared experts whole. Each rank brings its own share
of the forward's tokens, as a data-parallel attention rank hands them on (measure.rank_sequences), routes them
as kvplan.models' MoE does (softmax, top-k, weights renormalised) and sends the hidden state of every (token,
chosen expert) copy to the rank holding that expert; that rank runs its experts on what it received and sends
each result back, and the token's rank weights the results and adds its shared experts' output. Both
all-to-alls carry the compute dtype: the Estimator's own figure assumes fp8 dispatch (one fp32 scale per 128
elements, as DeepEP sends) and bf16 combine, and is reported beside the measurement, not compared with it.

Per rank: the bytes of the weights it holds beside Estimator.weights_bytes_per_gpu of the one-layer MoE model
(moe_model) at tp 1, dp = ep = ranks, less that of the same model with no feed-forward (the attention and
norms, which this harness does not build); the bytes it dispatches and combines; on CUDA the measured seconds of
the two payload all-to-alls (the exchange of counts and expert ids before them is not timed) beside
Estimator.all_to_all_seconds of the same bytes on the estimate's GPU preset (its all_to_all kernel figures); and
Estimator.communication_seconds of the model (reestimate derives them again from a measured row, with no GPU).
Rank 0 checks the layer's output against the unsharded layer (kvplan.models' MoE) run on the same tokens, each
rank's tokens in one call as that rank routed them (same shapes, so the same router logits).

Weights: each routed expert, the router and the shared experts are drawn on the device from a seed of their own
(N(0, 1/fan_in)), so a rank draws only the experts it holds and rank 0 draws the same full layer for the check.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import nn

from kvplan.estimator import Deployment, Estimator
from kvplan.hardware import GPU
from kvplan.model import FeedForward, Model
from kvplan.models.transformer import MoE, SwiGLU
from kvplan.units import InputError, ceil_div

from ..timing import inner_calls, one_sample
from .measure import TOLERANCE, compute_format, rank_sequences

WARMUP_CALLS = 3  # untimed all-to-alls before the timed samples (NCCL sets up its channels on the first ones)


def moe_model(desc: Model) -> Model:
    """One MoE layer of `desc` as a model of its own (no vocabulary): what this harness runs, for the Estimator."""
    if not desc.ffn.is_moe:
        raise InputError(f"{desc.name} has no routed experts: expert parallelism needs an MoE model")
    ffn = replace(desc.ffn, n_dense_layers=0, moe_step=1, dense_layer_ids=())
    return replace(desc, n_layers=1, layer_windows=(), vocab_size=0, ffn=ffn)


# --- weights --------------------------------------------------------------------------------------------
def _swiglu_state(prefix: str, d: int, hidden: int, seed: int, dtype: torch.dtype, device) -> dict:
    generator = torch.Generator(device=device).manual_seed(seed)
    shapes = {"w_gate": (hidden, d), "w_up": (hidden, d), "w_down": (d, hidden)}
    return {f"{prefix}.{name}.weight": torch.empty(shape, dtype=dtype, device=device).normal_(
        0.0, shape[1] ** -0.5, generator=generator) for name, shape in shapes.items()}


def moe_state(ffn: FeedForward, d: int, experts: range, dtype: torch.dtype, device, seed: int) -> dict:
    """The router, the shared experts and routed experts `experts` of an MoE layer, named as kvplan.models' MoE
    names them; each part drawn from its own seed (seed x (n_experts + 2) + its index: the experts 0..E-1,
    the router E, the shared experts E + 1), so any rank draws any part alike."""
    base = seed * (ffn.n_experts + 2)
    generator = torch.Generator(device=device).manual_seed(base + ffn.n_experts)
    state = {"router.weight": torch.empty(ffn.n_experts, d, dtype=dtype, device=device).normal_(
        0.0, d ** -0.5, generator=generator)}
    if ffn.shared_width():
        state.update(_swiglu_state("shared", d, ffn.shared_width(), base + ffn.n_experts + 1, dtype, device))
    for e in experts:
        state.update(_swiglu_state(f"experts.{e}", d, ffn.moe_intermediate, base + e, dtype, device))
    return state


def expert_range(n_experts: int, ranks: int, rank: int) -> range:
    """The routed experts rank `rank` of `ranks` holds: ceil(n_experts / ranks) of them, the last rank the rest."""
    per_rank = ceil_div(n_experts, ranks)
    return range(min(rank * per_rank, n_experts), min((rank + 1) * per_rank, n_experts))


# --- the sharded layer ------------------------------------------------------------------------------------
@dataclass
class Traffic:
    """One forward's all-to-all buffers and split sizes (rows of d_model per rank), kept for timing them again."""

    sent: torch.Tensor  # the copies this rank dispatches, grouped by destination rank
    received: torch.Tensor  # the copies dispatched to it, grouped by source rank
    results: torch.Tensor  # its experts' outputs for `received`, combined back
    returned: torch.Tensor  # the results of `sent`, back from the experts' ranks
    send_splits: list[int]
    receive_splits: list[int]

    def dispatch(self) -> None:
        dist.all_to_all_single(self.received, self.sent, self.receive_splits, self.send_splits)

    def combine(self) -> None:
        dist.all_to_all_single(self.returned, self.results, self.send_splits, self.receive_splits)


class ExpertShard(nn.Module):
    """What one of `ranks` expert-parallel ranks holds of an MoE layer: the router and the shared experts whole,
    routed experts expert_range(...) whole (in `experts`, keyed by their index in the full layer, so its
    state_dict names are the full layer's)."""

    def __init__(self, d_model: int, ffn: FeedForward, ranks: int, rank: int, **factory):
        super().__init__()
        self.k, self.ranks, self.per_rank = ffn.n_active_experts, ranks, ceil_div(ffn.n_experts, ranks)
        self.router = nn.Linear(d_model, ffn.n_experts, bias=False, **factory)
        self.shared = SwiGLU(d_model, ffn.shared_width(), **factory) if ffn.shared_width() else None
        self.experts = nn.ModuleDict({str(e): SwiGLU(d_model, ffn.moe_intermediate, **factory)
                                      for e in expert_range(ffn.n_experts, ranks, rank)})

    def forward(self, flat: torch.Tensor) -> tuple[torch.Tensor, Traffic]:
        """This rank's tokens [T, d] -> the layer's output [T, d] and the all-to-all traffic (call on every rank)."""
        weights, chosen = torch.softmax(self.router(flat), dim=-1).topk(self.k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        copies = chosen.flatten()  # the expert of each (token, slot) copy, token-major
        destination = copies // self.per_rank  # the rank holding it (expert_range)
        order = torch.argsort(destination, stable=True)  # copies grouped by destination, token order kept
        send_counts = torch.bincount(destination, minlength=self.ranks)
        receive_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(receive_counts, send_counts)
        send_splits, receive_splits = send_counts.tolist(), receive_counts.tolist()
        received_experts = copies.new_empty(sum(receive_splits))
        dist.all_to_all_single(received_experts, copies[order], receive_splits, send_splits)

        token = order // self.k
        sent = flat[token]
        traffic = Traffic(sent, sent.new_empty(sum(receive_splits), flat.size(1)), sent.new_empty(0),
                          torch.empty_like(sent), send_splits, receive_splits)
        traffic.dispatch()
        traffic.results = self._run_experts(traffic.received, received_experts)
        traffic.combine()
        out = self.shared(flat) if self.shared is not None else torch.zeros_like(flat)
        out.index_add_(0, token, traffic.returned * weights.flatten()[order, None])
        return out, traffic

    def _run_experts(self, received: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        results = torch.empty_like(received)
        for e, expert in self.experts.items():
            rows = torch.where(experts == int(e))[0]
            if rows.numel():
                results[rows] = expert(received[rows])
        return results


# --- one measurement --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpertJob:
    """One MoE layer (moe_model's) over every rank, for `tokens` tokens in one forward across all ranks (a decode
    step of that many sequences, or a prefill's tokens), split over the ranks as sequences are under dp."""

    desc: Model  # moe_model(...) of the model
    tokens: int
    dtype: torch.dtype
    seed: int = 0
    repeats: int = 10  # timed samples per all-to-all (the median is reported)
    gpu: str = "auto"  # GPU preset of the estimate; auto: the local GPU's, h100-sxm on the CPU
    full_layers: int = 0  # depth of the whole model, for the report

    def check(self, ranks: int) -> None:
        if self.desc.ffn.n_experts < ranks:
            raise InputError(f"{self.desc.ffn.n_experts} routed experts do not spread over {ranks} ranks")
        rank_sequences(self.tokens, ranks, 0)

    def run(self, device: torch.device) -> list[dict]:
        return profile_expert_job(self, device)


def tokens_input(job: ExpertJob, device: torch.device) -> torch.Tensor:
    """The forward's hidden states [tokens, d], the same on every rank (drawn on the device from one seed)."""
    generator = torch.Generator(device=device).manual_seed(job.seed + 1)
    return torch.randn(job.tokens, job.desc.d_model, generator=generator, dtype=job.dtype, device=device)


def collective_seconds(fn, device: torch.device, repeats: int) -> float | None:
    """Median seconds per call of a collective on CUDA (None elsewhere): as timing.median_seconds, with every
    rank running as many calls per sample (the most any rank needs) and a barrier before each sample."""
    if device.type != "cuda":
        return None
    for _ in range(WARMUP_CALLS):
        fn()
    inner = torch.tensor([inner_calls(one_sample(fn, device, 1))], device=device)
    dist.all_reduce(inner, op=dist.ReduceOp.MAX)
    samples = []
    for _ in range(repeats):
        dist.barrier()
        samples.append(one_sample(fn, device, int(inner.item())))
    return statistics.median(samples)


def estimators(job: ExpertJob, ranks: int, gpu: GPU) -> tuple[Estimator, Estimator]:
    """(the one-layer MoE model, the same with no feed-forward) at tp 1, dp = ep = ranks, in the compute dtype."""
    compute = compute_format(job.dtype)
    deployment = Deployment(gpu=gpu, dp=ranks, ep=ranks, weight_format=compute, activation_format=compute)
    return Estimator(job.desc, deployment), Estimator(replace(job.desc, ffn=FeedForward(0)), deployment)


def estimate_columns(job: ExpertJob, ranks: int, gpu: GPU, weights_bytes: int, dispatch_bytes: int,
                     combine_bytes: int, measured_seconds: float | None) -> dict:
    """A rank's estimates beside what it measured: the weights it holds (bytes), its dispatch and combine of the
    same bytes (Estimator.all_to_all_seconds, the GPU's all_to_all kernel figures; seconds) and
    Estimator.communication_seconds of the layer (fp8 dispatch), with their errors (estimate / measured - 1)."""
    with_moe, without_ffn = estimators(job, ranks, gpu)
    weights_estimate = with_moe.weights_bytes_per_gpu - without_ffn.weights_bytes_per_gpu
    estimate = sum(with_moe.all_to_all_seconds(size) for size in (dispatch_bytes, combine_bytes))
    return {
        "weights_bytes_estimate": weights_estimate,
        "all_to_all_seconds_estimate": estimate,
        "all_to_all_error": None if not measured_seconds else estimate / measured_seconds - 1,
        "estimator_seconds": with_moe.communication_seconds(job.tokens, 1),
        "estimate_gpu": gpu.name,
        "weights_error": weights_estimate / weights_bytes - 1,  # the estimate: the most loaded rank
    }


def measure_expert_rank(job: ExpertJob, device: torch.device) -> tuple[dict, torch.Tensor]:
    """This rank's shard: its row (weights, bytes and seconds of dispatch and combine) and its tokens' output."""
    from ..commands import estimate_gpu

    ranks, rank = dist.get_world_size(), dist.get_rank()
    ffn, d = job.desc.ffn, job.desc.d_model
    shard = ExpertShard(d, ffn, ranks, rank, dtype=job.dtype, device="meta")
    held = expert_range(ffn.n_experts, ranks, rank)
    shard.load_state_dict(moe_state(ffn, d, held, job.dtype, device, job.seed), strict=True, assign=True)
    first, end = rank_sequences(job.tokens, ranks, rank)
    flat = tokens_input(job, device)[first:end].clone()
    with torch.no_grad():
        output, traffic = shard(flat)
        dispatch_seconds = collective_seconds(traffic.dispatch, device, job.repeats)
        combine_seconds = collective_seconds(traffic.combine, device, job.repeats)
    row_bytes = d * job.dtype.itemsize
    weights_bytes = sum(p.nbytes for p in shard.parameters())
    dispatch_bytes, combine_bytes = traffic.sent.nbytes, traffic.results.nbytes
    measured = None if dispatch_seconds is None else dispatch_seconds + combine_seconds
    row = {
        "rank": rank,
        "rank_tokens": end - first,
        "rank_experts": len(held),
        "weights_bytes": weights_bytes,
        "dispatch_bytes": dispatch_bytes,
        "dispatch_bytes_remote": dispatch_bytes - traffic.send_splits[rank] * row_bytes,
        "combine_bytes": combine_bytes,
        "combine_bytes_remote": combine_bytes - traffic.receive_splits[rank] * row_bytes,
        "dispatch_seconds": dispatch_seconds,
        "combine_seconds": combine_seconds,
        "all_to_all_seconds": measured,
        **estimate_columns(job, ranks, estimate_gpu(device, job.gpu, None), weights_bytes, dispatch_bytes,
                           combine_bytes, measured),
    }
    del shard, traffic
    return row, output


def reference_outputs(job: ExpertJob, ranks: int, device: torch.device) -> list[torch.Tensor]:
    """The unsharded layer (kvplan.models' MoE) on each rank's tokens, one call per rank's tokens."""
    ffn, d = job.desc.ffn, job.desc.d_model
    layer = MoE(d, ffn, dtype=job.dtype, device="meta")
    layer.load_state_dict(moe_state(ffn, d, range(ffn.n_experts), job.dtype, device, job.seed), strict=True,
                          assign=True)
    flat = tokens_input(job, device)
    with torch.no_grad():
        return [layer(flat[slice(*rank_sequences(job.tokens, ranks, r))]) for r in range(ranks)]


def profile_expert_job(job: ExpertJob, device: torch.device) -> list[dict]:
    """Run one job on every rank (call on all of them); rank 0 returns one row per rank, the others []."""
    ranks, rank = dist.get_world_size(), dist.get_rank()
    row, output = measure_expert_rank(job, device)
    rows, outputs = ([None] * ranks, [None] * ranks) if rank == 0 else (None, None)
    dist.gather_object(row, rows, dst=0)
    dist.gather_object(output.cpu(), outputs, dst=0)
    del output
    if rank != 0:
        return []
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        references = reference_outputs(job, ranks, device)
        error = (max((out.to(device) - ref).abs().max().item() for out, ref in zip(outputs, references))
                 / max(ref.abs().max().item() for ref in references))
        del references
    except torch.cuda.OutOfMemoryError:  # the unsharded layer holds every expert: it may not fit one GPU
        error = None
    tolerance = TOLERANCE[job.dtype]
    ffn = job.desc.ffn
    common = {
        "model": job.desc.name, "parallel": "ep", "ep": ranks, "tokens": job.tokens, "experts": ffn.n_experts,
        "top_k": ffn.n_active_experts, "shared_width": ffn.shared_width(), "expert_width": ffn.moe_intermediate,
        "d_model": job.desc.d_model, "full_layers": job.full_layers, "dtype": str(job.dtype).removeprefix("torch."),
        "device": device.type, "backend": dist.get_backend(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "output_error": error, "output_tolerance": tolerance,
        "output_matches": None if error is None else error <= tolerance,  # None: the unsharded check did not fit
    }
    return [{**common, **r} for r in rows]


def reestimate(row: dict) -> dict:
    """A measured row (as profile_expert_job gives it, or read back from its CSV) with its estimate columns
    (estimate_columns) derived again from its model, tokens, ranks, dtype, GPU preset and measured bytes and
    seconds, at today's formulas: no GPU needed."""
    from kvplan.api import resolve_model
    from kvplan.hardware import get_gpu

    def number(key: str) -> float | None:
        return None if row.get(key) in (None, "") else float(row[key])

    dtype = getattr(torch, str(row["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"row dtype {row['dtype']!r} is not a torch dtype")
    job = ExpertJob(moe_model(resolve_model(str(row["model"]), None)), int(number("tokens")), dtype)
    return {**row, **estimate_columns(job, int(number("ep")), get_gpu(str(row["estimate_gpu"])),
                                      int(number("weights_bytes")), int(number("dispatch_bytes")),
                                      int(number("combine_bytes")), number("all_to_all_seconds"))}
