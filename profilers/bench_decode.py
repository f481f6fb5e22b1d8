"""Decode-step speed of every attention kind, as a fraction of the GPU's measured memory bandwidth.

    python3 -m kvplan.profilers.bench_decode --out DIR            # on a GPU (about 5 minutes on an H100)
    python3 -m kvplan.profilers.bench_decode --device cpu --smoke --out DIR   # tiny models, checks the script

For each kind at batch 1 and 16 and contexts 8k, 32k, 128k (rows that would not fit are skipped): the
decode step of a layer slice, replayed from a CUDA graph (median of repeats, CUDA events, timed as measure times
decode: once the GPU's clocks are back from any power cap and after DECODE_STEADY_SECONDS of the same steps), over a
cache filled with random values for exactly batch x context tokens (decode writes position context-1). The bytes
a step must read are the estimate's (Estimator.weights_read_bytes + decode_cache_read_bytes: every weight,
every cached byte, DSA only its top-k latents); achieved bandwidth = bytes / step time, set against a large
device copy measured here (bytes read + written). TPA and MHA share d_model and heads (t6-medium), so the
ratio of their step times can be set against the ratio of their cache bytes. Each kind but the window runs
twice: through the Triton kernels (kvplan.models.triton_decode; the launch config each kernel timed fastest on the
first call is in the kernel_config column) and through the PyTorch path (the "-torch" rows); TPA also runs
in the contraction order its shape does not pick (the "tpa-rebuild" rows at t6-medium, where FlashTPA's order
is the one with fewer FLOPs).
Writes DIR/bench_decode.csv and prints three tables last: every row, MHA vs TPA, kernels vs PyTorch.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from kvplan.dtypes import FORMATS
from kvplan.kinds import MLA, DenseAttention
from kvplan.estimator import Deployment, Estimator
from kvplan.hardware import get_gpu
from kvplan.model import FeedForward, Model
from kvplan.presets import get_preset
from kvplan.models import build, sliced, triton_decode
from kvplan.recast import recast
from kvplan.units import InputError, parse_token_list

from .calibrate import copy_bandwidth
from .store import ResultsFile
from .measure import DECODE_STEADY_SECONDS, Settings, _decode_callable
from .timing import free_memory, median_seconds, run_for, settle

GiB = 2**30


@dataclass(frozen=True)
class Case:
    kind: str
    model: Model  # already sliced
    triton: bool = True  # False: decode through the PyTorch path even where a Triton kernel could run
    order: str | None = None  # TPA's decode contraction order; None: the one TPA.decode_order picks


def gpu_cases() -> list[Case]:
    llama, t6 = get_preset("llama-3.1-8b"), get_preset("t6-medium")
    return [
        Case("gqa", sliced(llama, 4)),
        Case("gqa-torch", sliced(llama, 4), triton=False),
        Case("mqa", sliced(recast(llama, "mqa"), 4)),
        Case("mqa-torch", sliced(recast(llama, "mqa"), 4), triton=False),
        Case("mha", sliced(recast(t6, "mha"), 2)),  # t6-medium's 47 heads of 64, as TPA below
        Case("mha-torch", sliced(recast(t6, "mha"), 2), triton=False),
        Case("tpa", sliced(t6, 2)),  # the Triton kernel where Triton is installed
        Case("tpa-torch", sliced(t6, 2), triton=False),
        Case("tpa-rebuild", sliced(t6, 2), order="rebuild"),  # the order t6-medium does not pick, for comparison
        Case("tpa-rebuild-torch", sliced(t6, 2), triton=False, order="rebuild"),
        Case("mla", sliced(get_preset("deepseek-v3"), 3)),  # its 3 dense layers; the Triton kernel where installed
        Case("mla-torch", sliced(get_preset("deepseek-v3"), 3), triton=False),
        Case("dsa", sliced(get_preset("deepseek-v3.2-exp"), 3)),  # Triton indexer where Triton is installed
        Case("dsa-torch", sliced(get_preset("deepseek-v3.2-exp"), 3), triton=False),
        Case("window", sliced(get_preset("mistral-7b-v0.1"), 4)),  # 4096-token ring
    ]


def smoke_cases() -> list[Case]:
    mla = MLA.example()
    base = Model(name="smoke", n_layers=2, d_model=64, vocab_size=256, attention=DenseAttention(4, 4, 16),
                 ffn=FeedForward(128))
    return [Case("gqa", recast(base, "gqa:kv_heads=2")), Case("mqa", recast(base, "mqa")), Case("mha", base),
            Case("tpa", recast(base, "tpa")), Case("tpa-torch", recast(base, "tpa"), triton=False),
            Case("tpa-rebuild", recast(base, "tpa"), order="rebuild"),
            Case("mla", replace(base, attention=mla)), Case("mla-torch", replace(base, attention=mla), triton=False),
            Case("dsa", recast(base, "dsa:index_topk=32,index_n_heads=4,index_head_dim=16")),
            Case("window", recast(base, "window:48"))]


def fill_cache_randomly(net, seed: int) -> None:
    """Random keys so attention weights, DSA's indexer and its top-k behave as on real data."""
    generator = torch.Generator(device=net.cache_tensors()[0].device).manual_seed(seed)
    for buf in net.cache_tensors():
        if buf.dtype == torch.float8_e4m3fn:
            buf.view(torch.uint8).random_(0, 0x7F, generator=generator)  # finite e4m3 values, no NaN (0x7F)
        elif buf.dtype == torch.float32 and buf.dim() == 3 and buf.size(-1) <= 4:
            buf.fill_(1.0 / 448)  # DSA indexer scales
        else:
            buf.normal_(generator=generator)


def estimator_of(model: Model) -> Estimator:
    """The estimate of the model as built here: bf16 weights, whatever format its checkpoint stores (the GPU preset
    does not enter bytes)."""
    return Estimator(model, Deployment(get_gpu("h100-sxm"), weight_format=FORMATS["bf16"]))


def transient_bytes(model: Model, batch: int, context: int) -> int:
    """A generous bound on decode temporaries: the kind's scratch elements at 8 bytes each, plus 1 GiB."""
    return 8 * batch * model.attention.decode_scratch_elements(context) + GiB


def bench_row(case: Case, batch: int, context: int, device: torch.device, dtype: torch.dtype, copy_bps: float,
              repeats: int) -> dict:
    est = estimator_of(case.model)
    weights_read = est.weights_read_bytes(batch)
    cache_read = est.decode_cache_read_bytes(batch, context)
    row = {"kind": case.kind, "model": case.model.name, "layers": case.model.n_layers, "batch": batch,
           "context": context, "weights_read_bytes": int(weights_read), "cache_read_bytes": int(cache_read),
           "bytes_read": int(weights_read + cache_read), "cache_bytes": est.kv_cache_bytes(batch, context)}
    triton_decode.ENABLED = case.triton
    net = build(case.model, max_batch=batch, max_context=context, dtype=dtype, device=str(device), kv_dtype="bf16")
    try:
        assert net.cache_bytes_allocated() == row["cache_bytes"]
        for block in net.layers if case.order else ():
            block.attention.decode_order = case.order
        fill_cache_randomly(net, seed=context + batch)
        tokens = torch.randint(0, case.model.vocab_size, (batch, 1), device=device)
        position = torch.tensor([context - 1], device=device)
        with torch.inference_mode():
            call, how = _decode_callable(net, tokens, position, Settings(device=device, dtype=dtype))
            # As measure times decode: once the clocks are back from the kernels' tuning and after a stretch of
            # steps, so the samples see the GPU as steady decoding keeps it.
            settle(device)
            if device.type == "cuda":
                run_for(call, device, DECODE_STEADY_SECONDS)
            seconds, _ = median_seconds(call, device, repeats, warmup=3)
            del call
        if device.type == "cuda":
            how += " + triton" if case.triton and triton_decode.HAVE_TRITON else " (pytorch path)"
            row["kernel_config"] = " ".join(f"{key[0]}:{'x'.join(map(str, config))}"
                                            for key, config in triton_decode.CHOSEN.items())
            for key, times in triton_decode.TIMINGS.items():
                print(f"  timed {key}: " + ", ".join(f"{'x'.join(map(str, c))} {ms:.3f} ms" for ms, c in times))
            triton_decode.CHOSEN.clear()
            triton_decode.TIMINGS.clear()
        row.update(mode=how, step_ms=seconds * 1e3, achieved_GBps=row["bytes_read"] / seconds / 1e9,
                   copy_GBps=copy_bps / 1e9, fraction_of_copy=row["bytes_read"] / seconds / copy_bps)
    finally:
        triton_decode.ENABLED = True
        del net
        free_memory(device)
    return row


def comparison_rows(rows: list[dict]) -> list[list[str]]:
    """TPA (kernel and PyTorch path) against MHA at the same d_model and heads (t6-medium): the step-time ratio
    beside the ratios of cache bytes and of all bytes read (weights included), the bound a step-time ratio
    can reach when both run at the same bandwidth."""
    out = []
    timed = {(r["kind"], r["batch"], r["context"]): r for r in rows if "step_ms" in r}
    for (kind, batch, context), tpa in sorted(timed.items(), key=lambda item: (item[0][1], item[0][2], item[0][0])):
        mha = timed.get(("mha", batch, context))
        if not kind.startswith("tpa") or mha is None:
            continue
        time_ratio, bytes_ratio = mha["step_ms"] / tpa["step_ms"], mha["bytes_read"] / tpa["bytes_read"]
        out.append([kind, str(batch), str(context), f"{mha['step_ms']:.3f}", f"{tpa['step_ms']:.3f}", f"{time_ratio:.2f}x",
                    f"{mha['cache_bytes'] / tpa['cache_bytes']:.2f}x", f"{bytes_ratio:.2f}x",
                    f"{100 * time_ratio / bytes_ratio:.0f}%"])
    return out


def kernel_rows(rows: list[dict]) -> list[list[str]]:
    """Each Triton-served kind against its PyTorch path (the "-torch" rows): step times and the speed-up."""
    out = []
    timed = {(r["kind"], r["batch"], r["context"]): r for r in rows if "step_ms" in r}
    for (kind, batch, context), torch_row in sorted(timed.items()):
        if not kind.endswith("-torch") or (kind[:-6], batch, context) not in timed:
            continue
        kernel = timed[(kind[:-6], batch, context)]
        out.append([kind[:-6], str(batch), str(context), f"{torch_row['step_ms']:.3f}", f"{kernel['step_ms']:.3f}",
                    f"{torch_row['step_ms'] / kernel['step_ms']:.2f}x", f"{100 * torch_row['fraction_of_copy']:.0f}%",
                    f"{100 * kernel['fraction_of_copy']:.0f}%", kernel.get("kernel_config", "")])
    return out


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="decode step: bytes read (weights + cache, from the estimate) / step time vs device copy")
    for name in ("kind", "layers", "batch", "context", "GiB read", "step ms", "GB/s", "of copy", "mode"):
        table.add_column(name, justify="left" if name in ("kind", "mode") else "right")
    for r in rows:
        if "step_ms" not in r:
            table.add_row(r["kind"], str(r["layers"]), str(r["batch"]), str(r["context"]),
                          f"{r['bytes_read'] / GiB:.2f}", "-", "-", "-", r.get("mode", "skipped"))
            continue
        table.add_row(r["kind"], str(r["layers"]), str(r["batch"]), str(r["context"]), f"{r['bytes_read'] / GiB:.2f}",
                      f"{r['step_ms']:.3f}", f"{r['achieved_GBps']:.0f}", f"{100 * r['fraction_of_copy']:.0f}%", r["mode"])
    console = Console(width=160)  # a captured log is not a terminal: rich would fold the tables to 80 columns
    console.print(table)
    for title, names, lines in (
            ("MHA vs TPA at t6-medium's d_model and heads: step-time ratio against the byte ratios",
             ("tpa row", "batch", "context", "MHA ms", "TPA ms", "MHA/TPA time", "cache bytes", "bytes read",
              "time / bytes"), comparison_rows(rows)),
            ("Triton kernels against the PyTorch path (same model, same bytes)",
             ("kind", "batch", "context", "pytorch ms", "triton ms", "speed-up", "pytorch of copy", "triton of copy",
              "launch config"), kernel_rows(rows))):
        if lines:
            extra = Table(title=title)
            for name in names:
                extra.add_column(name, justify="left" if name in ("tpa row", "kind", "launch config") else "right")
            for line in lines:
                extra.add_row(*line)
            console.print(extra)


FIELDS = ["kind", "model", "layers", "batch", "context", "mode", "step_ms", "bytes_read", "weights_read_bytes",
          "cache_read_bytes", "cache_bytes", "achieved_GBps", "copy_GBps", "fraction_of_copy", "kernel_config"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for bench_decode.csv")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--smoke", action="store_true", help="tiny models and contexts (for the CPU)")
    parser.add_argument("--kinds", default="", help="comma-separated subset of kinds, e.g. tpa,mha")
    parser.add_argument("--batches", default="", help="comma-separated batches (default 1,16; smoke 1,2)")
    parser.add_argument("--contexts", default="", help="comma-separated contexts, e.g. 8k,128k (default 8k,32k,128k;"
                                                        " smoke 64,256)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-gib", type=float, default=72.0, help="skip rows needing more than this")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU visible; use --device cpu --smoke")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cases = smoke_cases() if args.smoke else gpu_cases()
    if args.kinds:
        wanted = set(args.kinds.split(","))
        cases = [c for c in cases if c.kind in wanted]
    try:
        batches = parse_token_list(args.batches or ("1,2" if args.smoke else "1,16"), "--batches")
        contexts = parse_token_list(args.contexts or ("64,256" if args.smoke else "8k,32k,128k"), "--contexts")
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    copy_bps = copy_bandwidth(device, (64 * 2**20) if args.smoke else 2 * GiB, repeats=args.repeats)
    print(f"device copy: {copy_bps / 1e9:.0f} GB/s (read + written)", flush=True)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Each row is appended (and fsynced) as it finishes, so a crash or a kill keeps what was measured.
    out_file = out_dir / "bench_decode.csv"
    out_file.unlink(missing_ok=True)
    results = ResultsFile(out_file, FIELDS, resume=False)
    rows, began = [], time.perf_counter()
    for case in cases:
        for batch in batches:
            for context in contexts:
                est = estimator_of(case.model)
                need = est.weights_bytes + est.kv_cache_bytes(batch, context) + transient_bytes(case.model, batch, context)
                if not args.smoke and need > args.memory_gib * GiB:
                    rows.append({"kind": case.kind, "model": case.model.name, "layers": case.model.n_layers,
                                 "batch": batch, "context": context, "bytes_read": 0,
                                 "mode": f"skipped: needs ~{need / GiB:.0f} GiB"})
                    results.append(rows[-1])
                    continue
                try:
                    row = bench_row(case, batch, context, device, dtype, copy_bps, args.repeats)
                except torch.cuda.OutOfMemoryError:
                    free_memory(device)
                    row = {"kind": case.kind, "model": case.model.name, "layers": case.model.n_layers, "batch": batch,
                           "context": context, "bytes_read": 0, "mode": "out of memory"}
                rows.append(row)
                results.append(row)
                print(f"[{time.perf_counter() - began:6.1f} s] {case.kind} batch {batch} context {context}: "
                      f"{row.get('step_ms', float('nan')):.3f} ms, {row.get('mode')}", flush=True)

    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
