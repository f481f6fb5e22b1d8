"""The rows of a distributed run as a table (rich) or a file (JSON or CSV): attention rows (tp, dp) or expert
rows (ep), each with its own columns."""

from __future__ import annotations

import csv
import io
import json

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
    """The rows as a table that fits the terminal and never cuts a number (kvplan.output.print_table)."""
    from rich.markup import escape

    from kvplan.output import print_table as show

    if not rows:
        return
    first = rows[0]
    where = f"{first['dtype']} compute, {first['backend']} on {escape(first['gpu'])}"
    if first["parallel"] == "ep":
        keys = EXPERT_COLUMNS
        title = (f"{escape(first['model'])}: one MoE layer over {first['ep']} expert-parallel ranks "
                 f"({first['experts']} experts, top-{first['top_k']}), {where}")
        caption = ("MiB = 2^20 bytes, us = microseconds. weights est: kvplan's Estimator for the MoE layer at tp 1, "
                   "dp = ep (the most loaded GPU). dispatch/combine: bytes this rank sends (remote: to other ranks) "
                   "in the compute dtype, and the median time of each all-to-all; a2a est: "
                   "Estimator.all_to_all_seconds of the same bytes on "
                   f"{escape(str(first['estimate_gpu']))} (err = est / measured - 1); estimator: "
                   "Estimator.communication_seconds (fp8 dispatch, bf16 combine). output: "
                   "max|sharded - unsharded| / max|unsharded| on rank 0.")
    else:
        keys = COLUMNS
        layout = "tensor-parallel" if first["parallel"] == "tp" else "data-parallel"
        title = (f"{escape(first['model'])}: {layout} attention, {first['layers']} of {first['full_layers']} "
                 f"layers, {first['kv_dtype']} cache, {where}")
        caption = ("MiB = 2^20 bytes. est: kvplan's Estimator for the attention layers alone at the same tp and dp "
                   "(err = est / measured - 1). output: max|sharded - unsharded| / max|unsharded| (tp: on rank 0; "
                   "dp: each rank's own sequences).")
    columns = [(header, (lambda key: lambda row: escape(_cell(key, row[key])) if key == "attention"
                         else _cell(key, row[key]))(key)) for header, key in keys]
    show(rows, columns, title=title, caption=caption)


def write_rows(rows: list[dict], path: str) -> None:
    """JSON (a list of rows) for a .json path, else CSV; written atomically into a folder that exists."""
    from kvplan.files import check_writable, write_atomically

    target = check_writable(path)
    if target.suffix == ".json":
        write_atomically(target, json.dumps(rows, indent=1) + "\n")
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(target, buffer.getvalue())
