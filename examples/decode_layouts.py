"""How fast cuBLAS reads each weight of a model in the two memory layouts an nn.Linear weight [out, in] can have, on
a CUDA GPU: nn.Linear's own (contiguous rows of [out, in]) and its transpose's rows (how kvplan.models' Transformer
stores its LM head on CUDA), for a decode step's product (one row per sequence, --rows 16) and a prefill chunk's
(8192 rows). Each product is timed as a CUDA graph of 10 calls, each on its own copy of
the weight, so none is served from L2 (median of do_bench's replays); GB/s counts the weight's bytes only. Also
times a decode step's token-embedding gather both ways (nn.Embedding's index_select, the weight indexed by the
tokens). Writes DIR/decode_layouts.csv.

    python3 examples/decode_layouts.py --out DIR [--presets deepseek-v3,llama-3.1-8b]
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from kvplan.models import build, sliced
from kvplan.presets import get_preset
from kvplan.profilers.store import ResultsFile

COLUMNS = ["preset", "weight", "out_features", "in_features", "rows", "us_rows", "us_transposed", "GBps_rows",
           "GBps_transposed"]
COPIES_BYTES = 4e9  # at most this many bytes of weight copies a product and layout (10 copies at most)


def graph_microseconds(fn, calls: int = 10) -> float:
    """Microseconds a call of fn(i), i = 0..calls-1 captured in one CUDA graph."""
    for i in range(calls):
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    import triton  # on the GPU machine only

    return triton.testing.do_bench(graph.replay, warmup=10, rep=200) / calls * 1e3


def weight_shapes(preset: str, device: torch.device) -> dict[tuple[int, int], list[str]]:
    """(out, in) of every Linear of the preset's first layer and LM head -> the modules' names."""
    net = build(sliced(get_preset(preset), 1), max_batch=1, max_context=16, device=device)
    shapes: dict[tuple[int, int], list[str]] = {}
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes.setdefault(tuple(module.weight.shape), []).append(name.split(".")[-1])
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--presets", default="deepseek-v3,llama-3.1-8b")
    parser.add_argument("--rows", default="16,8192")
    args = parser.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    results = ResultsFile(os.path.join(args.out, "decode_layouts.csv"), COLUMNS, resume=False)

    def record(**row):
        print(row, flush=True)
        results.append(row)

    for preset in args.presets.split(","):
        for (out_features, in_features), names in weight_shapes(preset, dev).items():
            nbytes = out_features * in_features * 2
            copies = max(1, min(10, int(COPIES_BYTES // nbytes)))
            weights = [torch.randn(out_features, in_features, device=dev, dtype=torch.bfloat16)
                       for _ in range(copies)]
            transposed = [w.t().contiguous().t() for w in weights]  # the same tensors, stored as [in, out] rows
            for m in map(int, args.rows.split(",")):
                x = torch.randn(m, in_features, device=dev, dtype=torch.bfloat16)
                times = {layout: graph_microseconds(lambda i: F.linear(x, stored[i % copies]))
                         for layout, stored in (("rows", weights), ("transposed", transposed))}
                record(preset=preset, weight="/".join(sorted(set(names))), out_features=out_features,
                       in_features=in_features, rows=m, us_rows=round(times["rows"], 2),
                       us_transposed=round(times["transposed"], 2),
                       GBps_rows=round(nbytes / times["rows"] / 1e3, 1),
                       GBps_transposed=round(nbytes / times["transposed"] / 1e3, 1))
            weights = transposed = []  # freed before the next shape's copies
            torch.cuda.empty_cache()
        desc = get_preset(preset)
        vocab, width = desc.vocab_size, desc.d_model
        table = torch.randn(vocab, width, device=dev, dtype=torch.bfloat16)
        tokens = torch.randint(0, vocab, (16, 1), device=dev)
        record(preset=preset, weight="tok_embeddings gather", out_features=vocab, in_features=width, rows=16,
               us_rows=round(graph_microseconds(lambda i: F.embedding(tokens, table)), 2),
               us_transposed=round(graph_microseconds(lambda i: table[tokens]), 2), GBps_rows="", GBps_transposed="")
        table = None
    print("us_rows / us_transposed for the embedding rows: nn.Embedding / weight[tokens]")


if __name__ == "__main__":
    main()
