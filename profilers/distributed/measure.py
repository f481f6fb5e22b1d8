"""One configuration of attention layers measured on every rank, and what each rank holds set beside the
Estimator. Two layouts:

- tp (tensor parallelism): each rank builds its shard of the layers (shard.py), prefills and decodes the whole
  batch through them with the partial outputs all-reduced; rank 0 checks the all-reduced output against the
  unsharded layers run on the same inputs.
- dp (data-parallel attention): each rank holds the whole layers and runs its own share of the batch's
  sequences (rank_sequences), with nothing to reduce; each rank checks its rows against the unsharded layers
  run on the whole batch.

Every rank draws the same full layers (same seed) on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
import torch.distributed as dist

from kvplan.dtypes import StorageFormat
from kvplan.estimator import Deployment, Estimator
from kvplan.hardware import get_gpu
from kvplan.model import FeedForward, Model
from kvplan.models.common import Rope, cache_storage
from kvplan.models.transformer import layer_class
from kvplan.units import InputError

from .shard import shard_spec, shard_state

# Largest max|sharded - unsharded| / max|unsharded| accepted per compute dtype: a few units in the last place,
# since sharding changes only the order of the sums (matmul blocking, the all-reduce).
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


# --- building and running the layers ---------------------------------------------------------------------
def full_layer_states(desc: Model, dtype: torch.dtype, seed: int) -> list[dict[str, torch.Tensor]]:
    """Weights of the unsharded mixers (Model.mixers: attention and recurrent layers), drawn on the host as
    kvplan.models.build draws them (matrices N(0, 1/fan_in), biases zero, norms one), so every rank with the same
    seed holds the same full layers."""
    generator = torch.Generator().manual_seed(seed)
    states = []
    for kind, window in desc.mixers():
        layer = layer_class(kind)(kind, desc.d_model, window, 1, 1, Rope(desc.attention.rope_dim, 1), torch.float32,
                                  dtype=dtype)  # a 1-token cache: only the weights matter
        with torch.no_grad():
            for name, param in layer.named_parameters():
                if name.endswith("bias"):
                    param.zero_()
                elif param.dim() == 2:
                    param.normal_(0.0, param.size(1) ** -0.5, generator=generator)
        states.append(layer.state_dict())
    return states


def build_layers(desc: Model, specs: list, states: list[dict], batch: int, context: int, cache_dtype: torch.dtype,
                 dtype: torch.dtype, device: torch.device) -> list[torch.nn.Module]:
    """desc's mixers, each of the kind in `specs` (a shard or the full layer), with caches for batch x context,
    loaded from states."""
    rope = Rope(desc.attention.rope_dim, context, device=device, convention=desc.rope_convention)
    layers = []
    for spec, (_, window), state in zip(specs, desc.mixers(), states):
        chunked = {} if spec.recurrent else {"chunked": desc.chunked}  # recurrent layers have no window
        layer = layer_class(spec)(spec, desc.d_model, window, batch, context, rope, cache_dtype, dtype=dtype,
                                  device=device, **chunked)
        layer.load_state_dict(state, strict=True)  # a slice of the wrong shape or a missing weight fails here
        layers.append(layer.eval().requires_grad_(False))
    return layers


def shard_layers(desc: Model, tp: int, rank: int, batch: int, context: int, cache_dtype: torch.dtype,
                 dtype: torch.dtype, device, seed: int) -> list[torch.nn.Module]:
    """Rank `rank`'s shard under `tp` of the mixers full_layer_states draws from `seed`, with caches for
    batch x context."""
    kinds = [kind for kind, _ in desc.mixers()]
    states = [shard_state(kind, s, tp, rank) for kind, s in zip(kinds, full_layer_states(desc, dtype, seed))]
    return build_layers(desc, [shard_spec(kind, tp) for kind in kinds], states, batch, context, cache_dtype, dtype,
                        device)


def cache_bytes(layers: list[torch.nn.Module]) -> int:
    """Bytes of the layers' real cache tensors."""
    return sum(buf.nbytes for layer in layers for buf in layer.cache_buffers())


def inputs(desc: Model, batch: int, context: int, steps: int, dtype, device, seed: int) -> tuple:
    """Hidden states, the same on every rank (drawn on the device from one seed): a prompt [B, context - steps, d]
    and `steps` tokens [B, 1, d]."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    prompt = context - steps
    x = torch.randn(batch, prompt, desc.d_model, generator=generator, dtype=dtype, device=device)
    return x, [torch.randn(batch, 1, desc.d_model, generator=generator, dtype=dtype, device=device)
               for _ in range(steps)]


@torch.no_grad()
def run_layers(layers: list, prompt: torch.Tensor, steps: list[torch.Tensor], reduce) -> torch.Tensor:
    """Prefill the prompt, then decode each step, through the layers with residual adds; outputs [B, context, d].

    Each layer sees the RMS-normed residual, as in kvplan.models' decoder, so what is live per token is what the
    Estimator counts there: the residual stream, the normed input and the layer's intermediates. `reduce` sums
    a layer's output over the tensor-parallel ranks (in place) before it joins the residual. The prompt is the
    residual stream and is updated in place (no copy).
    """
    outputs = []
    h = prompt
    width = (prompt.size(-1),)
    for layer in layers:
        out = layer.prefill(F.rms_norm(h, width))
        reduce(out)
        h.add_(out)
    outputs.append(h)
    position = torch.tensor([prompt.size(1)], device=prompt.device)
    for x in steps:
        h = x
        for layer in layers:
            out = layer.decode(F.rms_norm(h, width), position)
            reduce(out)
            h.add_(out)
        outputs.append(h)
        position += 1
    return torch.cat(outputs, dim=1)


# --- one measurement --------------------------------------------------------------------------------------
LAYOUTS = ("tp", "dp")


@dataclass(frozen=True)
class Job:
    """One configuration to measure on every rank: a model slice (its first `layers` layers), batch (sequences
    in the whole deployment), context, and how the ranks share it (LAYOUTS)."""

    desc: Model  # already sliced to the layers that run
    batch: int
    context: int
    dtype: torch.dtype
    kv_dtype: str | None  # None: the compute dtype
    decode_steps: int = 3
    seed: int = 0
    full_layers: int = 0  # depth of the whole model, for the report
    parallel: str = "tp"  # "tp": every rank a shard of every sequence; "dp": every rank whole layers, its sequences

    def __post_init__(self) -> None:
        if self.parallel not in LAYOUTS:
            raise InputError(f"attention layout must be one of {', '.join(LAYOUTS)}, not {self.parallel!r}")

    def check(self, ranks: int) -> None:
        """InputError when the job cannot run on `ranks` ranks (before any collective, alike on every rank)."""
        if self.parallel == "tp":
            for kind, _ in self.desc.mixers():
                shard_spec(kind, ranks)
        else:
            rank_sequences(self.batch, ranks, 0)

    def run(self, device: torch.device) -> list[dict]:
        return profile_job(self, device)


def rank_sequences(batch: int, ranks: int, rank: int) -> tuple[int, int]:
    """(first, end) of the sequences data-parallel rank `rank` of `ranks` runs: batch // ranks each, one more on
    the first batch % ranks ranks, so the most loaded holds ceil(batch / ranks), as
    kvplan.parallel.sequences_per_rank counts."""
    if batch < ranks:
        raise InputError(f"{batch} sequences (or tokens) leave some of the {ranks} data-parallel ranks without one")
    share, extra = divmod(batch, ranks)
    first = rank * share + min(rank, extra)
    return first, first + share + (rank < extra)


def compute_format(dtype: torch.dtype) -> StorageFormat:
    """The kvplan StorageFormat of a torch compute dtype (weights and activations as the ranks hold them)."""
    return StorageFormat(str(dtype).removeprefix("torch."), torch.finfo(dtype).bits)


def cache_format(kv_dtype: str | None, dtype: torch.dtype) -> tuple[torch.dtype, StorageFormat]:
    """(torch dtype of the cache, its kvplan StorageFormat); a float64 cache gets a 64-bit format for the estimate."""
    cache_dtype, fmt = cache_storage(kv_dtype, dtype)
    if fmt is None:
        fmt = compute_format(cache_dtype)
    return cache_dtype, fmt


def attention_only(desc: Model) -> Model:
    """The model as this harness runs it: its attention layers alone (no feed-forward, no vocabulary), so the
    Estimator's per-GPU weights and activations describe exactly what each rank holds."""
    return replace(desc, ffn=FeedForward(0), vocab_size=0)


def estimator(job: Job, ranks: int, fmt: StorageFormat) -> Estimator:
    """The Estimator of the attention layers alone on `ranks` GPUs laid out as the job says."""
    compute = compute_format(job.dtype)
    layout = {"tp": ranks} if job.parallel == "tp" else {"dp": ranks}
    return Estimator(attention_only(job.desc), Deployment(gpu=get_gpu("h100-sxm"), kv_format=fmt,
                                                          weight_format=compute, activation_format=compute, **layout))


def rank_layers(job: Job, ranks: int, rank: int, batch: int, cache_dtype: torch.dtype,
                device: torch.device) -> list[torch.nn.Module]:
    """This rank's layers with caches for `batch` sequences: its tensor-parallel shard, or under dp the whole layers."""
    if job.parallel == "tp":
        layers = shard_layers(job.desc, ranks, rank, batch, job.context, cache_dtype, job.dtype, device, job.seed)
        for layer in layers:
            if hasattr(layer, "mid_all_reduce"):  # a sum inside the mixer over the ranks (Mamba's x_proj)
                layer.mid_all_reduce = dist.all_reduce
        return layers
    return build_layers(job.desc, [kind for kind, _ in job.desc.mixers()],
                        full_layer_states(job.desc, job.dtype, job.seed), batch, job.context, cache_dtype, job.dtype,
                        device)


def rank_inputs(job: Job, first: int, end: int, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rows first..end-1 of the whole batch's inputs (drawn as `inputs` draws them), each a tensor of its own."""
    prompt, steps = inputs(job.desc, job.batch, job.context, job.decode_steps, job.dtype, device, job.seed)
    if (first, end) == (0, job.batch):
        return prompt, steps
    return prompt[first:end].clone(), [x[first:end].clone() for x in steps]


def measure_rank(job: Job, device: torch.device) -> tuple[dict, torch.Tensor]:
    """This rank's layers: its row (cache bytes, weights, peak memory) and its output (all-reduced under tp;
    its own sequences' rows under dp)."""
    ranks, rank = dist.get_world_size(), dist.get_rank()
    first, end = (0, job.batch) if job.parallel == "tp" else rank_sequences(job.batch, ranks, rank)
    desc = job.desc
    cache_dtype, fmt = cache_format(job.kv_dtype, job.dtype)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        # The runtime's own buffers (the cuBLAS workspace a first matrix product allocates) are in place before
        # the baseline, as after the warm-up of a single-GPU profile; they are not the model's.
        torch.ones(8, 8, dtype=job.dtype, device=device).matmul(torch.ones(8, 8, dtype=job.dtype, device=device))
        torch.cuda.synchronize(device)
        runtime = torch.cuda.memory_allocated(device)
    layers = rank_layers(job, ranks, rank, end - first, cache_dtype, device)
    # RoPE tables (fp32 cos and sin per position) are the harness's, outside the estimate: measured, then left out.
    rope = {id(t): t.nbytes for layer in layers if hasattr(layer, "rope") for t in (layer.rope.cos, layer.rope.sin)}
    rope_bytes = sum(rope.values())
    if cuda:  # weights, cache and RoPE tables; the input hidden states count as activations, as the estimate's do
        torch.cuda.synchronize(device)
        resident = torch.cuda.memory_allocated(device)
    prompt, steps = rank_inputs(job, first, end, device)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # under dp the whole batch's inputs, drawn and sliced, are gone
        torch.cuda.reset_peak_memory_stats(device)
    output = run_layers(layers, prompt, steps, dist.all_reduce if job.parallel == "tp" else lambda out: None)
    peak = None
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - runtime - rope_bytes
    est = estimator(job, ranks, fmt)
    prompt_tokens = job.context - job.decode_steps
    row = {
        "rank": rank,
        "rank_batch": end - first,
        "cache_bytes": cache_bytes(layers),
        "cache_bytes_estimate": est.kv_cache_bytes_per_gpu(job.batch, job.context),
        "weights_bytes": sum(p.nbytes for layer in layers for p in layer.parameters()),
        "weights_bytes_estimate": est.weights_bytes_per_gpu,
        "peak_bytes": peak,
        "peak_bytes_estimate": (est.weights_bytes_per_gpu + est.kv_cache_bytes_per_gpu(job.batch, job.context)
                                + est.activation_bytes_per_gpu(job.batch, prompt_tokens)),
        "transient_bytes": None if peak is None else peak - (resident - runtime - rope_bytes),
        "transient_bytes_estimate": est.activation_bytes_per_gpu(job.batch, prompt_tokens),
    }
    del layers
    return row, output


def reference_output(job: Job, device: torch.device) -> torch.Tensor:
    """The unsharded layers on the same inputs (rank 0, after the shards are freed)."""
    cache_dtype, _ = cache_format(job.kv_dtype, job.dtype)
    layers = build_layers(job.desc, [kind for kind, _ in job.desc.mixers()],
                          full_layer_states(job.desc, job.dtype, job.seed), job.batch, job.context, cache_dtype,
                          job.dtype, device)
    prompt, steps = inputs(job.desc, job.batch, job.context, job.decode_steps, job.dtype, device, job.seed)
    return run_layers(layers, prompt, steps, lambda out: None)


def output_error(output: torch.Tensor, job: Job, device: torch.device, rows: slice = slice(None)) -> float | None:
    """max|output - unsharded| / max|unsharded| over the given batch rows of the unsharded layers' output; None
    when the unsharded layers do not fit on the GPU (they need what the ranks split between them)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        reference = reference_output(job, device)[rows]
        return ((output - reference).abs().max() / reference.abs().max()).item()
    except torch.cuda.OutOfMemoryError:
        return None


def profile_job(job: Job, device: torch.device) -> list[dict]:
    """Run one job on every rank (call on all of them); rank 0 returns one row per rank, the others []."""
    ranks, rank = dist.get_world_size(), dist.get_rank()
    if job.decode_steps >= job.context:
        raise InputError(f"context {job.context} leaves no prompt before {job.decode_steps} decode steps")
    row, output = measure_rank(job, device)
    if job.parallel == "dp":  # each rank checks its own sequences
        row["output_error"] = output_error(output, job, device, slice(*rank_sequences(job.batch, ranks, rank)))
    rows = [None] * ranks if rank == 0 else None
    dist.gather_object(row, rows, dst=0)
    if rank != 0:
        return []
    error = output_error(output, job, device) if job.parallel == "tp" else None
    del output
    tolerance = TOLERANCE[job.dtype]
    _, fmt = cache_format(job.kv_dtype, job.dtype)
    tp, dp = (ranks, 1) if job.parallel == "tp" else (1, ranks)
    common = {
        "model": job.desc.name, "attention": job.desc.kind_label, "parallel": job.parallel, "tp": tp, "dp": dp,
        "batch": job.batch, "context": job.context, "layers": job.desc.n_layers, "full_layers": job.full_layers or job.desc.n_layers,
        "dtype": str(job.dtype).removeprefix("torch."), "kv_dtype": fmt.name, "device": device.type,
        "backend": dist.get_backend(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "output_error": error, "output_tolerance": tolerance, "output_matches": None,
    }
    out = []
    for r in rows:
        r = {**common, **r}
        # None: the unsharded check did not fit
        r["output_matches"] = None if r["output_error"] is None else r["output_error"] <= tolerance
        r["cache_matches"] = r["cache_bytes"] == r["cache_bytes_estimate"]
        for figure in ("weights", "peak", "transient"):  # error of the estimate relative to the measurement
            measured = r[f"{figure}_bytes"]
            r[f"{figure}_error"] = None if not measured else r[f"{figure}_bytes_estimate"] / measured - 1
        out.append(r)
    return out


def run_jobs(jobs: list, device: torch.device, progress: bool = False, on_rows=None) -> list[dict]:
    """Every job (a Job or an expert.ExpertJob: anything with check(ranks) and run(device)) on every rank of the
    initialised process group; rank 0 returns all rows (and hands each job's rows to on_rows as they finish, so
    a run killed later loses nothing done)."""
    ranks = dist.get_world_size()
    for job in jobs:  # fail on every rank alike, before any collective, on a job that cannot be split
        job.check(ranks)
    rows: list[dict] = []
    bar = None
    if progress and dist.get_rank() == 0:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        task = bar.add_task(f"{ranks} ranks", total=len(jobs))
        bar.start()
    try:
        for job in jobs:
            done = job.run(device)
            rows += done
            if on_rows and done:
                on_rows(rows)
            if bar:
                bar.advance(task)
    finally:
        if bar:
            bar.stop()
    return rows
