"""Printing rows: a rich table with units for people, JSON or CSV (same columns) for programs."""

from __future__ import annotations

import csv
import json
import math
import sys
from typing import Callable, Sequence

from .units import format_gib, format_tokens

GiB = 2**30


def _clean(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def print_json(rows: Sequence[dict]) -> None:
    json.dump([{k: _clean(v) for k, v in row.items()} for row in rows], sys.stdout, indent=1)
    sys.stdout.write("\n")


def print_csv(rows: Sequence[dict]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    for row in rows[1:]:
        columns += [key for key in row if key not in columns]
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


# (header, function of a row) for the human table of estimate rows.
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


def emit(rows: Sequence[dict], as_json: bool, as_csv: bool, columns: Sequence[Column], title: str | None = None,
         caption: str | None = None) -> None:
    if as_json:
        print_json(rows)
    elif as_csv:
        print_csv(rows)
    else:
        print_table(rows, columns, title, caption)
