"""Figures for --plot: matplotlib's Agg canvas (no display, no pyplot state), imported only when a plot is asked for."""

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
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"--plot writes PNG files: give a name ending in .png, not {str(path)!r}")
    if not path.parent.is_dir():
        raise InputError(f"--plot: folder {str(path.parent)!r} does not exist")
    try:
        figure.savefig(path, dpi=110)
    except OSError as error:
        raise InputError(f"--plot: cannot write {str(path)!r}: {error.strerror or error}") from None
    return str(path)
