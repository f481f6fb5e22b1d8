"""Validate kvplan's estimates on the GPU at hand: calibrate, profile every attention kind, write the error table.

    python3 -m kvplan.profilers.validate --out DIR          # the H100 matrix, about 5-8 minutes
    python3 -m kvplan.profilers.validate --out DIR --device cpu --model t6-medium-mha --layers 1 \\
        --contexts 64,128 --batches 1,2                     # a small CPU run, checks the script

The matrix: every kind as a re-cast of one base model's first `--layers` layers (llama-3.1-8b, 2 layers:
d_model 4096, 32 heads of 128, so every kind runs kernels of the same width and the calibration's reference
model is one of them): every --attention name of kvplan.kinds (MHA, MQA, GQA, MLA, TPA (T6), DSA; the one
that re-casts the base into its own attention runs as "native", for llama-3.1-8b GQA with 8 KV heads), a
4096-token sliding window and local/global (1024-token local layers alternating with global ones);
contexts 4k, 32k, 128k; batches 1 and 8. `kvplan calibrate` runs first and its profile is what the estimates use.

Rows go to DIR/NAME.csv as they finish (a rerun resumes), the profile to DIR/NAME-profile.json and the
report (error table: median and worst error per kind per figure; the misses of the targets; rows that did
not fit; the command) to DIR/NAME.md. Rows not started by --budget-seconds are left out and listed as not run.
The committed H100 run: python3 -m kvplan.profilers.validate --out examples --name validation-h100
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from kvplan.files import write_atomically
from kvplan.hardware import gpu_from_file
from kvplan.profilers.view import kernel_summary
from kvplan.units import format_tokens, parse_token_list

from .calibrate import calibrate
from .compare import FIGURES, compare, scaling_note
from .measure import Settings
from .store import read_rows, rows_text
from .sweep import Sweep, device_environment, plan_rows, run
from .timing import default_dtype, pick_device

# Window patterns of the matrix, on the base model's own attention, after the kinds.
WINDOWS = ("window:4096", "window:size=1024,global_every=2")
REPORTED = ("cache_bytes", "prefill_peak_bytes", "prefill_seconds", "decode_seconds", "prefill_flops_counted",
            "decode_flops")
TARGETS = {"cache_bytes": 0.0, "prefill_peak_bytes": 0.05, "prefill_seconds": 0.10, "decode_seconds": 0.10}


def _arguments(argv):
    parser = argparse.ArgumentParser(prog="python3 -m kvplan.profilers.validate", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for NAME.csv, NAME.md and NAME-profile.json")
    parser.add_argument("--name", default="validation", help="stem of the files written (default: validation)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model", default="llama-3.1-8b", help="base model every kind is re-cast from")
    parser.add_argument("--layers", type=int, default=2, help="layers of the base model run")
    parser.add_argument("--contexts", default="4k,32k,128k")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--kinds", help="attention specs separated by ';' or ',' (as --attention takes them); "
                        f"default: every kind's --attention name (kvplan.kinds), then {'; '.join(WINDOWS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed samples per latency (median kept)")
    parser.add_argument("--budget-seconds", type=float, default=450, help="start no row after this long")
    parser.add_argument("--usd-per-hour", type=float, default=None, help="price, needed on a CPU")
    parser.add_argument("--reestimate", action="store_true",
                        help="measure nothing: estimate the rows of DIR/NAME.csv again with this kvplan and "
                        "DIR/NAME-profile.json, and rewrite the CSV and the report (no GPU needed)")
    return parser.parse_args(argv)


def reestimate(rows: list[dict], profile_path: Path, model: str) -> list[dict]:
    """The measured rows with estimates and errors from this kvplan (same profile, same slices)."""
    by_spec: dict[tuple, list[dict]] = {}
    for row in rows:
        by_spec.setdefault((row["attention"], row["layers"]), []).append(row)
    gpu = gpu_from_file(profile_path)
    for (spec, layers), group in by_spec.items():
        sweep = Sweep(model=model, attentions=[spec], contexts=[group[0]["context"]], batches=[group[0]["batch"]],
                      layers=layers, estimate_gpu=gpu, settings=Settings(device=torch.device("cpu"), dtype=getattr(torch, group[0].get("dtype") or "bfloat16")),
                      env={})
        (_, est, est_full), = plan_rows(sweep)
        for row in group:
            compare(row, est, est_full)
    return rows


def _kinds(text: str) -> list[str]:
    from kvplan.recast import split_specs

    return split_specs(text.split(";")) if ";" in text else split_specs(text)


def matrix(model: str) -> list[str]:
    """--attention specs of the default matrix: the base model's own attention ("native") and every name in
    kvplan.kinds.RECAST_NAMES whose re-cast differs from it, in the registry's order, then WINDOWS."""
    from kvplan.api import resolve_model
    from kvplan.kinds import RECAST_NAMES
    from kvplan.recast import recast

    base = resolve_model(model)
    specs = ["native" if recast(base, name).attention == base.attention else name for name in RECAST_NAMES]
    return list(dict.fromkeys(specs if "native" in specs else ["native", *specs])) + list(WINDOWS)


def _name(row: dict) -> str:
    """The kind as served, e.g. gqa(kv_heads=8) local(1024)/global."""
    return str(row.get("attention_kind") or row["attention"])


def _percent(value) -> str:
    return "-" if value is None else f"{value:+.1%}"


def error_table(rows: list[dict]) -> list[str]:
    """Markdown: per kind, the median and the worst (largest in size, sign kept) error of each figure."""
    lines = ["| kind | rows fully measured | " + " | ".join(f"{FIGURES[f][0]} median / worst" for f in REPORTED) + " |",
             "|---" * (2 + len(REPORTED)) + "|"]
    for spec in dict.fromkeys(r["attention"] for r in rows):
        mine = [r for r in rows if r["attention"] == spec]
        ok = [r for r in mine if r["status"] == "ok"]
        cells = []
        for figure in REPORTED:  # every row that measured the figure (a prefill too large still times decode)
            errors = [r[f"{figure}_error"] for r in mine if r.get(f"{figure}_error") is not None]
            cells.append("-" if not errors else
                         f"{_percent(statistics.median(errors))} / {_percent(max(errors, key=abs))}")
        lines.append(f"| {_name(mine[0])} | {len(ok)} of {len(mine)} | " + " | ".join(cells) + " |")
    return lines


def misses(rows: list[dict]) -> list[str]:
    """Markdown list: every (kind, figure) whose worst error is beyond its target (TARGETS)."""
    lines = []
    for spec in dict.fromkeys(r["attention"] for r in rows):
        mine = [r for r in rows if r["attention"] == spec]
        for figure, target in TARGETS.items():
            bad = [r for r in mine if r.get(f"{figure}_error") is not None and abs(r[f"{figure}_error"]) > target]
            if bad:
                where = ", ".join(f"batch {r['batch']} context {format_tokens(int(r['context']))} "
                                  f"{_percent(r[f'{figure}_error'])}" for r in bad)
                lines.append(f"- {_name(mine[0])}, {FIGURES[figure][0]} (target {target:.0%}): {where}")
    return lines


def row_table(rows: list[dict]) -> list[str]:
    """Markdown: every row, measured figures beside estimates."""
    head = ["kind", "batch", "context", "measured", "estimate fits"]
    head += [f"{FIGURES[f][0]} {FIGURES[f][2]} (meas / est)" for f in REPORTED]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [_name(r), str(r["batch"]), format_tokens(int(r["context"])), str(r["status"]),
                 "yes" if r.get("fits_estimate") else "no"]
        for figure in REPORTED:
            _, scale, _ = FIGURES[figure]
            measured, estimate = r.get(f"{figure}_measured"), r.get(f"{figure}_estimate")
            cells.append(("-" if measured is None else f"{measured / scale:,.4g}") + " / "
                         + ("-" if estimate is None else f"{estimate / scale:,.4g}"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


CAUSES = "## Causes of the misses"


def causes_section(report_text: str) -> list[str]:
    """The "Causes of the misses" section a person wrote into an earlier report (up to the next heading), kept
    when the report is written again."""
    lines = report_text.splitlines()
    if CAUSES not in lines:
        return []
    start = lines.index(CAUSES)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [*lines[start:end]] + ([""] if lines[end - 1] else [])


def report(rows: list[dict], profile: dict, command: str, not_run: list[dict], causes: list[str] = ()) -> str:
    gpu, measured = profile["gpu"], profile["measured"]
    first = rows[0] if rows else {}
    fits = [r for r in rows if r["status"] != "ok"]
    verdicts = [f"- {_name(r)}, batch {r['batch']}, context {format_tokens(int(r['context']))}: "
                f"{r['status']}; the estimate said {'it fits' if r.get('fits_estimate') else 'it does not fit'} "
                f"({r['total_bytes_per_gpu_estimate'] / 2**30:,.1f} GiB of {gpu['memory_bytes'] / 2**30:,.1f})"
                for r in fits]
    text = [
        f"# kvplan validation on {first.get('gpu_name', gpu['name'])}",
        "",
        "Regenerate (writes validation.csv, validation.md and profile.json into the folder):",
        "",
        "```",
        command,
        "```",
        "",
        f"Device: {first.get('gpu_name')}, driver {first.get('driver')}, torch {first.get('torch_version')}, "
        f"SM clock {first.get('sm_clock_mhz')} of {first.get('max_sm_clock_mhz')} MHz, power limit "
        f"{first.get('power_limit_watts')} W.",
        "",
        "## Calibration (`kvplan calibrate`, the profile every estimate below uses)",
        "",
        f"- copy bandwidth {measured['copy_bandwidth_bytes_per_s'] / 1e12:,.3f} TB/s "
        f"({measured['copy_efficiency']:.1%} of the {gpu['bandwidth_bytes_per_s'] / 1e12:,.4g} TB/s peak); "
        f"matmul {measured['matmul_n']}^3 {measured['matmul_dtype']} {measured['matmul_flops'] / 1e12:,.4g} "
        f"TFLOP/s ({measured['matmul_efficiency']:.1%} of {gpu['bf16_flops'] / 1e12:,.4g})",
        f"- kernels: {kernel_summary(gpu['kernels'])}" if "kernels" in gpu else
        f"- kernel efficiencies on {measured['reference_model']}: bandwidth {gpu['bandwidth_efficiency']:.1%} "
        f"(decode steps), compute {gpu['compute_efficiency']:.1%} and attention {gpu['attention_efficiency']:.1%} "
        f"(prefills; {measured['prefill_fit']})",
        "",
        "## Error of each estimate (estimate / measured - 1), per kind: median / worst",
        "",
        f"Targets: cache bytes exact; prefill peak within 5%; prefill and decode latency within 10%. "
        f"{scaling_note(int(first.get('layers', 0) or 0), int(first.get('full_layers', 0) or 0)) if rows else ''}. "
        "FLOPs counted: FlopCounterMode's count against the estimate of what it counts (whole query x key "
        "rectangles; kvplan.profilers.flops).",
        "",
        *error_table(rows),
        "",
        "## Misses of the targets (each needs its cause written below it)",
        "",
        *(misses(rows) or ["- none"]),
        "",
        *causes,
        "## Rows that did not fit",
        "",
        *(verdicts or ["- none"]),
        *(["", "## Not run (time budget)", ""] + [f"- {r['attention']}, batch {r['batch']}, context "
                                                   f"{format_tokens(int(r['context']))}" for r in not_run]
          if not_run else []),
        "",
        "## Every row",
        "",
        *row_table(rows),
        "",
    ]
    return "\n".join(text)


def main(argv=None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    out = Path(args.out)
    if args.reestimate:
        return _reestimate_files(out, args.name, args.model)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    contexts, batches = parse_token_list(args.contexts, "--contexts"), parse_token_list(args.batches, "--batches")
    kinds = _kinds(args.kinds) if args.kinds else matrix(args.model)

    print(f"calibrating {device} ...", file=sys.stderr)
    profile = calibrate(device, "auto", args.usd_per_hour, args.repeats,
                        progress=lambda message: print(f"  {message}", file=sys.stderr))
    profile_path = out / f"{args.name}-profile.json"
    write_atomically(profile_path, json.dumps(profile, indent=1) + "\n")
    estimate_gpu = gpu_from_file(profile_path)

    settings = Settings(device=device, dtype=default_dtype(device), repeats=args.repeats)
    env = device_environment(device)
    csv_path = out / f"{args.name}.csv"
    deadline = started + args.budget_seconds
    # Shortest work first, so a time budget cuts the longest rows: every kind at each (context, batch) in turn.
    for context in contexts:
        for batch in batches:
            sweep = Sweep(model=args.model, attentions=kinds, contexts=[context], batches=[batch], layers=args.layers,
                          estimate_gpu=estimate_gpu, settings=settings, env=env)
            if time.monotonic() > deadline:
                continue
            print(f"profiling context {format_tokens(context)}, batch {batch} ...", file=sys.stderr)
            run(sweep, str(csv_path), resume=True, deadline=deadline)
    rows = read_rows(csv_path)
    wanted = {(spec, b, c) for spec in kinds for b in batches for c in contexts}
    rows = [r for r in rows if (r["attention"], r["batch"], r["context"]) in wanted]
    done = {(r["attention"], r["batch"], r["context"]) for r in rows}
    not_run = [r for r in ({"attention": s, "batch": b, "context": c} for c in contexts for b in batches for s in kinds)
               if (r["attention"], r["batch"], r["context"]) not in done]
    command = "python3 -m kvplan.profilers.validate " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    report_path = out / f"{args.name}.md"
    causes = causes_section(report_path.read_text()) if report_path.exists() else []
    write_atomically(report_path, report(rows, profile, command, not_run, causes))
    print(f"wrote {csv_path}, {report_path}, {profile_path} in {time.monotonic() - started:,.0f} s", file=sys.stderr)
    return 0


def _regenerate_command(report_text: str) -> str | None:
    """The command line in a report's Regenerate block."""
    lines = report_text.splitlines()
    return lines[lines.index("```") + 1] if "```" in lines else None


def _not_run_lines(report_text: str) -> list[tuple[str, int, int]]:
    """(attention, batch, context) of a report's "Not run" list."""
    lines = report_text.splitlines()
    if "## Not run (time budget)" not in lines:
        return []
    found = []
    for line in lines[lines.index("## Not run (time budget)") + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("- "):
            attention, batch, context = line[2:].rsplit(", ", 2)
            found.append((attention, int(batch.split()[-1]), parse_token_list(context.split()[-1], "context")[0]))
    return found


def _reestimate_files(out: Path, name: str, model: str) -> int:
    csv_path, profile_path, report_path = out / f"{name}.csv", out / f"{name}-profile.json", out / f"{name}.md"
    rows = reestimate(read_rows(csv_path), profile_path, model)
    columns = next(csv.reader(io.StringIO(csv_path.read_text())))
    write_atomically(csv_path, rows_text(columns, rows))
    old_report = report_path.read_text() if report_path.exists() else ""
    command = _regenerate_command(old_report) or f"python3 -m kvplan.profilers.validate --out {out} --name {name}"
    measured = {(r["attention"], int(r["batch"]), int(r["context"])) for r in rows}
    not_run = [{"attention": a, "batch": int(b), "context": int(c)} for a, b, c in _not_run_lines(old_report)
               if (a, int(b), int(c)) not in measured]
    profile = json.loads(profile_path.read_text())
    write_atomically(report_path, report(rows, profile, command, not_run, causes_section(old_report)))
    print(f"re-estimated {len(rows)} rows: wrote {csv_path}, {report_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
