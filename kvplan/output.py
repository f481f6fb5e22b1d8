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


ESTIMATE_COLUMNS: list[Column] = [  # every column (--wide); headers on two lines keep the columns narrow
    ("model", text("model")),
    ("attention", text("attention")),
    ("kv", text("kv_dtype")),
    ("batch", lambda r: str(r["batch"])),
    ("context", lambda r: format_tokens(r["context"])),
    ("KV\nGiB", _gib("kv_cache_bytes")),
    ("weights\nGiB", _gib("weights_bytes")),
    ("activations\nGiB", _gib("activation_bytes")),
    ("GiB per\nGPU", _gib("total_bytes_per_gpu")),
    ("fits", lambda r: _yes_no(r["fits"])),
    ("prefill\nTFLOP", lambda r: f"{r['prefill_flops'] / 1e12:,.1f}"),
    ("prefill\ns", lambda r: f"{r['prefill_seconds']:,.3f}"),
    ("decode\nms/step", lambda r: "-" if r["decode_seconds_per_token"] is None else f"{r['decode_seconds_per_token'] * 1e3:,.2f}"),
    ("$/Mtok\nprefill", lambda r: f"{r['prefill_usd_per_mtok']:,.3f}"),
    ("$/Mtok\ndecode", lambda r: "-" if r["decode_usd_per_mtok"] is None else f"{r['decode_usd_per_mtok']:,.3f}"),
]
# The default table: what a reader compares between rows, narrow enough for a 100-column terminal.
ESTIMATE_COMPACT = ("model", "attention", "KV\nGiB", "GiB per\nGPU", "fits", "prefill\ns", "decode\nms/step",
                    "$/Mtok\nprefill", "$/Mtok\ndecode")
_ESTIMATE_KEYS = {"kv": "kv_dtype", "batch": "batch", "context": "context"}  # header -> row key


def estimate_columns(rows: Sequence[dict], wide: bool = False) -> tuple[list[Column], str]:
    """(columns, title) of the estimate table: every column with `wide`; else the compact set, plus kv, batch
    and context where rows differ in them (where they do not, the title states them once)."""
    if wide or not rows:
        return list(ESTIMATE_COLUMNS), "kvplan estimate"
    same = {header for header, key in _ESTIMATE_KEYS.items() if len({row[key] for row in rows}) == 1}
    columns = [c for c in ESTIMATE_COLUMNS if c[0] in ESTIMATE_COMPACT or c[0] in set(_ESTIMATE_KEYS) - same]
    stated = [f"{header} {fn(rows[0])}" for header, fn in ESTIMATE_COLUMNS if header in same]
    return columns, "kvplan estimate" + (f": {', '.join(stated)}" if stated else "")


def deployment_caption(deployment, weights_format=None) -> str:
    """The line under a table saying where its numbers hold: GPUs and parallelism, (with a dtypes.WeightsFormat:
    memory per GPU and how weights are stored,) the unit GiB, the roofline's efficiencies and peaks, and the
    price."""
    gpu = deployment.gpu
    layout = f"tp {deployment.tp}, pp {deployment.pp}"
    if deployment.dp > 1 or deployment.ep > 1:
        layout += f", dp {deployment.dp}, ep {deployment.ep}"
    if deployment.overlap:
        layout += ", communication overlapped"
    where = f"{gpu.name} x{deployment.gpus} ({layout})"
    if weights_format is not None:
        where += f", {format_gib(gpu.memory_bytes)} GiB per GPU, {weights_format.name} weights"
    gemm = gpu.kernel_figures.gemm
    return (f"{where}; GiB = 2^30 bytes; roofline per operation (bf16 GEMMs at {gemm.compute:.0%} of "
            f"{gpu.bf16_flops / 1e12:,.4g} TFLOP/s, weights streamed at {gemm.bandwidth:.0%} of "
            f"{gpu.bandwidth_bytes_per_s / 1e12:,.2f} TB/s); ${gpu.usd_per_hour:.2f}/GPU-hour")


_TEXT_HEADERS = ("model", "attention", "kv", "gpu", "kind", "name", "source", "aliases", "change", "caveat", "weights",
                 "binding", "figure", "measured")


def terminal_width() -> int:
    """Columns a table may fill: the terminal's; for output that is not a terminal, $COLUMNS, else 100."""
    import os
    import shutil

    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 100


def fit_widths(spans: Sequence[tuple[int, int, int]], room: int, text_columns: Sequence[int] = ()) -> list[int] | None:
    """Column widths summing to at most `room`, or None where the longest words alone need more.

    spans: (longest word, longest line below the header, longest line) per column. Every column starts at its
    longest line; while too wide, the widest column that may still narrow loses one character, first down to
    its cells (headers wrap), then text columns down to their longest word, then any column (its cells wrap
    at spaces). No column is narrower than its longest word, so no number is ever cut.
    """
    if sum(low for low, _, _ in spans) > room:
        return None
    widths = [high for _, _, high in spans]
    cells = [max(low, body) for low, body, _ in spans]
    for floor in (cells, [low if i in text_columns else cells[i] for i, (low, _, _) in enumerate(spans)],
                  [low for low, _, _ in spans]):
        while sum(widths) > room:
            narrowable = [i for i, width in enumerate(widths) if width > floor[i]]
            if not narrowable:
                break
            widths[max(narrowable, key=lambda i: widths[i])] -= 1
    return widths


def _spans(console, grid: list[list[str]]) -> list[tuple[int, int, int]]:
    """fit_widths' spans of the columns of cells grid[row][column] (row 0: the headers)."""
    from rich.measure import Measurement
    from rich.text import Text

    spans = []
    for column in zip(*grid):
        measured = [Measurement.get(console, console.options, Text.from_markup(cell)) for cell in column]
        spans.append((max(m.minimum for m in measured), max([m.maximum for m in measured[1:]], default=0),
                      max(m.maximum for m in measured)))
    return spans


def _borders(grid: list[list[str]]) -> int:
    """Characters of a table's rules and padding: one rule between columns and at each edge, a space each side."""
    return 3 * len(grid[0]) + 1


def _rich_table(grid: list[list[str]], widths: list[int], header: bool, justify: list[str], title: str | None):
    from rich.table import Table

    table = Table(title=title, show_header=header)
    for width, how, head in zip(widths, justify, grid[0]):
        table.add_column(head if header else None, justify=how, width=width, overflow="fold")
    for cells in grid[1:] if header else grid:
        table.add_row(*cells)
    return table


def print_table(rows: Sequence[dict], columns: Sequence[Column], title: str | None = None,
                caption: str | None = None, width: int | None = None) -> None:
    """Rows as a table `width` columns wide (default: terminal_width()) in which no value is ever cut: cells wrap
    at spaces (fit_widths); where even the longest words do not fit, the table turns (one column per row,
    headers down the left) if that fits, else is printed as narrow as its longest words allow, wider than the
    terminal. The caption follows, wrapped to the width."""
    from rich.console import Console

    width = width or terminal_width()
    console = Console(width=width)
    headers = [header for header, _ in columns]
    grid = [headers] + [[fn(row) for _, fn in columns] for row in rows]
    text_columns = [i for i, h in enumerate(headers) if h.strip() in _TEXT_HEADERS]
    header, justify = True, ["left" if i in text_columns else "right" for i in range(len(headers))]
    spans = _spans(console, grid)
    widths = fit_widths(spans, width - _borders(grid), text_columns)
    if widths is None:
        turned = [[h.replace("\n", " ")] + [cells[i] for cells in grid[1:]] for i, h in enumerate(headers)]
        turned_spans = _spans(console, turned)
        turned_widths = fit_widths(turned_spans, width - _borders(turned), [0])
        if turned_widths is not None:
            grid, widths, header, justify = turned, turned_widths, False, ["left"] + ["right"] * len(rows)
    if widths is None:  # wider than the terminal (whose lines then wrap), but no narrower than its longest words
        narrowest = sum(low for low, _, _ in spans)
        widths = fit_widths(spans, narrowest, text_columns)
        console = Console(width=narrowest + _borders(grid))
    console.print(_rich_table(grid, widths, header, justify, title))
    if caption:
        console.print(caption, style="table.caption", highlight=False)


def emit(rows: Sequence[dict] | dict, as_json: bool, as_csv: bool, columns: Sequence[Column] = (),
         title: str | None = None, caption: str | None = None, fields: Sequence[str] | None = None) -> None:
    """Rows as JSON, as CSV (header `fields` when given), or as a table of `columns`; no rows, no table."""
    if as_json:
        print_json(rows)
    elif as_csv:
        print_csv(rows, fields)
    elif rows:
        print_table(rows, columns, title, caption)
