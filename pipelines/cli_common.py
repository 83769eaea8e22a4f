"""What every ``fae`` command shares: consoles, common options, errors, progress, output.

The command modules (:mod:`pipelines.cli_raw`, :mod:`pipelines.cli_layout`) and
:mod:`pipelines.cli` import these from here, so that :mod:`pipelines.cli` can import the
commands and register them on its app without an import cycle.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from fae_data.errors import FaeError, StorageError, os_error_message

# soft_wrap: a line is not broken at the console's width (80 columns when stdout is a
# pipe or a file), so `fae demo | tee log` keeps one summary line per line. Tables still
# fit the width.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

T = TypeVar("T")

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]


def _guarded(debug: bool, fn: Callable[[], T]) -> T:
    """Run ``fn``; turn a library error into one red line and its exit code (1; 2 for a
    path or URL the storage backends cannot use), and Ctrl-C into one line and 130.

    Storage that could not be read or written says ``error (storage):``, as ``fae-train``
    does: a scheduler running the command retries those, and takes ``error:`` for a
    refusal of the input that a retry would meet again."""
    try:
        return fn()
    except FaeError as exc:
        if debug:
            raise
        label = "error (storage)" if isinstance(exc, StorageError) else "error"
        err.print(f"[bold red]{label}:[/] {escape(str(exc))}", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except BrokenPipeError:
        raise  # stdout's reader went away: Click exits 1 without a traceback
    except OSError as exc:  # storage the library did not check: a root that is a file, ...
        if debug:
            raise
        err.print(f"[bold red]error (storage):[/] {escape(os_error_message(exc))}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]: committed results are intact; rerun to finish")
        raise typer.Exit(130) from None


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    if not enabled or not err.is_terminal:
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        yield bar


def _emit(as_json: bool, payload: dict[str, Any], human: Callable[[], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        human()
