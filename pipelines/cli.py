"""The ``fae`` command line: the embedded default, no Airflow and no server needed.

Each command parses its options, calls one ``pipelines.run_*`` function and prints a
summary (``--json`` for machines). Library errors become one red line and exit code 1,
2 for a path or URL the storage backends cannot use (``--debug`` shows the traceback
instead); Ctrl-C becomes one line and exit code 130.

The commands live in :mod:`pipelines.cli_raw` (synth, ingest) and
:mod:`pipelines.cli_layout` (layout, plan, report, verify, clean), what they share in
:mod:`pipelines.cli_common`; this module holds the app, its entry point and ``demo``, and
registers the commands in the order ``fae --help`` lists them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from fae_data import __version__
from pipelines.cli_common import AsJson, Debug, Quiet, _emit, _guarded, _progress, err, out
from pipelines.cli_layout import clean, layout, plan, report, verify
from pipelines.cli_raw import ingest, synth

app = typer.Typer(
    name="fae",
    help="fae-data: hot-embedding-aware data preparation for recommendation training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()  # Click itself exits 1 quietly when stdout's reader went away (EPIPE)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"fae-data {__version__}")
        raise typer.Exit()


# --- demo -----------------------------------------------------------------------------


def demo(
    workdir: Annotated[Path, typer.Option(help="Where raw files and the storage root go.")] = Path(
        "fae-demo"
    ),
    rows: Annotated[int, typer.Option(help="Synthetic Criteo rows per day.")] = 200_000,
    days: Annotated[int, typer.Option(
        min=2, help="Synthetic days (at least 2: the last one is halved into val and test).")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    scale: Annotated[float, typer.Option(help="Cardinality scale of the synthetic data.")] = 0.01,
    budget: Annotated[str, typer.Option(help="GPU budget for hot rows.")] = "1MiB",
    train_steps: Annotated[int, typer.Option(
        help="Steps of the short CPU training at the end (0 skips it).")] = 100,
    quiet: Quiet = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Run the whole pipeline on synthetic Criteo data: synth -> ingest -> layout -> verify
    -> a short CPU training of the separate trainer."""
    from pipelines.demo import run_demo

    with _progress(not quiet and not as_json) as bar:
        task = bar.add_task("demo", total=None, rate="") if bar is not None else None

        def step(message: str) -> None:
            if bar is not None and task is not None:
                bar.update(task, description=message)
            elif not quiet and not as_json:
                err.print(f"[dim]{message}[/]")

        result = _guarded(
            debug,
            lambda: run_demo(workdir, rows=rows, days=days, seed=seed, scale=scale,
                             budget=budget, train_steps=train_steps, step=step),
        )
    _emit(as_json, result.to_dict(), lambda: out.print(result.summary()))


# Registered here, in the order ``fae --help`` lists them.
for _command in (synth, ingest, layout, plan, report, verify, clean, demo):
    app.command()(_command)


if __name__ == "__main__":
    main()
