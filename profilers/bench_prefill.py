"""Prefill speed of the local-attention and DSA kernels against the PyTorch paths they replace, beside the estimate.

    python3 -m kvplan.profilers.bench_prefill --out DIR [--contexts 32k,128k] [--torch-max 32k]
    python3 -m kvplan.profilers.bench_prefill --out DIR --model deepseek-v3.2-exp --cases dsa,mla --torch-max 0
    python3 -m kvplan.profilers.bench_prefill --out DIR --device cpu --model CONFIG --contexts 64   # checks the script

Each case is the first --layers layers (2) of --model (a preset or a config.json; llama-3.1-8b) re-cast as
kvplan.profilers.validate re-casts them (CASES: --attention specs of kvplan.recast), batch 1. gqa is the model as
published (llama-3.1-8b's GQA); mla and dsa re-cast the attention, and a model that already has the kind keeps its
own: for deepseek-v3.2-exp "dsa" is the model itself and "mla" the same layers without the indexer (every other
weight of the same shape); window (4096 tokens) and local-global (1024-token local layers alternating with global
ones) put windows on the model's own attention. Per context (shortest first, so a run cut short keeps them) and
case: the whole prefill (median of --repeats after a warm-up that compiles and tunes) with the kernels
(FlexAttention for local layers, kvplan.models.triton_dsa for DSA) and, up to --torch-max tokens (0: never), without
them; beside the kernels' time the estimate of the same slice (Estimator.row's prefill_seconds, as
kvplan.profilers.sweep sets a row beside its estimate, whole prompts at once, for the GPU of --hardware-profile,
else the h100-sxm preset) and its error, estimate / measured - 1. For DSA the last query chunk of one layer is also
timed part by part: indexer scores, top-k (kvplan.models.triton_dsa.select_topk, and torch.topk), sparse attention
(over select_topk's keys, and over the same keys in torch.topk's order). Each path's prefill peak (CUDA bytes above
those allocated before it) is written beside the estimate of that path (Estimator.activation_bytes_per_gpu, flash =
kernels). DIR/bench_prefill.csv is rewritten after every row (a row that runs out of memory says so in its status);
a markdown table is printed at the end. On the CPU both paths run PyTorch, and neither peaks nor DSA parts are
measured.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from kvplan.api import resolve_model
from kvplan.estimator import Estimator
from kvplan.files import check_writable, write_atomically
from kvplan.hardware import get_gpu, gpu_from_file
from kvplan.kinds.dsa import QUERY_CHUNK
from kvplan.model import Model
from kvplan.recast import recast
from kvplan.units import InputError, format_tokens, parse_count, parse_token_list

from kvplan.models import build, flex_prefill, sliced, triton_decode, triton_dsa

from .compare import estimate_figures, relative_error
from .store import rows_text
from .sweep import deployment
from .timing import default_dtype, free_memory, median_seconds, pick_device

# case -> --attention spec (kvplan.recast): "native" is the model as published; a re-cast to MLA or DSA of a model
# that has that kind keeps its own attention
CASES = {"gqa": "native", "window": "window:4096", "local-global": "window:size=1024,global_every=2",
         "mla": "mla", "dsa": "dsa"}


def _kernels(on: bool) -> None:
    triton_decode.ENABLED = on
    flex_prefill.ENABLED = on


def _dsa_parts(net, T: int, repeats: int) -> dict:
    """Seconds of the last query chunk's indexer scores, top-k and sparse attention in the first layer."""
    layer = net.layers[0].attention
    x = torch.randn(1, T, layer.index_wk.in_features, device="cuda", dtype=torch.bfloat16)
    cos, sin = layer.rope.at(T)
    latent = layer._latent(x, cos, sin)
    q_latent, q = layer._query(x)
    index_q, index_w, k_fp8, k_scale = layer._index_inputs(x, q_latent, cos, sin)
    start = (T - 1) // QUERY_CHUNK * QUERY_CHUNK
    k = min(layer.dsa.index_topk, T)
    device = torch.device("cuda")
    parts = {}

    q_fp8, q_scale = layer._quantize(index_q[:, start:T])
    weights = index_w[:, start:T].contiguous()

    def scores():
        return triton_dsa.index_scores(q_fp8, q_scale, weights, k_fp8, k_scale, layer.group, start, 0, None)

    s = scores()
    parts["index_seconds"], _ = median_seconds(scores, device, repeats)
    parts["torch_topk_seconds"], _ = median_seconds(lambda: s.topk(k, dim=-1, sorted=False), device, repeats)
    parts["topk_seconds"], _ = median_seconds(lambda: triton_dsa.select_topk(s, k), device, repeats)
    top = triton_dsa.select_topk(s, k)
    expected = s.topk(k, dim=-1).values.sort(-1).values
    parts["topk_equal"] = bool(torch.equal(s.gather(-1, top.long()).sort(-1).values, expected))
    for config in triton_dsa.TOPK_CONFIGS:  # the tuner keeps the fastest; all of them, for the log
        seconds, _ = median_seconds(lambda: triton_dsa.select_topk(s, k, config), device, repeats)
        print(f"top-k {config}: {seconds * 1e3:.3f} ms", flush=True)
    q_cat = layer._absorbed_query(q[:, start:T], cos[start:T], sin[start:T])
    parts["sparse_seconds"], _ = median_seconds(
        lambda: triton_dsa.sparse_latent_attention(q_cat, latent, top, start, 0, layer.spec.kv_lora_rank, None),
        device, repeats)
    unordered = s.topk(k, dim=-1, sorted=False).indices  # the same keys in torch.topk's order, not by position
    parts["sparse_topk_order_seconds"], _ = median_seconds(
        lambda: triton_dsa.sparse_latent_attention(q_cat, latent, unordered, start, 0, layer.spec.kv_lora_rank,
                                                   None), device, repeats)
    for config in triton_dsa.SPARSE_CONFIGS:  # the tuner keeps the fastest; all of them, for the log
        try:
            seconds, _ = median_seconds(lambda: triton_dsa.sparse_latent_attention(
                q_cat, latent, top, start, 0, layer.spec.kv_lora_rank, None, config), device, repeats)
            print(f"sparse attention {config}: {seconds * 1e3:.3f} ms", flush=True)
        except Exception as error:  # noqa: BLE001 - a config that does not compile here
            print(f"sparse attention {config}: {type(error).__name__}", flush=True)
    C = T - start
    parts["index_tflops"] = C * T * layer.dsa.indexer_pair_flops() / parts["index_seconds"] / 1e12
    return parts


def _peak_bytes(net, tokens: torch.Tensor) -> int | None:
    """CUDA bytes allocated at the peak of one prefill above what was allocated before it (as validate measures);
    None on the CPU."""
    if not tokens.is_cuda:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    logits = net.prefill(tokens)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del logits
    return peak


def case_model(base: Model, case: str, layers: int) -> Model:
    """The first `layers` layers of `base` (all where it has fewer) with the case's re-cast (CASES)."""
    return sliced(recast(base, CASES[case]), min(layers, base.n_layers))


def _arguments(argv):
    parser = argparse.ArgumentParser(prog="python3 -m kvplan.profilers.bench_prefill",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for bench_prefill.csv")
    parser.add_argument("--model", default="llama-3.1-8b", help="preset or config.json whose layers are run")
    parser.add_argument("--layers", type=int, default=2, help="first layers of the model run")
    parser.add_argument("--contexts", default="32k,128k")
    parser.add_argument("--torch-max", default="32k", help="longest context also run without the kernels (0: none)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hardware-profile", help="GPU of the estimates: a `kvplan calibrate` profile "
                        "(default: the h100-sxm preset)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        contexts = sorted(parse_token_list(args.contexts, "--contexts"))
        torch_max = parse_count(args.torch_max, "--torch-max", minimum=0)
        cases = [name.strip() for name in args.cases.split(",") if name.strip()]
        unknown = [name for name in cases if name not in CASES] or ([] if cases else [args.cases])
        if unknown:
            raise InputError(f"--cases: unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
        if args.layers < 1 or args.repeats < 1:
            raise InputError(f"--layers and --repeats must be at least 1, not {args.layers} and {args.repeats}")
        base = resolve_model(args.model)
        gpu = gpu_from_file(args.hardware_profile) if args.hardware_profile else get_gpu("h100-sxm")
        device = pick_device(args.device)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        csv_path = check_writable(Path(args.out) / "bench_prefill.csv")
    except (InputError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    dtype = default_dtype(device)
    # validate's deployment, with whole prompts in flight as net.prefill runs them (no chunked prefill)
    dep = replace(deployment(gpu, "bf16", dtype), prefill_chunk=0)
    estimate_gpu = args.hardware_profile or gpu.name
    rows = []
    # Contexts in turn, shortest first: a run cut by a time limit keeps every case at the shorter contexts.
    for T in contexts:
        for name in cases:
            desc = case_model(base, name, args.layers)
            est = Estimator(desc, dep)
            row = {"case": name, "model": args.model, "layers": desc.n_layers, "attention": desc.attention.label,
                   "context": T, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "estimate_gpu": estimate_gpu}
            try:
                _measure(row, desc, est, T, device, dtype, on_torch=T <= torch_max, repeats=args.repeats)
                row["status"] = "ok"
            except torch.cuda.OutOfMemoryError:
                row["status"] = "out of memory"
            free_memory(device)
            rows.append(row)
            print(row, flush=True)
            fields = list(dict.fromkeys(key for r in rows for key in r))
            write_atomically(csv_path, rows_text(fields, rows))
    print("| model | layers | case | context | kernels s | estimate s | error | torch s | speed-up |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("kernels_seconds") is None:
            print(f"| {r['model']} | {r['layers']} | {r['case']} | {format_tokens(r['context'])} | {r['status']} "
                  "| - | - | - | - |")
            continue
        torch_s = r.get("torch_seconds")
        print(f"| {r['model']} | {r['layers']} | {r['case']} | {format_tokens(r['context'])} | "
              f"{r['kernels_seconds']:.4f} | {r['kernels_seconds_estimate']:.4f} | {r['kernels_error']:+.1%} | "
              + (f"{torch_s:.4f} | {torch_s / r['kernels_seconds']:.2f}x |" if torch_s else "- | - |"))
    return rows


def _measure(row: dict, desc: Model, est: Estimator, T: int, device: torch.device, dtype: torch.dtype,
             on_torch: bool, repeats: int) -> None:
    """One case at one context into `row`: each path's seconds and peak beside their estimates, DSA's parts."""
    net = build(desc, max_batch=1, max_context=T, dtype=dtype, device=device)
    tokens = torch.randint(0, desc.vocab_size, (1, T), device=device)
    try:
        with torch.no_grad():
            for on in ((True, False) if on_torch else (True,)):
                _kernels(on)
                net.prefill(tokens)  # warm-up: compiles and tunes
                seconds, _ = median_seconds(lambda: net.prefill(tokens), device, repeats, 0)
                path = "kernels" if on else "torch"
                row[f"{path}_seconds"] = seconds
                if on:  # the estimate times the kernels' path (its prefill_seconds, as sweep compares a row)
                    row["kernels_seconds_estimate"] = estimate_figures(est, 1, T)["prefill_seconds_estimate"]
                    row["kernels_error"] = relative_error(row["kernels_seconds_estimate"], seconds)
                # Each path's peak beside the estimate of that path: only DSA's PyTorch path holds more than
                # its kernels (the gathered latents; DSA.query_scratch_bytes); the others run SDPA either way.
                flash = on or desc.attention.sparse_topk is None
                row[f"{path}_peak_bytes"] = _peak_bytes(net, tokens)
                row[f"{path}_peak_bytes_estimate"] = est.activation_bytes_per_gpu(1, T, flash=flash)
            _kernels(True)
            if desc.attention.sparse_topk is not None and device.type == "cuda":
                row.update(_dsa_parts(net, T, repeats))
                print({key: config for key, config in triton_decode.CHOSEN.items() if key[0].startswith("dsa")},
                      flush=True)
    finally:
        _kernels(True)
        del net, tokens


if __name__ == "__main__":
    main()
