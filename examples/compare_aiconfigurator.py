"""kvplan's default (uncalibrated) TTFT and TPOT beside NVIDIA aiconfigurator 0.12.0's, which times each
operation from kernel tables measured with TensorRT-LLM (its default backend) on each GPU.

Runs where aiconfigurator is installed (`pip install aiconfigurator`; not a kvplan dependency, offline):
    python examples/compare_aiconfigurator.py --write                       # this checkout's kvplan only
    python examples/compare_aiconfigurator.py --write --before /tmp/old     # also a checkout of an earlier kvplan

Points: Llama-3.1-8B and 70B (bf16 and fp8 weights) and DeepSeek-V3 (fp8, block-scaled) on H100 SXM and H200,
tp 1, 2, 4, 8 (DeepSeek-V3: 8 with experts split over tp, H200 only: its fp8 weights exceed 8 H100s), batch 1, 8, 32, prompts of 4k and
32k tokens, 256 tokens out. aiconfigurator's static mode: TTFT = prefill of the whole batch, TPOT = mean decode
step over the output. kvplan: the row at prompt = isl, context = isl + osl / 2 (the mean decode step). Points
aiconfigurator refuses (out of memory) are left out. Writes examples/compare-aiconfigurator.csv and .md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import statistics
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

HERE = Path(__file__).resolve().parent
OSL = 256
MODELS = (  # kvplan preset, aiconfigurator model path, weight format, aiconfigurator gemm quant mode, tps
    ("llama-3.1-8b", "meta-llama/Meta-Llama-3.1-8B", "bf16", None, (1, 2, 4, 8)),
    ("llama-3.1-8b", "meta-llama/Meta-Llama-3.1-8B", "fp8", "fp8", (1, 2, 4, 8)),
    ("llama-3.1-70b", "meta-llama/Meta-Llama-3.1-70B", "bf16", None, (2, 4, 8)),
    ("llama-3.1-70b", "meta-llama/Meta-Llama-3.1-70B", "fp8", "fp8", (1, 2, 4, 8)),
    ("deepseek-v3", "deepseek-ai/DeepSeek-V3", "fp8", None, (8,)),
)
SYSTEMS = (("h100-sxm", "h100_sxm"), ("h200", "h200_sxm"))
BATCHES, PROMPTS = (1, 8, 32), (4096, 32768)

KVPLAN_POINTS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import warnings
warnings.simplefilter("ignore")
import kvplan
out = []
for p in json.load(sys.stdin):
    layout = dict(dp=p["dp"], ep=p["dp"]) if p.get("dp", 1) > 1 else {}  # older checkouts: tp alone
    row = kvplan.estimate(p["model"], p["gpu"], context=p["isl"] + p["osl"] // 2, prompt=p["isl"], batch=p["batch"],
                          gpus=p["tp"] * p.get("dp", 1), weight_dtype=p["weight"], **layout)
    out.append([row["prefill_seconds"], row["decode_seconds_per_token"]])
print(json.dumps(out))
"""


def points() -> list[dict]:
    out = []
    for model, path, weight, quant, tps in MODELS:
        for gpu, system in SYSTEMS:
            if model == "deepseek-v3" and gpu == "h100-sxm":
                continue
            for tp in tps:
                for isl in PROMPTS:
                    for batch in BATCHES:
                        out.append(dict(model=model, path=path, weight=weight, quant=quant, gpu=gpu, system=system,
                                        tp=tp, isl=isl, osl=OSL, batch=batch))
    return out


# DeepSeek Sparse Attention against dense MLA at attention DP 8 / EP 8 on 8 H200s (--dsa): decode steps of
# DeepSeek-V3.2 and DeepSeek-V3 at long prompts. aiconfigurator's batch_size counts the sequences of one
# attention-DP rank (its result's global_bs = batch_size x dp); kvplan's batch counts all of them.
DSA_MODELS = (("deepseek-v3", "deepseek-ai/DeepSeek-V3"), ("deepseek-v3.2-exp", "deepseek-ai/DeepSeek-V3.2"))
DSA_DP, DSA_RANK_BATCHES, DSA_PROMPTS = 8, (1, 8, 32), (32768, 131072)


def dsa_points() -> list[dict]:
    return [dict(model=model, path=path, weight="fp8", quant=None, gpu="h200", system="h200_sxm", tp=1, dp=DSA_DP,
                 isl=isl, osl=OSL, batch=DSA_DP * per_rank)
            for isl in DSA_PROMPTS for per_rank in DSA_RANK_BATCHES for model, path in DSA_MODELS]


def aiconfigurator(point: dict, backend: str) -> tuple[float, float] | None:
    """(TTFT s, TPOT s) from aiconfigurator's static estimate, or None where it refuses the point."""
    from aiconfigurator.cli.api import cli_estimate

    dp = point.get("dp", 1)
    layout = (dict(attention_dp_size=dp, moe_tp_size=1, moe_ep_size=dp) if dp > 1 else
              dict(moe_tp_size=point["tp"] if point["model"] == "deepseek-v3" else None))
    try:
        with redirect_stdout(io.StringIO()):
            result = cli_estimate(point["path"], point["system"], mode="static", backend_name=backend,
                                  isl=point["isl"], osl=point["osl"], batch_size=point["batch"] // dp,
                                  tp_size=point["tp"], gemm_quant_mode=point["quant"], **layout)
    except Exception as error:  # noqa: BLE001 - aiconfigurator raises many kinds for an unservable point
        print(f"aiconfigurator refuses {point['model']} {point['weight']} {point['gpu']} tp{point['tp']} "
              f"batch {point['batch']} isl {point['isl']}: {str(error).splitlines()[0][:120]}", file=sys.stderr)
        return None
    if not result.ttft or not result.tpot:
        return None
    return result.ttft / 1e3, result.tpot / 1e3


def kvplan_times(root: Path, selected: list[dict]) -> list[list[float]]:
    """[[TTFT s, TPOT s]] from the kvplan checkout at `root`, run in its own interpreter."""
    done = subprocess.run([sys.executable, "-c", KVPLAN_POINTS, str(root)], input=json.dumps(selected), text=True,
                          capture_output=True, check=True)
    return json.loads(done.stdout)


def _range(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f} (median {statistics.median(values):.2f})" if values else "-"


def summary(rows: list[dict], labels: list[str]) -> str:
    """Markdown: ratio kvplan / aiconfigurator per group, for each kvplan version."""
    groups = {}
    for row in rows:
        name = "DeepSeek-V3 fp8" if row["model"] == "deepseek-v3" else f"Llama-3.1 {row['weight']}"
        groups.setdefault(name, []).append(row)
    lines = ["| group | points | " + " | ".join(f"TTFT ratio, {label} | TPOT ratio, {label}" for label in labels) + " |",
             "|---|---|" + "---|---|" * len(labels)]
    for name, members in groups.items():
        cells = []
        for label in labels:
            cells += [_range([r[f"ttft_ratio_{label}"] for r in members]), _range([r[f"tpot_ratio_{label}"] for r in members])]
        lines.append(f"| {name} | {len(members)} | " + " | ".join(cells) + " |")
    within = []
    for label in labels:
        dense = [r for r in rows if r["model"] != "deepseek-v3"]
        share = sum(abs(r[f"ttft_ratio_{label}"] - 1) <= 0.15 and abs(r[f"tpot_ratio_{label}"] - 1) <= 0.15
                    for r in dense) / len(dense)
        deepseek = [r for r in rows if r["model"] == "deepseek-v3"]
        close = sum(abs(r[f"ttft_ratio_{label}"] - 1) <= 0.35 and abs(r[f"tpot_ratio_{label}"] - 1) <= 0.35
                    for r in deepseek)
        within.append(f"{label}: {share:.0%} of the Llama points have both TTFT and TPOT within 15%, "
                      f"{close} of {len(deepseek)} DeepSeek-V3 points within 35%")
    return "\n".join(lines) + "\n\n" + "; ".join(within) + ".\n"


def dsa_section(backend: str) -> str:
    """Markdown: DeepSeek-V3.2's decode step over DeepSeek-V3's, aiconfigurator's and kvplan's."""
    found = [(p, aiconfigurator(p, backend)) for p in dsa_points()]
    chosen = [p for p, times in found if times]
    tpot = {(p["model"], p["isl"], p["batch"]): times[1] for p, times in found if times}
    mine = {(p["model"], p["isl"], p["batch"]): t[1] for p, t in zip(chosen, kvplan_times(HERE.parent, chosen))}
    lines = [f"# DSA against dense MLA: decode at attention DP {DSA_DP} / EP {DSA_DP} on 8 H200s ({backend} tables)\n",
             "TPOT of DeepSeek-V3.2 (DSA) over DeepSeek-V3 (dense MLA), fp8 weights, 256 tokens out. aiconfigurator's "
             "batch_size is per attention-DP rank (global batch = 8 x it); kvplan's batch is the global one. Regenerate "
             f"with `python examples/compare_aiconfigurator.py --dsa --write --backend {backend}`.\n",
             "| prompt | sequences per rank | aiconfigurator V3 ms | V3.2 ms | ratio | kvplan V3 ms | V3.2 ms | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for isl in DSA_PROMPTS:
        for per_rank in DSA_RANK_BATCHES:
            key = (isl, DSA_DP * per_rank)
            (dense, sparse) = (m for m, _ in DSA_MODELS)
            if (dense, *key) not in tpot or (sparse, *key) not in tpot:
                continue
            a, b = tpot[(dense, *key)], tpot[(sparse, *key)]
            c, d = mine[(dense, *key)], mine[(sparse, *key)]
            lines.append(f"| {isl:,} | {per_rank} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.2f} | {c * 1e3:.1f} | "
                         f"{d * 1e3:.1f} | {d / c:.2f} |")
    return "\n".join(lines) + "\n"


def _commit(root: Path | None) -> str:
    """The short commit of a kvplan checkout ('' without one)."""
    if root is None:
        return ""
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"at {done.stdout.strip()}" if done.returncode == 0 else str(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write examples/compare-aiconfigurator.csv and .md")
    parser.add_argument("--before", type=Path, help="a checkout of an earlier kvplan to set beside this one")
    parser.add_argument("--backend", default="trtllm", choices=("trtllm", "vllm", "sglang"),
                        help="aiconfigurator's kernel tables (default trtllm, its own default)")
    parser.add_argument("--dsa", action="store_true",
                        help="DeepSeek-V3.2 against DeepSeek-V3 at attention DP 8 (compare-aiconfigurator-dsa.md)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.dsa:
        text = dsa_section(args.backend)
        print(text)
        if args.write:
            (HERE / "compare-aiconfigurator-dsa.md").write_text(text)
        return

    selected, reference = [], []
    for point in points():
        times = aiconfigurator(point, args.backend)
        if times:
            selected.append(point)
            reference.append(times)
    versions = {"after": HERE.parent}
    if args.before:
        versions = {"before": args.before, **versions}
    estimates = {label: kvplan_times(root, selected) for label, root in versions.items()}
    rows = []
    for i, point in enumerate(selected):
        row = {k: point[k] for k in ("model", "weight", "gpu", "tp", "batch", "isl")}
        row["aic_ttft_ms"], row["aic_tpot_ms"] = (t * 1e3 for t in reference[i])
        for label, times in estimates.items():
            ttft, tpot = times[i]
            row[f"kvplan_ttft_ms_{label}"], row[f"kvplan_tpot_ms_{label}"] = ttft * 1e3, tpot * 1e3
            row[f"ttft_ratio_{label}"] = ttft / reference[i][0]
            row[f"tpot_ratio_{label}"] = tpot / reference[i][1]
        rows.append(row)
    text = summary(rows, list(versions))
    print(text)
    if args.write:
        name = "compare-aiconfigurator" + ("" if args.backend == "trtllm" else f"-{args.backend}")
        with open(HERE / f"{name}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in row.items()})
        (HERE / f"{name}.md").write_text(
            f"# kvplan vs aiconfigurator 0.12.0 ({args.backend} tables): TTFT and TPOT\n\n"
            f"Ratio = kvplan / aiconfigurator (below 1: kvplan faster); before = kvplan {_commit(args.before)} "
            f"(one compute and one bandwidth efficiency), after = the per-operation roofline (MLA in its own kernels, "
            f"grouped expert GEMMs with their call time, chunked prefill of 8192 tokens per forward). Regenerate with `python "
            f"examples/compare_aiconfigurator.py --write --backend {args.backend} --before <checkout>`; every point is "
            f"in {name}.csv.\n\n" + text)


if __name__ == "__main__":
    main()
