"""Prefill speed of the local-attention and DSA kernels against the PyTorch paths they replace.

    python3 -m kvplan.profilers.bench_prefill --out DIR [--contexts 32k,128k] [--torch-max 32k]

Each case is llama-3.1-8b's first 2 layers re-cast (as kvplan.profilers.validate runs them), batch 1: the whole
prefill (median of --repeats after a warm-up that compiles and tunes), with the kernels (FlexAttention for
local layers, kvplan.models.triton_dsa for DSA) and, up to --torch-max tokens, without them. For DSA the
last query chunk of one layer is also timed part by part: indexer scores, top-k (kvplan.models.triton_dsa.
select_topk, and torch.topk), sparse attention (over select_topk's keys, and over the same keys in torch.topk's
order). Each path's prefill peak (CUDA bytes above those allocated before it) is written beside the
estimate of that path (Estimator.activation_bytes_per_gpu, flash = kernels). Writes DIR/bench_prefill.csv and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import replace
from pathlib import Path

import torch

from kvplan.estimator import Estimator
from kvplan.hardware import get_gpu
from kvplan.kinds.dsa import QUERY_CHUNK
from kvplan.presets import get_preset
from kvplan.recast import recast
from kvplan.units import format_tokens, parse_token_list

from kvplan.models import build, flex_prefill, sliced, triton_decode, triton_dsa

from .sweep import deployment
from .timing import median_seconds

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


def _peak_bytes(net, tokens: torch.Tensor) -> int:
    """CUDA bytes allocated at the peak of one prefill above what was allocated before it (as validate measures)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    logits = net.prefill(tokens)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del logits
    return peak


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python3 -m kvplan.profilers.bench_prefill", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--contexts", default="32k,128k")
    parser.add_argument("--torch-max", default="32k", help="longest context also run without the kernels")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    contexts = parse_token_list(args.contexts, "--contexts")
    torch_max = parse_token_list(args.torch_max, "--torch-max")[0]
    device = torch.device("cuda")
    base = get_preset("llama-3.1-8b")
    # validate's deployment, with whole prompts in flight as net.prefill runs them (no chunked prefill)
    dep = replace(deployment(get_gpu("h100-sxm"), "bf16", torch.bfloat16), prefill_chunk=0)
    rows = []
    for name in args.cases.split(","):
        desc = sliced(recast(base, CASES[name]), 2)
        for T in contexts:
            net = build(desc, max_batch=1, max_context=T, device="cuda")
            tokens = torch.randint(0, desc.vocab_size, (1, T), device=device)
            row = {"case": name, "attention": desc.attention.label,
                   "context": T, "gpu": torch.cuda.get_device_name()}
            with torch.no_grad():
                for on in ((True, False) if T <= torch_max else (True,)):
                    _kernels(on)
                    net.prefill(tokens)  # warm-up: compiles and tunes
                    seconds, _ = median_seconds(lambda: net.prefill(tokens), device, args.repeats, 0)
                    path = "kernels" if on else "torch"
                    row[f"{path}_seconds"] = seconds
                    # Each path's peak beside the estimate of that path: only DSA's PyTorch path holds more than
                    # its kernels (the gathered latents; DSA.query_scratch_bytes); the others run SDPA either way.
                    flash = on or desc.attention.sparse_topk is None
                    row[f"{path}_peak_bytes"] = _peak_bytes(net, tokens)
                    row[f"{path}_peak_bytes_estimate"] = Estimator(desc, dep).activation_bytes_per_gpu(1, T, flash=flash)
                _kernels(True)
                if name == "dsa":
                    row.update(_dsa_parts(net, T, args.repeats))
                    print({key: config for key, config in triton_decode.CHOSEN.items() if key[0].startswith("dsa")},
                          flush=True)
            rows.append(row)
            print(row, flush=True)
            del net
            torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(out / "bench_prefill.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    print("| case | context | kernels s | torch s | speed-up |\n|---|---|---|---|---|")
    for r in rows:
        torch_s = r.get("torch_seconds")
        print(f"| {r['case']} | {format_tokens(r['context'])} | {r['kernels_seconds']:.4f} | "
              + (f"{torch_s:.4f} | {torch_s / r['kernels_seconds']:.2f}x |" if torch_s else "- | - |"))
    return rows


if __name__ == "__main__":
    main()
