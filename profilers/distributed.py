"""Tensor-parallel attention layers under torch.distributed: per-GPU cache bytes and peak memory beside the estimate.

Each rank builds its shard of the first `layers` attention layers from kvplan.models' own classes: the
model's attention re-cast with n_heads/tp query heads and ceil(n_kv_heads/tp) KV heads, and the parts
kvplan.kinds says tensor parallelism replicates kept whole (MQA's KV head, MLA's latent projection
and norm, TPA's B factors, the DSA indexer). Every rank draws the same full layer (same seed) on the host
and copies its slice; the output projection's partial sums are all-reduced, so the sum over ranks is the
unsharded layer's output, which rank 0 checks against the full layer run on the same inputs.

Per rank it reports the bytes of its real cache tensors beside Estimator.kv_cache_bytes_per_gpu for the
same model slice, batch, context and tp; the bytes of its weights beside Estimator.weights_bytes_per_gpu
(which splits every weight evenly, so the replicated parts show up as its error); and on a GPU the peak
allocated memory (torch.cuda) of prefill and decode beside the Estimator's memory per GPU (weights + cache +
activations), and the part above the resident weights, cache and RoPE tables beside
activation_bytes_per_gpu. The Estimator describes the attention layers alone (the model with no
feed-forward and no vocabulary), as they run here. On the CPU peak memory is None.

Launch (nccl on cuda, gloo on cpu):
    torchrun --standalone --nproc_per_node 2 -m kvplan.profilers.distributed --model llama-3.1-8b \\
        --context 4k,32k --batch 1,8 --layers 1 --device cuda --out tp2.csv
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from kvplan.kinds import DSA, MLA, TPA, DenseAttention
from kvplan.dtypes import StorageFormat
from kvplan.estimator import Deployment, Estimator
from kvplan.hardware import get_gpu
from kvplan.model import FeedForward, Model
from kvplan.units import InputError

# Multicast (NVLS) stays off on the lent multi-GPU machines; every launch here sets both.
LAUNCH_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Largest max|sharded - unsharded| / max|unsharded| accepted per compute dtype: a few units in the last place,
# since sharding changes only the order of the sums (matmul blocking, the all-reduce).
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


# --- which slice each rank holds -------------------------------------------------------------------------
def _check_shardable(spec, tp: int) -> None:
    h = spec.n_heads
    if h % tp:
        raise InputError(f"{spec.label}: {h} heads do not split over tp={tp} GPUs")
    if isinstance(spec, DenseAttention) and spec.n_kv_heads % tp and tp % spec.n_kv_heads:
        raise InputError(f"{spec.label}: {spec.n_kv_heads} KV heads neither split over nor replicate evenly "
                         f"on tp={tp} GPUs")


def shard_spec(spec, tp: int):
    """The attention one GPU runs: n_heads/tp query heads; KV heads ceil(n_kv/tp) (replicated when tp > n_kv)."""
    _check_shardable(spec, tp)
    h = spec.n_heads // tp
    if isinstance(spec, DenseAttention):
        return replace(spec, n_heads=h, n_kv_heads=-(-spec.n_kv_heads // tp))
    if isinstance(spec, DSA):
        return replace(spec, mla=replace(spec.mla, n_heads=h))
    return replace(spec, n_heads=h)


def _heads(weight: torch.Tensor, n_heads: int, first: int, count: int, dim: int = 0) -> torch.Tensor:
    """Heads first..first+count-1 of a weight whose dimension `dim` is n_heads blocks of equal width."""
    blocks = weight.unflatten(dim, (n_heads, -1))
    return blocks.narrow(dim, first, count).flatten(dim, dim + 1)


def shard_state(spec, state: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s slice of a full layer's weights (state_dict of the unsharded layer); the rest copied whole."""
    h = spec.n_heads // tp
    first = rank * h  # this rank's first query head
    out = dict(state)  # replicated parts: everything not re-sliced below
    if isinstance(spec, DenseAttention):
        n, kv, d = spec.n_heads, spec.n_kv_heads, spec.head_dim
        kv_here = -(-kv // tp)
        kv_first = first // (n // kv)  # the KV head of this rank's first query head
        for name in [k for k in state if k.startswith("wqkv.")]:
            q, k, v = state[name].split((n * d, kv * d, kv * d), dim=0)
            out[name] = torch.cat([_heads(q, n, first, h), _heads(k, kv, kv_first, kv_here),
                                   _heads(v, kv, kv_first, kv_here)])
        out["wo.weight"] = _heads(state["wo.weight"], n, first, h, dim=1)
    elif isinstance(spec, (MLA, DSA)):
        mla = spec.mla if isinstance(spec, DSA) else spec
        n = mla.n_heads
        for name in ("wq.weight", "wq_b.weight", "wkv_b.weight"):  # per-head rows; wq_a, wkv_a, norms shared
            if name in state:
                out[name] = _heads(state[name], n, first, h)
        out["wo.weight"] = _heads(state["wo.weight"], n, first, h, dim=1)
    elif isinstance(spec, TPA):
        n, d = spec.n_heads, spec.head_dim
        ranks = spec.q_rank + spec.k_rank + spec.v_rank
        a, b = state["w_factors.weight"].split((ranks * n, ranks * d), dim=0)
        a_here = a.unflatten(0, (ranks, n)).narrow(1, first, h).flatten(0, 1)  # each rank's A over these heads
        out["w_factors.weight"] = torch.cat([a_here, b])  # B factors (all heads share them) whole
        out["wo.weight"] = _heads(state["wo.weight"], n, first, h, dim=1)
    else:
        raise InputError(f"no tensor-parallel shard for attention {type(spec).__name__}")
    return {k: v.contiguous() for k, v in out.items()}


# --- building and running the layers ---------------------------------------------------------------------
def _layer_class(spec):
    from kvplan.models.transformer import layer_class

    return layer_class(spec)


def _rope(spec, context: int, device, convention: str = "hf"):
    from kvplan.models.common import Rope

    return Rope(spec.rope_dim, context, device=device, convention=convention)


def full_layer_states(desc: Model, dtype: torch.dtype, seed: int) -> list[dict[str, torch.Tensor]]:
    """Weights of the unsharded attention layers, drawn on the host as kvplan.models.build draws them (matrices
    N(0, 1/fan_in), biases zero, norms one), so every rank with the same seed holds the same full layers."""
    generator = torch.Generator().manual_seed(seed)
    states = []
    for window in desc.layer_windows:
        layer = _layer_class(desc.attention)(desc.attention, desc.d_model, window, 1, 1, _rope(desc.attention, 1, None),
                                             torch.float32, dtype=dtype)  # a 1-token cache: only the weights matter
        with torch.no_grad():
            for name, param in layer.named_parameters():
                if name.endswith("bias"):
                    param.zero_()
                elif param.dim() == 2:
                    param.normal_(0.0, param.size(1) ** -0.5, generator=generator)
        states.append(layer.state_dict())
    return states


def build_layers(desc: Model, spec, states: list[dict], batch: int, context: int, cache_dtype: torch.dtype,
                 dtype: torch.dtype, device: torch.device) -> list[torch.nn.Module]:
    """Attention layers of kind `spec` (a shard or the full layer) with caches for batch x context, loaded from states."""
    rope = _rope(spec, context, device, desc.rope_convention)
    layers = []
    for window, state in zip(desc.layer_windows, states):
        layer = _layer_class(spec)(spec, desc.d_model, window, batch, context, rope, cache_dtype, dtype=dtype,
                                   device=device)
        layer.load_state_dict(state, strict=True)  # a slice of the wrong shape or a missing weight fails here
        layers.append(layer.eval().requires_grad_(False))
    return layers


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

    `reduce` sums a layer's output over the tensor-parallel ranks (in place) before it joins the residual.
    The prompt is the residual stream and is updated in place (no copy, as in kvplan.models' decoder).
    """
    outputs = []
    h = prompt
    for layer in layers:
        out = layer.prefill(h)
        reduce(out)
        h.add_(out)
    outputs.append(h)
    position = torch.tensor([prompt.size(1)], device=prompt.device)
    for x in steps:
        h = x
        for layer in layers:
            out = layer.decode(h, position)
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
    from kvplan.models.common import cache_storage

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
    spec = shard_spec(desc.attention, tp)
    cache_dtype, fmt = cache_format(job.kv_dtype, job.dtype)
    states = [shard_state(desc.attention, s, tp, rank) for s in full_layer_states(desc, job.dtype, job.seed)]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    layers = build_layers(desc, spec, states, job.batch, job.context, cache_dtype, job.dtype, device)
    del states
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
        peak = torch.cuda.max_memory_allocated(device)
    est = estimator(job, tp, fmt)
    prompt_tokens = job.context - job.decode_steps
    row = {
        "rank": rank,
        "cache_bytes": sum(buf.nbytes for layer in layers for buf in layer.cache_buffers()),
        "cache_bytes_estimate": est.kv_cache_bytes_per_gpu(job.batch, job.context),
        "weights_bytes": sum(p.nbytes for layer in layers for p in layer.parameters()),
        "weights_bytes_estimate": est.weights_bytes_per_gpu,
        "peak_bytes": peak,
        "peak_bytes_estimate": (est.weights_bytes_per_gpu + est.kv_cache_bytes_per_gpu(job.batch, job.context)
                                + est.activation_bytes_per_gpu(job.batch, prompt_tokens)),
        "transient_bytes": None if peak is None else peak - resident,
        "transient_bytes_estimate": est.activation_bytes_per_gpu(job.batch, prompt_tokens),
    }
    del layers
    return row, output


def reference_output(job: Job, device: torch.device) -> torch.Tensor:
    """The unsharded layers on the same inputs (rank 0, after the shards are freed)."""
    cache_dtype, _ = cache_format(job.kv_dtype, job.dtype)
    layers = build_layers(job.desc, job.desc.attention, full_layer_states(job.desc, job.dtype, job.seed), job.batch,
                          job.context, cache_dtype, job.dtype, device)
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


# --- the process group, the command line, launching ------------------------------------------------------
COLUMNS = [
    ("attention", "attention"), ("tp", "tp"), ("rank", "rank"), ("batch", "batch"), ("context", "context"),
    ("cache MiB", "cache_bytes"), ("cache est MiB", "cache_bytes_estimate"), ("cache ok", "cache_matches"),
    ("weights MiB", "weights_bytes"), ("weights est MiB", "weights_bytes_estimate"),
    ("peak MiB", "peak_bytes"), ("peak est MiB", "peak_bytes_estimate"), ("peak err", "peak_error"),
    ("transient MiB", "transient_bytes"), ("transient est MiB", "transient_bytes_estimate"),
    ("output err", "output_error"), ("output ok", "output_matches"),
]


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "[green]yes[/]" if value else "[red]no[/]"
    if key.endswith("_error") and key != "output_error":
        return f"{value:+.1%}"
    if key == "output_error":
        return f"{value:.1e}"
    if key.endswith("_bytes") or key.endswith("_bytes_estimate"):
        return f"{value / 2**20:,.3f}"
    return str(value)


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if not rows:
        return
    first = rows[0]
    table = Table(title=f"{escape(first['model'])}: tensor-parallel attention, {first['layers']} of "
                        f"{first['full_layers']} layers, {first['dtype']} compute, {first['kv_dtype']} cache, "
                        f"{first['backend']} on {escape(first['gpu'])}",
                  caption="MiB = 2^20 bytes. est: kvplan's Estimator for the attention layers alone at the same tp "
                          "(err = est / measured - 1). output: max|sharded - unsharded| / max|unsharded| on rank 0.",
                  caption_justify="left")
    for header, _ in COLUMNS:
        table.add_column(header, justify="left" if header == "attention" else "right")
    for row in rows:
        table.add_row(*(escape(_cell(key, row[key])) if key == "attention" else _cell(key, row[key])
                        for _, key in COLUMNS))
    Console(width=240).print(table)


def write_rows(rows: list[dict], path: str) -> None:
    """JSON (a list of rows) for a .json path, else CSV."""
    import csv

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".json":
        target.write_text(json.dumps(rows, indent=1) + "\n")
        return
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def jobs_for(model: str, attentions: list[str], contexts: list[int], batches: list[int], layers: int,
             dtype: torch.dtype, kv_dtype: str | None, decode_steps: int, seed: int) -> list[Job]:
    from kvplan.api import resolve_model
    from kvplan.models import sliced

    jobs = []
    for spec in attentions or ["native"]:
        desc = resolve_model(model, None if spec == "native" else spec)
        part = sliced(desc, layers)
        jobs += [Job(part, b, c, dtype, kv_dtype, decode_steps, seed, desc.n_layers) for c in contexts for b in batches]
    return jobs


def run_jobs(jobs: list[Job], device: torch.device, progress: bool = False, on_rows=None) -> list[dict]:
    """Every job on every rank of the initialised process group; rank 0 returns all rows (and hands each job's
    rows to on_rows as they finish, so a run killed later loses nothing done)."""
    tp = dist.get_world_size()
    for job in jobs:  # fail on every rank alike, before any collective, on a layer that cannot be split
        shard_spec(job.desc.attention, tp)
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


def init_process_group(device_type: str, rank: int | None = None, world_size: int | None = None,
                       init_method: str | None = None) -> torch.device:
    """nccl on cuda (one GPU per local rank), gloo on the CPU; rank/world_size from torchrun's environment
    unless given."""
    for key, value in LAUNCH_ENV.items():
        os.environ.setdefault(key, value)
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("no CUDA GPU found (torch.cuda.is_available() is False); use --device cpu")
        local = int(os.environ.get("LOCAL_RANK", rank or 0))
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_available() or (backend == "gloo" and not dist.is_gloo_available()):
        raise InputError(f"torch.distributed with the {backend} backend is not available in this torch build")
    options = {} if rank is None else {"rank": rank, "world_size": world_size}
    if device_type == "cuda":
        options["device_id"] = device
    dist.init_process_group(backend, init_method=init_method, **options)
    return device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m kvplan.profilers.distributed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", "-m", required=True, help="preset name or config.json path")
    parser.add_argument("--attention", "-a", action="append", help="re-cast(s), as kvplan estimate's --attention")
    parser.add_argument("--context", "-c", default="4k", help="tokens per sequence, comma-separated")
    parser.add_argument("--batch", "-b", default="1", help="sequences, comma-separated")
    parser.add_argument("--layers", type=int, default=1, help="run the first N attention layers")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="compute dtype (default bf16 on cuda, fp64 on cpu)")
    parser.add_argument("--kv-dtype", default="auto", help="cache format: bf16, fp16, fp32, fp8, or auto (the "
                        "compute dtype)")
    parser.add_argument("--decode-steps", type=int, default=3, help="decode steps after the prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", "-o", help="write the rows here: .json, else CSV")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    return parser.parse_args(argv)


def _jobs_from_args(args: argparse.Namespace) -> list[Job]:
    from kvplan.recast import split_specs
    from kvplan.units import parse_token_list

    if args.layers < 1 or args.decode_steps < 1:
        raise InputError("--layers and --decode-steps must be at least 1")
    dtype = DTYPES[args.dtype or ("bf16" if args.device == "cuda" else "fp64")]
    kv_dtype = None if args.kv_dtype == "auto" else args.kv_dtype
    cache_format(kv_dtype, dtype)  # an unknown kv dtype fails here, in one line
    return jobs_for(args.model, split_specs(args.attention), parse_token_list(args.context, "--context"),
                    parse_token_list(args.batch, "--batch"), args.layers, dtype, kv_dtype, args.decode_steps,
                    args.seed)


def main(argv: list[str] | None = None) -> int:
    """Entry point on every rank under torchrun; rank 0 prints and writes the rows. Exit 2 on bad input."""
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        jobs = _jobs_from_args(args)
        device = init_process_group(args.device)
    except InputError as error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        rows = run_jobs(jobs, device, progress=not args.json,
                        on_rows=(lambda done: write_rows(done, args.out)) if args.out else None)
    except InputError as error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        dist.destroy_process_group()
    if rank == 0:
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print_table(rows)
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, argv: list[str], timeout: float | None = None) -> list[dict]:
    """Run this module under torchrun on `nproc` local processes with the given arguments (as on the command line,
    without --out/--json) and return rank 0's rows. What `kvplan profile --gpus N` calls."""
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "rows.json")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "kvplan.profilers.distributed", *argv, "--out", out, "--json"]
        env = {**os.environ, **LAUNCH_ENV, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
            raise InputError(lines[0].removeprefix("error: ") if lines else
                             f"torchrun exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        return json.loads(Path(out).read_text())


def _spawned(rank: int, nproc: int, port: int, jobs: list[Job], out: str) -> None:
    torch.set_num_threads(1)  # nproc processes share the host's cores
    device = init_process_group("cpu", rank, nproc, f"tcp://127.0.0.1:{port}")
    try:
        rows = run_jobs(jobs, device)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(rows))


def spawn_cpu(jobs: list[Job], nproc: int = 2) -> list[dict]:
    """Run jobs on `nproc` CPU processes (gloo) started with torch.multiprocessing; rank 0's rows."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "rows.json")
        mp.spawn(_spawned, args=(nproc, free_port(), jobs, out), nprocs=nproc, join=True)
        return json.loads(Path(out).read_text())


if __name__ == "__main__":
    sys.exit(main())
