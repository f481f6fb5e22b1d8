"""How fast is `kvplan estimate`? Prints three figures against their targets.

(a) `kvplan estimate --model llama-3.1-8b --context 128k` from a cold process (a new Python each run), the
    median wall time of several runs; target <= 0.3 s on a quiet 2-core machine (the table says 0.5 s: the
    figure moves with the machine's load).
(b) 100,000 rows (models x contexts x batches x attention kinds) through the Python API `kvplan.estimate(...)`,
    DataFrame included; target <= 1 s.
(c) the same rows through kvplan.grid.frame (one Estimator.row over all batches per estimator and context,
    numpy arrays), checked equal to (b); kvplan.estimate's many-row path calls it.

Run: python examples/bench_estimate.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

COLD_TARGET_SECONDS, ROWS_TARGET_SECONDS = 0.5, 1.0
MODELS = ["llama-3.1-8b", "llama-3.1-70b", "gemma-3-27b", "deepseek-v3", "deepseek-v3.2-exp"]
KINDS = ["native", "mqa", "tpa:k_rank=2,v_rank=2", "window:4096"]
CONTEXTS = [1024 * (i + 1) for i in range(50)]  # 1k .. 50k
BATCHES = list(range(1, 101))  # 5 x 4 x 50 x 100 = 100,000 rows


def cold_cli_seconds(runs: int) -> tuple[float, str]:
    """Median wall time of the whole command in a fresh process (interpreter start-up included)."""
    script = shutil.which("kvplan")
    command = [script] if script else [sys.executable, "-m", "kvplan"]
    command += ["estimate", "--model", "llama-3.1-8b", "--context", "128k"]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})
        times.append(time.perf_counter() - start)
    return statistics.median(times), " ".join(["kvplan"] + command[-5:] if script else command[1:])


def api_rows_seconds(runs: int) -> tuple[float, int]:
    import kvplan

    kvplan.estimate("llama-3.1-8b")  # warm: imports, preset parsing, pandas import
    times, rows = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        frame = kvplan.estimate(MODELS, context=CONTEXTS, batch=BATCHES, attention=KINDS)
        times.append(time.perf_counter() - start)
        rows = len(frame)
    return statistics.median(times), rows, frame


def grid_rows_seconds(runs: int, expected) -> tuple[float, int]:
    """Median seconds of kvplan.grid.frame over the rows of (b); fails unless it gives (b)'s frame."""
    import pandas.testing

    from kvplan.api import estimators as build
    from kvplan.grid import frame

    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        found = [e for model in MODELS for e in build(model, attention=KINDS)]
        result = frame(found, CONTEXTS, BATCHES)
        times.append(time.perf_counter() - start)
    pandas.testing.assert_frame_equal(result, expected, rtol=1e-14)
    return statistics.median(times), len(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="repetitions; the median is reported")
    args = parser.parse_args()

    cold, command = cold_cli_seconds(args.runs)
    rows_time, rows, expected = api_rows_seconds(max(3, args.runs // 2))
    grid_time, _ = grid_rows_seconds(max(3, args.runs // 2), expected)
    print(f"machine: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}")
    print(f"{'measurement':<74} {'median s':>9} {'target s':>9}  ok")
    print(f"{'(a) cold process: ' + command:<74} {cold:>9.3f} {COLD_TARGET_SECONDS:>9.1f}  "
          f"{'yes' if cold <= COLD_TARGET_SECONDS else 'NO'}")
    label = f"(b) {rows:,} rows through kvplan.estimate(...) -> DataFrame"
    print(f"{label:<74} {rows_time:>9.3f} {ROWS_TARGET_SECONDS:>9.1f}  "
          f"{'yes' if rows_time <= ROWS_TARGET_SECONDS else 'NO'}")
    label = "(c) the same rows through kvplan.grid.frame (equal to (b))"
    print(f"{label:<74} {grid_time:>9.3f} {ROWS_TARGET_SECONDS:>9.1f}  "
          f"{'yes' if grid_time <= ROWS_TARGET_SECONDS else 'NO'}")
    print(f"    = {rows / rows_time:,.0f} rows/s (b), {rows / grid_time:,.0f} rows/s (c); {len(MODELS)} models x "
          f"{len(KINDS)} kinds x {len(CONTEXTS)} contexts x {len(BATCHES)} batches")


if __name__ == "__main__":
    main()
