"""The ``rllc`` console script: one Typer app, one module per command group."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common, estimate, query
from . import heads as heads_cli
from . import sweep as sweep_cli
from . import train as train_cli

app = typer.Typer(
    name="rllc",
    help="Refined local learning coefficients of network components by batched SGLD.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(estimate.app, name="estimate")
app.add_typer(sweep_cli.app, name="sweep")
app.command("query")(query.query)
app.command("train")(train_cli.train_command)
app.command("heads")(heads_cli.heads_command)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    common.DEBUG["on"] = debug


def main() -> None:
    app()


if __name__ == "__main__":
    main()
