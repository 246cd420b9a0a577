"""``rllc submit SPEC``, ``rllc status ID``, ``rllc cancel ID``: a sweep on a server, or here.

With ``--server URL`` (or ``RLLC_SERVER``) each talks to ``rllc serve`` through
``rllc.service.client`` (token from ``RLLC_TOKEN``). Without one they work locally:
``submit`` runs the sweep in the foreground as ``rllc sweep run`` does, ``status`` reads
the store, and ``cancel`` has nothing to stop (a foreground sweep stops with Ctrl-C): it
reports a finished sweep and refuses an unfinished one.

The JSON keys are the service's: ``sweep``, ``state``, ``cells_done``, ``cells_failed``,
``cells_total`` (docs/cli.md §3). Refusals by the server exit 2 (bad input: a bad spec,
an unknown id, a path outside its roots, a wrong token), with its reason on one line; an
unreachable server exits 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from rllc.store import DEFAULT_STORE

from .common import JsonFlag, UsageError, emit, handle_errors, table
from .sweep import Address, NumCpus, SpecArg

Server = Annotated[
    str | None,
    typer.Option("--server", metavar="URL", envvar="RLLC_SERVER", show_envvar=True,
                 help="rllc serve's URL (token from RLLC_TOKEN); default: work locally."),
]
IdArg = Annotated[str, typer.Argument(metavar="ID", help="The sweep id (the spec's name).",
                                      show_default=False)]
Store = Annotated[str, typer.Option("--store", help="Without a server: the store to read.")]
KEYS = ("sweep", "state", "cells_done", "cells_failed", "cells_total")


def remote(server: str, call: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """``call(client)`` against ``server``; its refusals as the CLI's errors."""
    from rllc.service.client import Client, ServiceError, describe

    try:
        return call(Client(server))
    except ServiceError as err:
        if err.status == 0:
            raise RuntimeError(str(err.detail)) from None
        hint = " (set RLLC_TOKEN to the server's token)" if err.status == 401 else ""
        raise UsageError(f"server refused ({err.status}): {describe(err.detail)}{hint}") from None


@handle_errors
def submit_command(spec: SpecArg, server: Server = None, address: Address = None,
                   num_cpus: NumCpus = None, as_json: JsonFlag = False) -> None:
    """Submit a sweep to a server, or run it here in the foreground (as rllc sweep run)."""
    if server:
        if not spec.is_file():
            raise UsageError(f"spec file not found: {spec}")
        emit(remote(server, lambda c: c.submit(spec)), as_json, _human)
        return
    from rllc.jobs.spec import SpecError, load_spec
    from rllc.jobs.sweep import run_sweep
    from rllc.store import LayoutMismatchError

    try:
        report = run_sweep(load_spec(spec), address=address, num_cpus=num_cpus)
    except (SpecError, LayoutMismatchError) as err:
        raise UsageError(str(err)) from None
    out = report.as_dict()
    out["state"] = "done" if report.cells_done == report.cells_total else "failed"
    emit(out, as_json, _human)
    if report.cells_failed:
        raise typer.Exit(1)


@handle_errors
def status_command(id: IdArg, server: Server = None, store: Store = DEFAULT_STORE,
                   as_json: JsonFlag = False) -> None:
    """A sweep's state and progress: from the server, or from the store."""
    sweep = id
    if server:
        emit(remote(server, lambda c: c.status(sweep)), as_json, _human)
    else:
        emit(local_status(store, sweep), as_json, _human)


@handle_errors
def cancel_command(id: IdArg, server: Server = None, store: Store = DEFAULT_STORE,
                   as_json: JsonFlag = False) -> None:
    """Cancel a submitted sweep: its workers stop, finished cells stay (resume: the
    client's resume, or POST /sweeps/ID/resume)."""
    sweep = id  # the argument's name is the contract's (ID)
    if server:
        emit(remote(server, lambda c: c.cancel(sweep)), as_json, _human)
        return
    out = local_status(store, sweep)
    if out["state"] not in ("done", "failed", "cancelled"):
        raise UsageError(f"sweep {sweep!r} is not finished, but without --server (or "
                         "RLLC_SERVER) there is nothing to cancel: a foreground sweep stops "
                         "with Ctrl-C")
    emit(out, as_json, _human)


def local_status(store: str, sweep: str) -> dict[str, Any]:
    """A sweep's progress from its store. Its state is the service's where the service
    ran it (its registry is in this store); otherwise ``done`` (every cell done),
    ``failed`` (some cells failed) or ``running`` (unfinished: running, or interrupted;
    ``rllc sweep resume`` finishes it)."""
    from rllc.service.registry import Job, Registry
    from rllc.store import StoreError, open_store

    try:
        ts = open_store(store, read_only=True)
        sweep = ts.resolve_sweep(sweep)
        progress = ts.sweep_progress(sweep)
    except StoreError as err:
        raise UsageError(str(err)) from None
    record = Registry(store).get(Job.SWEEP, sweep) if "service" in ts.list() else None
    if record is not None:
        state = record["state"]
    elif progress["cells_done"] == progress["cells_total"]:
        state = "done"
    else:
        state = "failed" if progress["cells_failed"] else "running"
    return {"sweep": sweep, "state": state, **progress, "store": store}


def _human(r: dict[str, Any]) -> str:
    return table([r], [k for k in KEYS if k in r])

