"""The ``rllc`` console script: one Typer app, one module per command group."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from . import baselines as baselines_cli
from . import client as client_cli
from . import common, estimate, query
from . import demo as demo_cli
from . import heads as heads_cli
from . import serve as serve_cli
from . import sweep as sweep_cli
from . import train as train_cli
from . import tune as tune_cli

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
app.command("baselines")(baselines_cli.baselines_command)
app.add_typer(tune_cli.app, name="tune")
app.command("demo")(demo_cli.demo_command)
app.command("report")(demo_cli.report_command)
app.command("serve")(serve_cli.serve_command)
app.command("submit")(client_cli.submit_command)
app.command("status")(client_cli.status_command)
app.command("cancel")(client_cli.cancel_command)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    common.DEBUG["on"] = debug


#: click's UsageError (bad flags and values), as Typer raises it; Typer exports only its
#: subclass BadParameter.
_CLICK_USAGE_ERROR: type[Exception] = typer.BadParameter.__mro__[1]


#: Options whose value may be left out (``rllc query STORE --tuning [ID]``), and the value
#: they then take: click has no optional-value options, so ``main`` fills it in.
OPTIONAL_VALUES = {"--tuning": query.ALL_TUNES}


def fill_optional_values(argv: list[str]) -> list[str]:
    """``argv`` with each bare option of ``OPTIONAL_VALUES`` given its default value."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in OPTIONAL_VALUES and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUES[arg])
    return out


def main() -> None:
    """Run the app; a bad flag or value exits 2 with one line on stderr naming it (the
    CLI's convention for every error of input), not click's usage box."""
    try:
        code = app(args=fill_optional_values(sys.argv[1:]), standalone_mode=False)
    except _CLICK_USAGE_ERROR as err:
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())  # a bare group: its help, as click would show it
            code = 0
        else:
            message = err.format_message().splitlines() or ["bad usage"]
            print(f"error: {message[0]}", file=sys.stderr)
            code = 2
    except typer.Abort:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
