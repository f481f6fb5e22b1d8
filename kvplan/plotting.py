"""Figures for --plot: matplotlib's Agg canvas (no display, no pyplot state), imported only when a plot is asked for.

This module only draws: the numbers come computed from kvplan.budget (memory_curves) and kvplan.costcurve.
"""

from __future__ import annotations

from pathlib import Path

from .units import InputError, format_tokens


def new_figure(columns: int = 1):
    """(figure, axes): one row of `columns` plots, linear axes starting at 0."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'kvplan[plot]'") from None
    figure = Figure(figsize=(6.5 * columns if columns > 1 else 8, 5), layout="constrained")
    return figure, figure.subplots(1, columns)


def token_axis(ax, label: str) -> None:
    """Token counts on the x axis, ticks at multiples of 1024 written as 32k, 128k, 1M."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 4, 8, 10]) if ax.get_xlim()[1] < 1024
                               else _KiLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_tokens(int(x)) if x >= 1 else "0"))
    ax.set_xlabel(label)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)


def _KiLocator():
    """Ticks at round multiples of 1024 tokens (1k, 2k, 4k, ... steps), about 8 of them."""
    from matplotlib.ticker import MaxNLocator

    class Locator(MaxNLocator):
        def tick_values(self, vmin, vmax):
            return [1024 * t for t in super().tick_values(vmin / 1024, vmax / 1024)]

    return Locator(nbins=8, steps=[1, 2, 4, 8, 10])


def save_figure(figure, path: str | Path) -> str:
    """Write a PNG; an unwritable path is bad input, not a crash."""
    import io

    from .files import check_writable, write_atomically

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"--plot writes PNG files: give a name ending in .png, not {str(path)!r}")
    check_writable(path, "--plot")
    png = io.BytesIO()
    figure.savefig(png, dpi=110, format="png")
    try:
        write_atomically(path, png.getvalue())
    except OSError as error:
        raise InputError(f"--plot: cannot write {str(path)!r}: {error.strerror or error}") from None
    return str(path)


def plot_budget(contexts: list[int], curves: list[dict], memory_bytes: int, title: str, path: str | Path) -> str:
    """Memory per GPU (GiB) against context, one line per budget.memory_curves curve, a dot at each curve's
    longest fitting context and a dashed line at the GPU's memory. Writes a PNG to `path` and returns it."""
    gib = 2**30
    figure, axes = new_figure()
    for curve in curves:
        line, = axes.plot(contexts, [used / gib for used in curve["total_bytes_per_gpu"]], label=curve["label"])
        if curve["max_context"]:
            axes.plot([curve["max_context"]], [curve["max_context_total_bytes_per_gpu"] / gib], "o",
                      color=line.get_color())
    axes.axhline(memory_bytes / gib, color="black", linestyle="--", linewidth=1,
                 label=f"memory {memory_bytes / gib:,.1f} GiB")
    token_axis(axes, "context (tokens per sequence)")
    axes.set_ylabel("memory per GPU (GiB)")
    axes.set_title(title, fontsize=10)
    axes.set_ylim(0, max(memory_bytes / gib * 1.6, 1))
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def plot_cost(curves: list[list[dict]], path: str | Path) -> str:
    """Two panels, prefill and decode $/Mtok against token position, one line per costcurve.cost_curve."""
    figure, (prefill_ax, decode_ax) = new_figure(columns=2)
    for curve in curves:
        xs = [r["position"] for r in curve]
        label = f"{curve[0]['attention']}, kv {curve[0]['kv_dtype']}"
        prefill_ax.plot(xs, [r["prefill_usd_per_mtok"] for r in curve], label=label)
        decode_ax.plot(xs, [r["decode_usd_per_mtok"] for r in curve], label=label)
    first = curves[0][0]
    for ax, phase, detail in ((prefill_ax, "prefill", f"{first['chunk']:,}-token chunks"),
                              (decode_ax, "decode", f"batch {first['batch']}")):
        token_axis(ax, "token position")
        ax.set_ylabel(f"{phase} $ per million tokens")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{phase}, {detail}", fontsize=10)
        ax.legend(fontsize=8)
    figure.suptitle(f"{first['model'].split(' [')[0]} ({first['weight_dtype']} weights) on {first['gpu']} x{first['gpus']} "
                    f"at ${first['usd_per_hour']:.2f}/GPU-hour: cost by token position",
                    fontsize=11)
    return save_figure(figure, path)
