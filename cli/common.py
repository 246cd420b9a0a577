"""Shared CLI plumbing: one JSON object on stdout's last line, clean errors, sampler flags.

Conventions (docs/cli.md §1): ``--json`` prints exactly one JSON object as the last line of
stdout; progress and logs go to stderr. Bad input exits 2 with one line on stderr naming
the field; a run that fails mid-way exits 1. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from rllc.estimators import AllChainsDivergedError, SelectionError

DEBUG = {"on": False}


class UsageError(ValueError):
    """Bad input from the user: exit status 2, one line on stderr."""


def _first_line_of_validation(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "input"
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def handle_errors(fn: Callable) -> Callable:
    """Map exceptions to the CLI's exit codes: 2 for bad input, 1 for failed runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ValidationError as err:
            _die(2, f"invalid input: {_first_line_of_validation(err)}", err)
        except (UsageError, SelectionError, FileNotFoundError, KeyError) as err:
            msg = err.args[0] if err.args else str(err)
            _die(2, f"error: {msg}", err)
        except AllChainsDivergedError as err:
            _die(1, f"error: {err}", err)
        except KeyboardInterrupt as err:
            _die(130, "interrupted", err)
        except Exception as err:  # a run that fails mid-way
            _die(1, f"error: {type(err).__name__}: {err}", err)

    return wrapper


def _die(code: int, message: str, err: BaseException) -> None:
    if DEBUG["on"]:
        import traceback

        traceback.print_exception(err)
    print(message.splitlines()[0] if message else "error", file=sys.stderr)
    raise typer.Exit(code)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    return obj


def emit(result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], str]) -> None:
    """Print ``result`` as one JSON line (``--json``) or as readable text."""
    if as_json:
        sys.stdout.write(json.dumps(_jsonable(result), allow_nan=False) + "\n")
    else:
        sys.stdout.write(human(result).rstrip("\n") + "\n")
    sys.stdout.flush()


def table(rows: Sequence[dict[str, Any]], columns: Iterable[str]) -> str:
    """A plain fixed-width table of ``rows`` with the given columns."""
    cols = list(columns)

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if not math.isfinite(v) else f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


# Sampler flags shared by every sampling command (docs/cli.md §2); None = keep the preset's value.
StepSize = Annotated[float | None, typer.Option("--step-size", help="ε, SGLD step size.")]
Localization = Annotated[float | None, typer.Option("--localization", help="γ, localization.")]
NBeta = Annotated[float | None, typer.Option("--nbeta", help="nβ, inverse temperature × n.")]
Chains = Annotated[int | None, typer.Option("--chains", help="Number of chains.")]
Draws = Annotated[int | None, typer.Option("--draws", help="Draws per chain.")]
Burnin = Annotated[
    str | None,
    typer.Option("--burnin", help="Draws left out of the estimate, or auto: chosen from the "
                 "trace."),
]
StepsPerDraw = Annotated[int | None, typer.Option("--steps-per-draw", help="Steps between draws.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Minibatch size.")]
Precond = Annotated[
    str | None, typer.Option("--preconditioner", help="none | rmsprop.")
]
Seed = Annotated[int | None, typer.Option("--seed", help="Random seed.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on the last line.")]


def sampler_overrides(**flags: Any) -> dict[str, Any]:
    """The sampler flags that were given, as ``SGLDConfig`` field overrides."""
    return {k: v for k, v in flags.items() if v is not None}
