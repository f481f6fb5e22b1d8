"""One configuration measured on every rank: build this rank's shard of the attention layers, prefill and
decode through them with the partial outputs all-reduced, and set what it holds beside the Estimator.

Every rank draws the same full layers (same seed) on the host and keeps its slice (shard.py); rank 0 then
checks the all-reduced output against the unsharded layers run on the same inputs.
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
        layer = layer_class(spec)(spec, desc.d_model, window, batch, context, rope, cache_dtype, dtype=dtype,
                                  device=device)
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
@dataclass(frozen=True)
class Job:
    """One configuration to measure on every rank: a model slice (its first `layers` layers), batch, context."""

    desc: Model  # already sliced to the layers that run
    batch: int
    context: int
    dtype: torch.dtype
    kv_dtype: str | None  # None: the compute dtype
    decode_steps: int = 3
    seed: int = 0
    full_layers: int = 0  # depth of the whole model, for the report


def cache_format(kv_dtype: str | None, dtype: torch.dtype) -> tuple[torch.dtype, StorageFormat]:
    """(torch dtype of the cache, its kvplan StorageFormat); a float64 cache gets a 64-bit format for the estimate."""
    cache_dtype, fmt = cache_storage(kv_dtype, dtype)
    if fmt is None:
        fmt = StorageFormat(str(cache_dtype).removeprefix("torch."), torch.finfo(cache_dtype).bits)
    return cache_dtype, fmt


def attention_only(desc: Model) -> Model:
    """The model as this harness runs it: its attention layers alone (no feed-forward, no vocabulary), so the
    Estimator's per-GPU weights and activations describe exactly what each rank holds."""
    return replace(desc, ffn=FeedForward(0), vocab_size=0)


def estimator(job: Job, tp: int, fmt: StorageFormat) -> Estimator:
    compute = StorageFormat(str(job.dtype).removeprefix("torch."), torch.finfo(job.dtype).bits)
    return Estimator(attention_only(job.desc), Deployment(gpu=get_gpu("h100-sxm"), tp=tp, kv_format=fmt,
                                                          weight_format=compute, activation_format=compute))


def measure_rank(job: Job, device: torch.device) -> tuple[dict, torch.Tensor]:
    """This rank's shard: its row (cache bytes, weights, peak memory) and the all-reduced output."""
    tp, rank = dist.get_world_size(), dist.get_rank()
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
    layers = shard_layers(desc, tp, rank, job.batch, job.context, cache_dtype, job.dtype, device, job.seed)
    # RoPE tables (fp32 cos and sin per position) are the harness's, outside the estimate: measured, then left out.
    rope = {id(t): t.nbytes for layer in layers if hasattr(layer, "rope") for t in (layer.rope.cos, layer.rope.sin)}
    rope_bytes = sum(rope.values())
    if cuda:  # weights, cache and RoPE tables; the input hidden states count as activations, as the estimate's do
        torch.cuda.synchronize(device)
        resident = torch.cuda.memory_allocated(device)
    prompt, steps = inputs(desc, job.batch, job.context, job.decode_steps, job.dtype, device, job.seed)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    output = run_layers(layers, prompt, steps, dist.all_reduce)
    peak = None
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - runtime - rope_bytes
    est = estimator(job, tp, fmt)
    prompt_tokens = job.context - job.decode_steps
    row = {
        "rank": rank,
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


def profile_job(job: Job, device: torch.device) -> list[dict]:
    """Run one job on every rank (call on all of them); rank 0 returns one row per rank, the others []."""
    tp, rank = dist.get_world_size(), dist.get_rank()
    if job.decode_steps >= job.context:
        raise InputError(f"context {job.context} leaves no prompt before {job.decode_steps} decode steps")
    row, output = measure_rank(job, device)
    rows = [None] * tp if rank == 0 else None
    dist.gather_object(row, rows, dst=0)
    if rank != 0:
        return []
    if device.type == "cuda":
        torch.cuda.empty_cache()
    tolerance = TOLERANCE[job.dtype]
    try:
        reference = reference_output(job, device)
        error = ((output - reference).abs().max() / reference.abs().max()).item()
        del reference
    except torch.cuda.OutOfMemoryError:  # the unsharded layers need tp times the split parts: may not fit
        error = None
    del output
    _, fmt = cache_format(job.kv_dtype, job.dtype)
    common = {
        "model": job.desc.name, "attention": job.desc.kind_label, "tp": tp, "batch": job.batch,
        "context": job.context, "layers": job.desc.n_layers, "full_layers": job.full_layers or job.desc.n_layers,
        "dtype": str(job.dtype).removeprefix("torch."), "kv_dtype": fmt.name, "device": device.type,
        "backend": dist.get_backend(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "output_error": error, "output_tolerance": tolerance,
        "output_matches": None if error is None else error <= tolerance,  # None: the unsharded check did not fit
    }
    out = []
    for r in rows:
        r = {**common, **r}
        r["cache_matches"] = r["cache_bytes"] == r["cache_bytes_estimate"]
        for figure in ("weights", "peak", "transient"):  # error of the estimate relative to the measurement
            measured = r[f"{figure}_bytes"]
            r[f"{figure}_error"] = None if not measured else r[f"{figure}_bytes_estimate"] / measured - 1
        out.append(r)
    return out


def run_jobs(jobs: list[Job], device: torch.device, progress: bool = False, on_rows=None) -> list[dict]:
    """Every job on every rank of the initialised process group; rank 0 returns all rows (and hands each job's
    rows to on_rows as they finish, so a run killed later loses nothing done)."""
    tp = dist.get_world_size()
    for job in jobs:  # fail on every rank alike, before any collective, on a layer that cannot be split
        for kind, _ in job.desc.mixers():
            shard_spec(kind, tp)
    rows: list[dict] = []
    bar = None
    if progress and dist.get_rank() == 0:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        task = bar.add_task(f"tp={tp} attention layers", total=len(jobs))
        bar.start()
    try:
        for job in jobs:
            done = profile_job(job, device)
            rows += done
            if on_rows and done:
                on_rows(rows)
            if bar:
                bar.advance(task)
    finally:
        if bar:
            bar.stop()
    return rows
