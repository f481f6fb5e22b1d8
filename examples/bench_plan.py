"""How fast is the planner (kvplan.plan.search)? Candidates per second against the target, and each model's plan.

Target: at least 1,000,000 candidates in <= 2 s, i.e. >= 500,000 candidates/s. A candidate is one (deployment,
pool, batch) combination of the grid (kvplan.plan); those whose weights alone overflow the GPU are rejected
without a row, and the figure beside them says how many rows Estimator computed.

Run: python examples/bench_plan.py [--runs 3] [--model NAME ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from kvplan.plan import DEFAULT_GPUS, search, workload_for
from kvplan.units import InputError

TARGET_CANDIDATES, TARGET_SECONDS = 1_000_000, 2.0
MODELS = ["llama-3.1-70b", "qwen3-30b-a3b", "deepseek-v3"]
FALLBACK = {"qwen3-30b-a3b": "llama-3.1-8b"}  # where a branch has no Qwen3-MoE preset yet
WORKLOAD = dict(isl="8k", osl="1k", ttft="2s", tpot="50ms")
GRID = dict(gpu=DEFAULT_GPUS, max_gpus=64, kv_dtype="bf16,fp8", weight_dtype="bf16,fp8", disaggregated=True)


def timed(model: str, runs: int):
    """(median seconds, the last result) of `runs` searches."""
    workload = workload_for(**WORKLOAD)
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = search(model, workload, **GRID)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions; the median is reported")
    parser.add_argument("--model", action="append", help="model preset (repeatable); default: " + ", ".join(MODELS))
    args = parser.parse_args()

    search("llama-3.1-8b", workload_for(**WORKLOAD), gpu="h100-sxm", max_gpus=1)  # warm: imports, presets
    print(f"machine: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}")
    print(f"workload: {WORKLOAD['isl']} in, {WORKLOAD['osl']} out, TTFT <= {WORKLOAD['ttft']}, "
          f"TPOT <= {WORKLOAD['tpot']}; grid: {', '.join(GRID['gpu'])} up to {GRID['max_gpus']} GPUs, "
          f"kv {GRID['kv_dtype']}, weights {GRID['weight_dtype']}, aggregated and disaggregated")
    print(f"{'model':<16} {'candidates':>12} {'rows':>12} {'median s':>9} {'candidates/s':>13} "
          f"{'s per 1M':>9}  ok")
    best = []
    for name in args.model or MODELS:
        try:
            seconds, result = timed(name, args.runs)
        except InputError as error:
            if name not in FALLBACK:
                raise
            print(f"{name}: {error}; {FALLBACK[name]} instead")
            name = FALLBACK[name]
            seconds, result = timed(name, args.runs)
        rate = result.candidates / seconds
        per_million = TARGET_CANDIDATES / rate
        print(f"{name:<16} {result.candidates:>12,} {result.rows_computed:>12,} {seconds:>9.2f} {rate:>13,.0f} "
              f"{per_million:>9.2f}  {'yes' if per_million <= TARGET_SECONDS else 'NO'}")
        best += [row for row in result.rows if row["rank"] == 1]
    print("\nrank 1 of each model ($ per million output tokens at the presets' GPU prices):")
    print(f"{'model':<16} {'serving':<14} {'pool':<8} {'gpu':<10} {'gpus':>4} {'tp':>3} {'pp':>3} {'dp':>3} {'ep':>3} "
          f"{'batch':>6} {'kv':<5} {'weights':<7} {'TTFT s':>7} {'TPOT ms':>8} {'tok/s/GPU':>10} {'$/Mtok':>7}")
    for r in best:
        print(f"{r['model']:<16} {r['serving']:<14} {r['pool']:<8} {r['gpu']:<10} {r['gpus']:>4} {r['tp']:>3} "
              f"{r['pp']:>3} {r['dp']:>3} {r['ep']:>3} {r['batch']:>6} {r['kv_dtype']:<5} {r['weight_dtype']:<7} "
              f"{r['ttft_seconds']:>7.3f} {r['tpot_seconds'] * 1e3:>8.1f} {r['tokens_per_second_per_gpu']:>10,.0f} "
              f"{r['usd_per_mtok']:>7.3f}")


if __name__ == "__main__":
    main()
