"""The rows of a distributed run as a table (rich) or a file (JSON or CSV): attention rows (tp, dp) or expert
rows (ep), each with its own columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

COLUMNS = [
    ("attention", "attention"), ("tp", "tp"), ("dp", "dp"), ("rank", "rank"), ("batch", "batch"),
    ("rank batch", "rank_batch"), ("context", "context"),
    ("cache MiB", "cache_bytes"), ("cache est MiB", "cache_bytes_estimate"), ("cache ok", "cache_matches"),
    ("weights MiB", "weights_bytes"), ("weights est MiB", "weights_bytes_estimate"),
    ("peak MiB", "peak_bytes"), ("peak est MiB", "peak_bytes_estimate"), ("peak err", "peak_error"),
    ("transient MiB", "transient_bytes"), ("transient est MiB", "transient_bytes_estimate"),
    ("output err", "output_error"), ("output ok", "output_matches"),
]

EXPERT_COLUMNS = [
    ("ep", "ep"), ("rank", "rank"), ("tokens", "tokens"), ("rank tokens", "rank_tokens"),
    ("experts", "rank_experts"), ("weights MiB", "weights_bytes"), ("weights est MiB", "weights_bytes_estimate"),
    ("weights err", "weights_error"), ("dispatch MiB", "dispatch_bytes"), ("remote MiB", "dispatch_bytes_remote"),
    ("combine MiB", "combine_bytes"), ("dispatch us", "dispatch_seconds"), ("combine us", "combine_seconds"),
    ("a2a us", "all_to_all_seconds"), ("a2a est us", "all_to_all_seconds_estimate"), ("a2a err", "all_to_all_error"),
    ("estimator us", "estimator_seconds"), ("output err", "output_error"), ("output ok", "output_matches"),
]


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "[green]yes[/]" if value else "[red]no[/]"
    if key.endswith("_error") and key != "output_error":
        return f"{value:+.1%}"
    if key == "output_error":
        return f"{value:.1e}"
    if "_bytes" in key:
        return f"{value / 2**20:,.3f}"
    if "_seconds" in key:
        return f"{value * 1e6:,.1f}"
    return str(value)


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if not rows:
        return
    first = rows[0]
    where = f"{first['dtype']} compute, {first['backend']} on {escape(first['gpu'])}"
    if first["parallel"] == "ep":
        columns = EXPERT_COLUMNS
        table = Table(title=f"{escape(first['model'])}: one MoE layer over {first['ep']} expert-parallel ranks "
                            f"({first['experts']} experts, top-{first['top_k']}), {where}",
                      caption="MiB = 2^20 bytes, us = microseconds. weights est: kvplan's Estimator for the MoE "
                              "layer at tp 1, dp = ep (the most loaded GPU). dispatch/combine: bytes this rank sends "
                              "(remote: to other ranks) in the compute dtype, and the median time of each "
                              "all-to-all; a2a est: kvplan.parallel.all_to_all_seconds of the same bytes on "
                              f"{escape(str(first['estimate_gpu']))} (err = est / measured - 1); estimator: "
                              "Estimator.communication_seconds (fp8 dispatch, bf16 combine). output: "
                              "max|sharded - unsharded| / max|unsharded| on rank 0.",
                      caption_justify="left")
    else:
        columns = COLUMNS
        layout = "tensor-parallel" if first["parallel"] == "tp" else "data-parallel"
        table = Table(title=f"{escape(first['model'])}: {layout} attention, {first['layers']} of "
                            f"{first['full_layers']} layers, {first['kv_dtype']} cache, {where}",
                      caption="MiB = 2^20 bytes. est: kvplan's Estimator for the attention layers alone at the same "
                              "tp and dp (err = est / measured - 1). output: max|sharded - unsharded| / "
                              "max|unsharded| (tp: on rank 0; dp: each rank's own sequences).",
                      caption_justify="left")
    for header, _ in columns:
        table.add_column(header, justify="left" if header == "attention" else "right")
    for row in rows:
        table.add_row(*(escape(_cell(key, row[key])) if key == "attention" else _cell(key, row[key])
                        for _, key in columns))
    Console(width=240).print(table)


def write_rows(rows: list[dict], path: str) -> None:
    """JSON (a list of rows) for a .json path, else CSV."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".json":
        target.write_text(json.dumps(rows, indent=1) + "\n")
        return
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
