"""The `kvplan` command line: the app, its commands and `main`.

Each command lives in one module by group (estimate.py: estimate, models, gpus; planning.py: budget, recommend,
cost; search.py: plan; profiling.py: profile, calibrate); options.py declares what they share. Command modules import
options.py and the library, never one another; this module registers them.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import List, Optional

import typer

from ..units import InputError, MeasurementError
from . import estimate, planning, profiling, search
from .options import err

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # click's plain help: wrapped at words to the terminal, never cut
                  context_settings={"help_option_names": ["-h", "--help"]})
for command in (estimate.estimate, estimate.models, estimate.gpus, planning.budget, planning.recommend, planning.cost,
                search.plan, profiling.profile, profiling.calibrate):
    app.command(short_help=command.__doc__.strip().splitlines()[0].rstrip("."))(command)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"kvplan {__version__}")
        raise typer.Exit()


@app.callback()
def _kvplan(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                         help="Print the version and exit.")) -> None:
    """What a context length costs in memory, compute and money, for every kind of attention."""


def _click_errors() -> tuple[type, ...]:
    """Click's usage-error classes: typer >= 0.20 vendors click as typer._click, older typer uses click."""
    classes = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            classes.append(__import__(module, fromlist=["ClickException"]).ClickException)
        except ImportError:
            pass
    return tuple(classes)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (warnings.warn) as one line each, as the command's own warnings print."""
    err(f"warning: {message}")


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: bad input ends in one line on stderr and exit status 2, never a traceback; Ctrl-C ends in
    "interrupted" and exit status 130."""
    warnings.simplefilter("default")
    warnings.showwarning = _one_line_warning
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # standalone_mode=False hands click's usage errors to us, so they too print as one line.
        code = app(args=args or ["--help"], prog_name="kvplan", standalone_mode=False)
    except InputError as error:
        err(f"error: {error.flag_message()}")
        sys.exit(2)
    except MeasurementError as error:
        err(f"error: {error}")
        sys.exit(1)
    except _click_errors() as error:
        err(f"error: {error.format_message()}")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        code = 130
    except Exception as error:  # noqa: BLE001 - the contract is one line, not a traceback
        if os.environ.get("KVPLAN_DEBUG"):
            raise
        if type(error).__name__ == "Abort":  # click's Ctrl-C
            code = 130
        else:
            err(f"internal error: {type(error).__name__}: {error} (set KVPLAN_DEBUG=1 for the traceback)")
            sys.exit(1)
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130
        err("interrupted")
    if isinstance(code, int) and code:
        sys.exit(code)
