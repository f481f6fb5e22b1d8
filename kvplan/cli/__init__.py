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

from ..units import InputError
from . import estimate, planning, profiling, search
from .options import err

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="What a context length costs in memory, compute and money, for every kind of attention.")
for command in (estimate.estimate, estimate.models, estimate.gpus, planning.budget, planning.recommend, planning.cost,
                search.plan, profiling.profile, profiling.calibrate):
    app.command()(command)


def _click_errors() -> tuple[type, ...]:
    """Click's usage-error classes: typer >= 0.20 vendors click as typer._click, older typer uses click."""
    classes = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            classes.append(__import__(module, fromlist=["ClickException"]).ClickException)
        except ImportError:
            pass
    return tuple(classes)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: bad input ends in one line on stderr and exit status 2, never a traceback."""
    warnings.simplefilter("default")
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # standalone_mode=False hands click's usage errors to us, so they too print as one line.
        code = app(args=args or ["--help"], prog_name="kvplan", standalone_mode=False)
    except InputError as error:
        err(f"error: {error}")
        sys.exit(2)
    except _click_errors() as error:
        err(f"error: {error.format_message()}")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - the contract is one line, not a traceback
        if os.environ.get("KVPLAN_DEBUG"):
            raise
        if type(error).__name__ == "Abort":  # click's Ctrl-C
            err("interrupted")
            sys.exit(130)
        err(f"internal error: {type(error).__name__}: {error} (set KVPLAN_DEBUG=1 for the traceback)")
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)
