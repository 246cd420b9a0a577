"""``rllc sweep plan|run|resume SPEC``: check a sweep spec, run it on Ray, or finish it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import JsonFlag, UsageError, emit, handle_errors, table

app = typer.Typer(help="Plan, run and resume sweeps of (r)LLC estimates.", no_args_is_help=True)

SpecArg = Annotated[
    Path, typer.Argument(metavar="SPEC", help="Sweep spec, YAML or JSON.", show_default=False)
]
Address = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray cluster to use (e.g. ray://head:10001 or auto); default: start a local one.",
    ),
]
NumCpus = Annotated[
    int | None,
    typer.Option("--num-cpus", min=1, help="CPUs of the local Ray runtime (default: all)."),
]


@contextmanager
def _spec_errors() -> Iterator[None]:
    """Bad specs (and a spec that no longer matches its stored sweep) exit 2, one line."""
    from rllc.jobs.spec import SpecError
    from rllc.store import LayoutMismatchError

    try:
        yield
    except (SpecError, LayoutMismatchError) as err:
        raise UsageError(str(err)) from None


@app.command("plan")
@handle_errors
def plan_command(
    spec: SpecArg,
    timing: Annotated[
        bool,
        typer.Option("--timing/--no-timing", help="Time a few SGLD steps for the estimate."),
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Validate a spec; print its grid, SGLD work and estimated time."""
    from rllc.jobs.plan_timing import plan
    from rllc.jobs.spec import load_spec

    with _spec_errors():
        result = plan(load_spec(spec), timing=timing)
    emit(result, as_json, _human_plan)


def _run(spec: Path, resume: bool, address: str | None, num_cpus: int | None, as_json: bool):
    from rllc.jobs.spec import load_spec
    from rllc.jobs.sweep import run_sweep

    with _spec_errors():
        report = run_sweep(load_spec(spec), resume=resume, address=address, num_cpus=num_cpus)
    emit(report.as_dict(), as_json, _human_run)
    if report.cells_failed:  # the JSON still tells scripts which counts came out
        raise typer.Exit(1)


@app.command("run")
@handle_errors
def run_command(
    spec: SpecArg, address: Address = None, num_cpus: NumCpus = None, as_json: JsonFlag = False
) -> None:
    """Create the sweep in its store and run every cell on Ray (exit 1 if cells failed)."""
    _run(spec, False, address, num_cpus, as_json)


@app.command("resume")
@handle_errors
def resume_command(
    spec: SpecArg, address: Address = None, num_cpus: NumCpus = None, as_json: JsonFlag = False
) -> None:
    """Finish an interrupted sweep: run the cells not done yet (failed ones again)."""
    _run(spec, True, address, num_cpus, as_json)


def _human_plan(r: dict[str, Any]) -> str:
    eta = r["estimated_seconds"]
    lines = [
        f"sweep {r['sweep']} → {r['store']}",
        f"{len(r['checkpoints'])} checkpoints (steps {', '.join(map(str, r['steps']))})",
        f"{len(r['components'])} components: {', '.join(r['components'])}",
        f"datasets: {', '.join(r['datasets'])}; seeds: {', '.join(map(str, r['seeds']))}",
        f"{r['cells']} cells × {r['chains']} chains × {r['draws']} draws × "
        f"{r['steps_per_draw']} steps = {r['sgld_steps']:,} SGLD steps",
    ]
    if eta is not None:
        lines.append(f"estimated {eta:.3g} s with {r['workers']} local worker(s)")
    return "\n".join(lines)


def _human_run(r: dict[str, Any]) -> str:
    cols = ["sweep", "store", "cells_total", "cells_done", "cells_failed", "seconds"]
    return table([r], cols)
