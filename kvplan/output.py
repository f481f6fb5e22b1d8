"""Printing rows: a rich table with units for people, JSON or CSV (same columns) for programs.

`emit` is the one printer every command uses. `Report` is what a command's library function hands back:
the rows and the words around them (title, caption, warnings, notes), so no command words its own outcome.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .units import format_gib, format_tokens


@dataclass
class Report:
    """What a command prints, in order: `messages` on stderr, then `rows` (the table shows `table_rows` when
    set, JSON and CSV always every row), then `notes` on stdout under the table (not with --json/--csv)."""

    rows: list[dict]
    title: str | None = None
    caption: str | None = None
    messages: list[str] = field(default_factory=list)  # one line each, e.g. "warning: ..."
    notes: list[str] = field(default_factory=list)
    table_rows: list[dict] | None = None


def _clean(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def print_json(rows: Sequence[dict] | dict) -> None:
    """A list of flat rows (NaN and infinity as null), or one object as it is."""
    data = rows if isinstance(rows, dict) else [{k: _clean(v) for k, v in row.items()} for row in rows]
    json.dump(data, sys.stdout, indent=1)
    sys.stdout.write("\n")


def print_csv(rows: Sequence[dict], fields: Sequence[str] | None = None) -> None:
    """CSV with a header: `fields` in that order, else every key in the order rows first have it."""
    if not rows:
        return
    if fields is None:
        fields = list(rows[0])
        for row in rows[1:]:
            fields += [key for key in row if key not in fields]
    writer = csv.DictWriter(sys.stdout, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


# (header, function of a row) for the human table.
Column = tuple[str, Callable[[dict], str]]


def text(key: str) -> Callable[[dict], str]:
    """A column showing a row's value as plain text: brackets (as in 'llama-3.1-8b [mha]') are not rich markup."""
    from rich.markup import escape

    return lambda row: escape(str(row[key]))


def _gib(key: str) -> Callable[[dict], str]:
    return lambda row: format_gib(row[key])


def _yes_no(value: bool) -> str:
    return "[green]yes[/]" if value else "[red]no[/]"


ESTIMATE_COLUMNS: list[Column] = [
    ("model", text("model")),
    ("attention", text("attention")),
    ("kv", text("kv_dtype")),
    ("batch", lambda r: str(r["batch"])),
    ("context", lambda r: format_tokens(r["context"])),
    ("KV cache GiB", _gib("kv_cache_bytes")),
    ("weights GiB", _gib("weights_bytes")),
    ("activations GiB", _gib("activation_bytes")),
    ("GiB per GPU", _gib("total_bytes_per_gpu")),
    ("fits", lambda r: _yes_no(r["fits"])),
    ("prefill TFLOP", lambda r: f"{r['prefill_flops'] / 1e12:,.1f}"),
    ("prefill s", lambda r: f"{r['prefill_seconds']:,.3f}"),
    ("decode ms/step", lambda r: "-" if r["decode_seconds_per_token"] is None else f"{r['decode_seconds_per_token'] * 1e3:,.2f}"),
    ("$/Mtok prefill", lambda r: f"{r['prefill_usd_per_mtok']:,.3f}"),
    ("$/Mtok decode", lambda r: "-" if r["decode_usd_per_mtok"] is None else f"{r['decode_usd_per_mtok']:,.3f}"),
]


def deployment_caption(deployment, memory_and_weights: bool = False) -> str:
    """The line under a table saying where its numbers hold: GPUs and parallelism, (memory per GPU and weight
    format,) the unit GiB, the roofline's efficiencies and peaks, and the price."""
    gpu = deployment.gpu
    layout = f"tp {deployment.tp}, pp {deployment.pp}"
    if deployment.dp > 1 or deployment.ep > 1:
        layout += f", dp {deployment.dp}, ep {deployment.ep}"
    if deployment.overlap:
        layout += ", communication overlapped"
    where = f"{gpu.name} x{deployment.gpus} ({layout})"
    if memory_and_weights:
        where += f", {format_gib(gpu.memory_bytes)} GiB per GPU, {deployment.weight_format.name} weights"
    gemm = gpu.kernel_figures.gemm
    return (f"{where}; GiB = 2^30 bytes; roofline per operation (bf16 GEMMs at {gemm.compute:.0%} of "
            f"{gpu.bf16_flops / 1e12:,.4g} TFLOP/s, weights streamed at {gemm.bandwidth:.0%} of "
            f"{gpu.bandwidth_bytes_per_s / 1e12:,.2f} TB/s); ${gpu.usd_per_hour:.2f}/GPU-hour")


_TEXT_HEADERS = ("model", "attention", "kv", "gpu", "kind", "name", "source")


def print_table(rows: Sequence[dict], columns: Sequence[Column], title: str | None = None,
                caption: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption, caption_justify="left")
    for header, _ in columns:
        table.add_column(header, justify="left" if header in _TEXT_HEADERS else "right")
    for row in rows:
        table.add_row(*(fn(row) for _, fn in columns))
    # Piped output has no terminal width; keep every column readable rather than folding to 80.
    console = Console() if sys.stdout.isatty() else Console(width=240)
    console.print(table)


def emit(rows: Sequence[dict] | dict, as_json: bool, as_csv: bool, columns: Sequence[Column] = (),
         title: str | None = None, caption: str | None = None, fields: Sequence[str] | None = None) -> None:
    """Rows as JSON, as CSV (header `fields` when given), or as a table of `columns`; no rows, no table."""
    if as_json:
        print_json(rows)
    elif as_csv:
        print_csv(rows, fields)
    elif rows:
        print_table(rows, columns, title, caption)
