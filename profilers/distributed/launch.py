"""The command line every rank parses (argparse), the process group, and two launchers: torchrun (what
`kvplan profile --gpus N` runs) and torch.multiprocessing on the CPU."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from kvplan.hardware import get_gpu
from kvplan.units import InputError

from .expert import ExpertJob, moe_model, reestimate
from .measure import LAYOUTS, Job, cache_format, run_jobs
from .report import print_table, write_rows

# NVLink multicast (NCCL's NVLS, torch's symmetric-memory multicast) stays off in every launch here.
LAUNCH_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


PARALLEL = (*LAYOUTS, "ep")


def jobs_for(model: str, attentions: list[str], contexts: list[int], batches: list[int], layers: int,
             dtype: torch.dtype, kv_dtype: str | None, decode_steps: int, seed: int, parallel: str = "tp") -> list[Job]:
    """Attention jobs: every attention x context x batch, the model's first `layers` layers, laid out as `parallel`
    says (tp or dp)."""
    from kvplan.api import resolve_model
    from kvplan.models import sliced

    jobs = []
    for spec in attentions or ["native"]:
        desc = resolve_model(model, None if spec == "native" else spec)
        part = sliced(desc, layers)
        jobs += [Job(part, b, c, dtype, kv_dtype, decode_steps, seed, desc.n_layers, parallel)
                 for c in contexts for b in batches]
    return jobs


def expert_jobs_for(model: str, tokens: list[int], dtype: torch.dtype, seed: int, repeats: int,
                    gpu: str) -> list[ExpertJob]:
    """Expert-parallel jobs: one MoE layer of the model per token count."""
    from kvplan.api import resolve_model

    desc = resolve_model(model, None)
    return [ExpertJob(moe_model(desc), t, dtype, seed, repeats, gpu, desc.n_layers) for t in tokens]


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
                                     description=sys.modules[__package__].__doc__.split("\n\n")[0])
    parser.add_argument("--model", "-m", help="preset name or config.json path (required unless --reestimate)")
    parser.add_argument("--parallel", choices=PARALLEL, default="tp", help="tp: attention layers split over the "
                        "ranks' heads; dp: whole attention layers, each rank its share of the batch; ep: one MoE "
                        "layer, its routed experts spread whole over the ranks (default tp)")
    parser.add_argument("--tokens", "-t", help="ep: tokens of one forward over all ranks, comma-separated "
                        "(default: the --batch values, a decode step of that many sequences)")
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
    parser.add_argument("--repeats", type=int, default=10, help="ep: timed samples per all-to-all (median)")
    parser.add_argument("--gpu", default="auto", help="ep: GPU preset of the communication estimate (auto: the "
                        "local GPU's; h100-sxm on the CPU)")
    parser.add_argument("--out", "-o", help="write the rows here: .json, else CSV")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("--reestimate", metavar="FILE", help="ep: derive the estimate columns of the measured rows "
                        "in FILE (.json or CSV) again with this version's formulas and rewrite it; no GPU, no ranks")
    return parser.parse_args(argv)


def _jobs_from_args(args: argparse.Namespace) -> list:
    from kvplan.recast import split_specs
    from kvplan.units import parse_token_list

    if not args.model:
        raise InputError("--model is required (or --reestimate FILE)")
    if args.layers < 1 or args.decode_steps < 1 or args.repeats < 1:
        raise InputError("--layers, --decode-steps and --repeats must be at least 1")
    dtype = DTYPES[args.dtype or ("bf16" if args.device == "cuda" else "fp64")]
    if args.parallel == "ep":
        if args.attention:
            raise InputError("--parallel ep runs the model's MoE layer: it takes no --attention")
        tokens = parse_token_list(args.tokens or args.batch, "--tokens")
        if args.gpu != "auto":
            get_gpu(args.gpu)  # an unknown preset fails here, in one line
        return expert_jobs_for(args.model, tokens, dtype, args.seed, args.repeats, args.gpu)
    if args.tokens:
        raise InputError(f"--tokens is for --parallel ep; --parallel {args.parallel} takes --batch and --context")
    kv_dtype = None if args.kv_dtype == "auto" else args.kv_dtype
    cache_format(kv_dtype, dtype)  # an unknown kv dtype fails here, in one line
    return jobs_for(args.model, split_specs(args.attention), parse_token_list(args.context, "--context"),
                    parse_token_list(args.batch, "--batch"), args.layers, dtype, kv_dtype, args.decode_steps,
                    args.seed, args.parallel)


def main(argv: list[str] | None = None) -> int:
    """Entry point on every rank under torchrun; rank 0 prints and writes the rows. Exit 2 on bad input."""
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        if args.reestimate:
            _print_rows(reestimate_file(args.reestimate), args.json)
            return 0
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
        _print_rows(rows, args.json)
    return 0


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        print_table(rows)


def reestimate_file(path: str) -> list[dict]:
    """Rewrite the expert-parallel rows in `path` (.json or CSV) with their estimates derived again (reestimate)."""
    from ..store import read_rows

    if not Path(path).is_file():
        raise InputError(f"{path} is not a file")
    if path.endswith(".json"):
        try:
            rows = json.loads(Path(path).read_text())
        except ValueError as error:
            raise InputError(f"{path} is not JSON: {error}") from None
    else:
        rows = read_rows(path)
    if not rows or not all(isinstance(row, dict) and row.get("parallel") == "ep" for row in rows):
        raise InputError(f"{path} holds no expert-parallel rows (parallel ep) to estimate again")
    try:
        rows = [reestimate(row) for row in rows]
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: a row lacks or garbles a measured column ({error})") from None
    write_rows(rows, path)
    return rows


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


def _spawned(rank: int, nproc: int, port: int, jobs: list, out: str) -> None:
    torch.set_num_threads(1)  # nproc processes share the host's cores
    device = init_process_group("cpu", rank, nproc, f"tcp://127.0.0.1:{port}")
    try:
        rows = run_jobs(jobs, device)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(rows))


def spawn_cpu(jobs: list, nproc: int = 2) -> list[dict]:
    """Run jobs (Job or ExpertJob) on `nproc` CPU processes (gloo) started with torch.multiprocessing; rank 0's
    rows."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "rows.json")
        mp.spawn(_spawned, args=(nproc, free_port(), jobs, out), nprocs=nproc, join=True)
        return json.loads(Path(out).read_text())
