"""One DSA decode layer (deepseek-v3.2-exp, batch 16, 128k cache, bf16) part by part on a CUDA GPU: microseconds
per call of the indexer's inputs, the indexer, the top-k, the sparse attention and the whole layer, each timed as
a CUDA graph of 20 calls (median of 7 replays), with the indexer's bandwidth over the FP8 keys and scales it reads.

The inputs run both ways: the PyTorch operations (DSALayer._index_inputs, the two cache writes, the queries'
FP8 round trip) and kvplan.models.triton_decode.dsa_decode_inputs; the top-k both torch.topk and
kvplan.models.triton_dsa.radix_topk. --before FILE (an older models/triton_decode.py, e.g. from
`git show REV:models/triton_decode.py`) also times that file's dsa_index_scores, which takes the queries in bf16,
and compares its scores and top-k with the current ones. Every launch config the kernels timed is printed last.

--shapes BxS,... (e.g. 1x4k,16x128k) then times the indexer and the top-k alone at each batch x cache slots (the
decode shapes of the validation matrix and of bench_decode; random FP8 keys, all slots visible) and, with --out
DIR, writes DIR/dsa_decode_shapes.csv: the points kvplan.hardware's decode top-k and indexer figures are fitted
to.

Run: python examples/dsa_decode_parts.py [--before old_triton_decode.py] [--shapes ... --out DIR]
     TRITON_INTERPRET=1 python examples/dsa_decode_parts.py --cpu   (tiny shapes on the CPU: checks the script,
     times nothing)
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from kvplan.models import build, sliced, triton_decode, triton_dsa
from kvplan.presets import get_preset
from kvplan.units import parse_token_list
from kvplan.profilers.bench_decode import fill_cache_randomly
from kvplan.profilers.measure import graph_replay


def graph_microseconds(fn, cpu: bool, calls: int = 20, replays: int = 7) -> float:
    """Microseconds per call of fn: a CUDA graph of `calls` calls (after eager warm-up calls, which also let the
    kernels time their launch configs), median of `replays` replays. On the CPU: one call, 0."""
    if cpu:
        fn()
        return 0.0
    replay, _ = graph_replay(lambda: [fn() for _ in range(calls)])
    times = []
    for _ in range(replays):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3 / calls)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", help="an older models/triton_decode.py whose indexer is timed too")
    parser.add_argument("--cpu", action="store_true", help="tiny shapes under TRITON_INTERPRET=1; times nothing")
    parser.add_argument("--shapes", help="batch x slots list, e.g. 1x4k,8x32k: the indexer and top-k alone")
    parser.add_argument("--out", help="folder for dsa_decode_shapes.csv (with --shapes)")
    args = parser.parse_args()
    before = None
    if args.before:
        spec = importlib.util.spec_from_file_location("before_triton_decode", args.before)
        before = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(before)
    device, dtype = ("cpu", torch.float32) if args.cpu else ("cuda", torch.bfloat16)
    batch, context = (2, 512) if args.cpu else (16, 131072)
    model = sliced(get_preset("deepseek-v3.2-exp"), 1)
    if args.cpu:
        model = replace(model, d_model=256, attention=replace(model.attention, index_topk=64, index_n_heads=16))
    net = build(model, max_batch=batch, max_context=context, dtype=dtype, device=device,
                kv_dtype=None if args.cpu else "bf16")
    fill_cache_randomly(net, seed=1)
    layer = net.layers[0].attention
    x = torch.randn(batch, 1, model.d_model, device=device, dtype=dtype)
    position = torch.tensor([context - 1], device=device)
    cos, sin = layer.rope.at(position)
    k = min(layer.dsa.index_topk, layer.slots)
    limit = layer.decode_limit(position)
    keys, scales = layer.index_k[:batch], layer.index_scale[:batch]
    with torch.inference_mode():
        q_latent, q = layer._query(x)
        q_cat = layer._absorbed_query(q, cos, sin)[:, 0]

        def inputs_torch():
            index_q, index_w, k_fp8, k_scale = layer._index_inputs(x, q_latent, cos, sin)
            layer.write("index_k", k_fp8, position)
            layer.write("index_scale", k_scale, position)
            return layer._dequantize(*layer._quantize(index_q), x.dtype)[:, 0], index_w[:, 0]

        def inputs_kernel():
            index_q, index_key, index_w = layer._index_projections(x, q_latent)
            return triton_decode.dsa_decode_inputs(index_q[:, 0], index_key[:, 0], index_w[:, 0], cos, sin,
                                                   layer.index_k, layer.index_scale, position, layer.group,
                                                   layer.weight_scale)

        q_fp8, q_scale, weights = inputs_kernel()
        scores = triton_decode.dsa_index_scores(q_fp8, q_scale, weights, keys, scales, layer.group, limit)
        top = triton_dsa.radix_topk(scores, k)
        same = torch.equal(scores.gather(-1, top.long()).sort(-1).values, scores.topk(k, -1).values.sort(-1).values)
        print(f"radix_topk's values are torch.topk's: {same}")
        parts = [("projections (3 GEMMs + LayerNorm)", lambda: layer._index_projections(x, q_latent)),
                 ("inputs: projections + PyTorch operations", inputs_torch),
                 ("inputs: projections + dsa_decode_inputs", inputs_kernel),
                 ("indexer (FP8 queries)", lambda: triton_decode.dsa_index_scores(q_fp8, q_scale, weights, keys, scales,
                                                                                  layer.group, limit)),
                 ("top-k: torch.topk", lambda: scores.topk(k, dim=-1, sorted=False)),
                 ("top-k: radix_topk", lambda: triton_dsa.radix_topk(scores, k)),
                 ("top-k: topk_indices (the faster)", lambda: triton_decode.topk_indices(scores, k)),
                 ("sparse attention (mla_decode over the top-k)",
                  lambda: triton_decode.mla_decode(q_cat, layer.kv_cache[:batch], limit, layer.spec.kv_lora_rank,
                                                   chosen=top)),
                 ("whole layer (DSALayer.decode)", lambda: layer.decode(x, position))]
        if before is not None:
            q_bf16, w_bf16 = inputs_torch()
            old = before.dsa_index_scores(q_bf16, w_bf16, keys, scales, layer.group, limit)
            drift = ((old - scores).abs().max() / old.abs().max()).item()
            old_top = old.topk(k, dim=-1).indices
            shared = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(old_top, top)) / top.numel()
            print(f"scores against --before's: max |difference| / max |score| {drift:.1e}; top-k shared {shared:.4f}")
            parts.insert(3, ("indexer (--before: bf16 queries)",
                             lambda: before.dsa_index_scores(q_bf16, w_bf16, keys, scales, layer.group, limit)))
        index_bytes = keys.numel() + scales.numel() * scales.element_size()
        for name, fn in parts:
            us = graph_microseconds(fn, args.cpu)
            rate = f"  {index_bytes / us / 1e3:6.0f} GB/s" if name.startswith("indexer") and us else ""
            print(f"{name:48s} {us:8.1f} us{rate}", flush=True)
    if args.shapes:
        time_shapes(args, layer, k, device, dtype)
    for label, module in (("now", triton_decode), ("before", before)):
        for key, times in (module.TIMINGS.items() if module else ()):
            print(f"  {label} timed {key}: " + ", ".join(f"{'x'.join(map(str, c))} {ms:.3f} ms" for ms, c in times))


def time_shapes(args, layer, k: int, device: str, dtype: torch.dtype) -> None:
    """The indexer and the top-k alone at each --shapes batch x slots: one query per sequence (the layer's heads
    and widths) against random FP8 keys, every slot visible."""
    rows = []
    for shape in args.shapes.split(","):
        batch, slots = (parse_token_list(part, "--shapes")[0] for part in shape.split("x"))
        n, d = layer.dsa.index_n_heads, layer.dsa.index_head_dim
        keys = torch.randn(batch, slots, d, device=device).to(torch.float8_e4m3fn)
        scales = torch.rand(batch, slots, keys.size(-1) // layer.group, device=device) + 0.5
        q_fp8 = torch.randn(batch, n, d, device=device).to(torch.float8_e4m3fn)
        q_scale = torch.rand(batch, n, d // layer.group, device=device) + 0.5
        weights = torch.randn(batch, n, device=device)
        limit = torch.tensor([slots - 1], device=device)
        chosen = min(k, slots)
        with torch.inference_mode():
            scores = triton_decode.dsa_index_scores(q_fp8, q_scale, weights, keys, scales, layer.group, limit)
            index_us = graph_microseconds(lambda: triton_decode.dsa_index_scores(
                q_fp8, q_scale, weights, keys, scales, layer.group, limit), args.cpu)
            topk_us = graph_microseconds(lambda: triton_decode.topk_indices(scores, chosen), args.cpu)
        row = dict(batch=batch, slots=slots, k=chosen, index_us=index_us, index_key_bytes=keys.numel()
                   + scales.numel() * scales.element_size(), topk_us=topk_us, score_bytes=scores.numel() * 4,
                   topk_config=str(triton_decode.CHOSEN.get(("topk", batch, slots, chosen), "")))
        rows.append(row)
        print(f"batch {batch:3d} slots {slots:7d}: indexer {index_us:7.1f} us, top-k {topk_us:7.1f} us "
              f"({row['topk_config']})", flush=True)
        del keys, scores
    if args.out:
        path = Path(args.out) / "dsa_decode_shapes.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
