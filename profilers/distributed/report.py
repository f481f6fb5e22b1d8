"""The rows of a tensor-parallel run as a table (rich) or a file (JSON or CSV)."""

from __future__ import annotations

import csv
import io
import json

COLUMNS = [
    ("attention", "attention"), ("tp", "tp"), ("rank", "rank"), ("batch", "batch"), ("context", "context"),
    ("cache MiB", "cache_bytes"), ("cache est MiB", "cache_bytes_estimate"), ("cache ok", "cache_matches"),
    ("weights MiB", "weights_bytes"), ("weights est MiB", "weights_bytes_estimate"),
    ("peak MiB", "peak_bytes"), ("peak est MiB", "peak_bytes_estimate"), ("peak err", "peak_error"),
    ("transient MiB", "transient_bytes"), ("transient est MiB", "transient_bytes_estimate"),
    ("output err", "output_error"), ("output ok", "output_matches"),
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
    if key.endswith("_bytes") or key.endswith("_bytes_estimate"):
        return f"{value / 2**20:,.3f}"
    return str(value)


def print_table(rows: list[dict]) -> None:
    """The rows as a table that fits the terminal and never cuts a number (kvplan.output.print_table)."""
    from rich.markup import escape

    from kvplan.output import print_table as show

    if not rows:
        return
    first = rows[0]
    columns = [(header, (lambda key: lambda row: escape(_cell(key, row[key])) if key == "attention"
                         else _cell(key, row[key]))(key)) for header, key in COLUMNS]
    show(rows, columns,
         title=f"{escape(first['model'])}: tensor-parallel attention, {first['layers']} of {first['full_layers']} "
               f"layers, {first['dtype']} compute, {first['kv_dtype']} cache, {first['backend']} on "
               f"{escape(first['gpu'])}",
         caption="MiB = 2^20 bytes. est: kvplan's Estimator for the attention layers alone at the same tp (err = est / "
                 "measured - 1). output: max|sharded - unsharded| / max|unsharded| on rank 0.")


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
