"""`kvplan budget`, `kvplan recommend` and `kvplan cost`: what fits, what to change, what each token costs.

Each command parses its options, calls one function of kvplan.budget, kvplan.recommend or kvplan.costcurve
(which also word their outcomes and draw any --plot), and prints the Report it returns.
"""

from __future__ import annotations

from typing import Optional

import typer

from ..costcurve import DEFAULT_CHUNK
from ..units import InputError, format_gib, format_tokens
from .options import ALL, DeploymentOptions, deployment_options, show

PlotOpt = typer.Option(None, "--plot", metavar="FILE.png", help="Write a PNG figure to this file (needs "
                       "matplotlib), whole or not at all.")
ContextOpt = typer.Option(None, "--context", "-c", metavar="TOKENS", help="Tokens per sequence: 4096, 4k, 128k (k = "
                          "1024); default: the model's max positions, else 32k.")


def _tokens(text: str | None, flag: str) -> int | None:
    from ..units import parse_tokens

    return parse_tokens(text, flag) if text else None


def _usd(value) -> str:
    return "-" if value is None else f"{value:,.3f}"


def _count(value: int | None) -> str:
    if value is None:
        return "any"
    return f"{value:,}" if value else "[red]none[/]"


BUDGET_COLUMNS = [  # the model is in the title: one model per table
    ("attention", lambda r: r["attention"]),
    ("kv", lambda r: r["kv_dtype"]),
    ("KiB/token", lambda r: f"{r['kv_bytes_per_token'] / 1024:,.1f}"),
    ("weights GiB/GPU", lambda r: format_gib(r["weights_bytes_per_gpu"])),
    ("longest context", lambda r: _count(r["max_context"])),
    ("binding", lambda r: r["max_context_binding"]),
    ("headroom GiB", lambda r: format_gib(r["max_context_headroom_bytes"])),
    ("$/Mtok decode", lambda r: _usd(r["max_context_decode_usd_per_mtok"])),
    ("largest batch", lambda r: _count(r["max_batch"])),
    ("binding ", lambda r: r["max_batch_binding"]),
    ("headroom GiB ", lambda r: format_gib(r["max_batch_headroom_bytes"])),
    ("$/Mtok decode ", lambda r: _usd(r["max_batch_decode_usd_per_mtok"])),
]


@deployment_options()
def budget(
    options: DeploymentOptions,
    batch: str = typer.Option("1", "--batch", "-b", metavar="N", help="Sequences served together, for the "
                              "longest-context column."),
    context: Optional[str] = ContextOpt,
    plot: Optional[str] = PlotOpt,
) -> None:
    """Longest context (tokens) at --batch and largest batch at --context that fit, per attention kind.

    The model's own attention always comes first; each --attention adds a re-cast. Headroom is GiB per GPU
    left at that point; binding is the larger growing share there (cache or activations). With --block-size
    the context is whole blocks.
    """
    from ..budget import budget_report
    from ..units import parse_tokens

    report = budget_report(options.estimator_arguments(), parse_tokens(batch, "--batch"), _tokens(context, "--context"),
                           plot)
    show(report, options.output, BUDGET_COLUMNS)


def _before_after(key: str):
    return lambda r: f"{r[key + '_before']:,.3f} -> {r[key]:,.3f}"


RECOMMEND_COLUMNS = [
    ("#", lambda r: str(r["rank"])),
    ("change", lambda r: r["change"]),
    ("GPUs", lambda r: str(r["gpus"])),
    ("batch", lambda r: str(r["batch"])),
    ("GiB/GPU", lambda r: format_gib(r["total_bytes_per_gpu"])),
    ("freed GiB/GPU", lambda r: format_gib(r["memory_freed_bytes_per_gpu"])),
    ("decode tok/s", lambda r: f"{r['decode_tokens_per_second']:,.0f}"),
    ("$/Mtok decode", _before_after("decode_usd_per_mtok")),
    ("$/Mtok prefill", _before_after("prefill_usd_per_mtok")),
    ("caveat", lambda r: r["caveat"]),
]
COPIES_COLUMN = ("copies (GPUs)", lambda r: f"{r['copies']} ({r['gpus_in_all']})")


@deployment_options(include=tuple(name for name in ALL if name != "attention"))
def recommend(
    options: DeploymentOptions,
    context: Optional[str] = ContextOpt,
    batch: Optional[str] = typer.Option(None, "--batch", "-b", metavar="N", help="Sequences served together "
                                        "(default 1)."),
    concurrency: Optional[str] = typer.Option(None, "--concurrency", metavar="N", help="Sequences to serve at once: "
                                              "each option uses the largest batch that fits, up to this, and as many "
                                              "copies as needed."),
    max_usd_per_mtok: Optional[float] = typer.Option(None, "--max-usd-per-mtok", metavar="USD", help="Keep options "
                                                     "whose decode $ per million tokens is at most this."),
    max_changes: int = typer.Option(2, "--max-changes", metavar="N", help="Changes combined in one option.", min=1,
                                    max=4),
    top: int = typer.Option(10, "--top", metavar="N", help="Options shown in the table (--json and --csv give all).",
                            min=1),
) -> None:
    """Changes (kv dtype, tensor parallelism, paging, window, attention re-cast) that fit, cheapest decode first.

    --kv-dtype is the one format served now (recommend tries fp8, int8 and int4 itself). Each option shows GiB
    per GPU, memory freed per GPU (at the same batch as the deployment given), decode tokens/s, and $ per
    million tokens before -> after. Re-cast attention and windows need a model trained that way.
    """
    from ..recommend import recommend_report

    if batch and concurrency:
        raise InputError("give --batch or --concurrency, not both")
    if "," in options.kv_dtype:
        raise InputError("recommend takes the one --kv-dtype served now; it tries fp8, int8 and int4 itself")
    if max_usd_per_mtok is not None and not 0 < max_usd_per_mtok < float("inf"):
        raise InputError(f"--max-usd-per-mtok must be positive, not {max_usd_per_mtok}")
    wanted = _tokens(concurrency, "--concurrency")
    report = recommend_report(options.estimator_arguments(), _tokens(context, "--context"), _tokens(batch, "--batch"),
                              wanted, max_usd_per_mtok, max_changes, top)
    columns = RECOMMEND_COLUMNS[:4] + [COPIES_COLUMN] + RECOMMEND_COLUMNS[4:] if wanted else RECOMMEND_COLUMNS
    show(report, options.output, columns)


COST_COLUMNS = [("attention", lambda r: r["attention"]), ("kv", lambda r: r["kv_dtype"]),
                ("position", lambda r: f"{r['position']:,}"),
                ("$/Mtok prefill", lambda r: f"{r['prefill_usd_per_mtok']:,.3f}"),
                ("$/Mtok decode", lambda r: f"{r['decode_usd_per_mtok']:,.3f}"),
                ("decode ms/step", lambda r: f"{r['decode_seconds_per_token'] * 1e3:,.2f}")]


@deployment_options()
def cost(
    options: DeploymentOptions,
    context: Optional[str] = ContextOpt,
    batch: str = typer.Option("1", "--batch", "-b", metavar="N", help="Sequences decoded together (and prefilled "
                              "together)."),
    chunk: str = typer.Option(format_tokens(DEFAULT_CHUNK), "--chunk-per-sequence", "--chunk", metavar="TOKENS",
                              help="Prefill chunk priced, tokens per sequence (also --chunk): the prefill curve at p "
                              "is the per-token cost of a chunk starting at p. Not --prefill-chunk (tokens per "
                              "prefill forward across the batch, which bounds activation memory; default here: batch "
                              "x this)."),
    points: int = typer.Option(65, "--points", metavar="N", help="Positions from 0 to the context (--json, --csv, "
                               "--plot).", min=2, max=100000),
    plot: Optional[str] = PlotOpt,
) -> None:
    """$ per million tokens of prefill and of decode against token position 0..context, one curve per kind.

    Decode at p: the step writing the token at position p for the batch. Prefill at p: the per-token cost of a
    --chunk-per-sequence prefill chunk starting at p with the earlier tokens cached (the marginal cost of prompt
    tokens at p).
    """
    from ..costcurve import cost_report
    from ..units import parse_tokens

    report = cost_report(options.estimator_arguments(), _tokens(context, "--context"), parse_tokens(batch, "--batch"),
                         parse_tokens(chunk, "--chunk-per-sequence"), points, plot)
    show(report, options.output, COST_COLUMNS)
