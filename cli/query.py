"""``rllc query STORE``: the LLC table of a stored sweep, recomputed from its loss traces."""

from __future__ import annotations

import csv
import io
from enum import StrEnum
from typing import Annotated, Any

import typer

from rllc.store import DEFAULT_STORE, QueryError, StoreError, open_store
from rllc.store.query import ROW_KEYS, llc_query

from .common import JsonFlag, UsageError, emit, handle_errors, table

COLUMNS = ROW_KEYS  # the contract's row keys, defined once in rllc.store.query
#: ``--tuning`` without an id: the store's only tune.
ALL_TUNES = "*"
TRIAL_COLUMNS = ("trial", "step_size", "localization", "nbeta", "objective", "passed",
                 "llc_mean", "llc_stderr", "stages", "failed")


class Format(StrEnum):
    """Output formats of ``rllc query``."""

    table = "table"
    csv = "csv"
    json = "json"


@handle_errors
def query(
    store: Annotated[
        str, typer.Argument(metavar="STORE", help="Store: a local path or s3://bucket/prefix.")
    ] = DEFAULT_STORE,
    sweep: Annotated[
        str | None, typer.Option("--sweep", help="Sweep id (optional if the store has one).")
    ] = None,
    component: Annotated[
        str | None, typer.Option("--component", help='Component label or glob, e.g. "1:*".')
    ] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Dataset name or glob.")] = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="Checkpoint URI, glob or training step.")
    ] = None,
    burnin: Annotated[
        str | None,
        typer.Option("--burnin", help="Draws left out, or auto: chosen again from the pooled "
                     "trace (default: the burn-in stored with each cell)."),
    ] = None,
    estimator: Annotated[
        str | None, typer.Option("--estimator", help="plain | paired (default: the sweep's).")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table, csv or json.")] = Format.table,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", metavar="NAME", help="Add a baseline's columns beside λ̂ "
                     "(hessian_trace, fisher_trace, hessian_rank, ablation); repeatable."),
    ] = None,
    tuning: Annotated[
        str | None, typer.Option("--tuning", metavar="[ID]", help="List the trials of a "
                                 "tune (rllc tune) instead; without ID, the store's only one.")
    ] = None,
    server: Annotated[
        str | None,
        typer.Option("--server", metavar="URL", envvar="RLLC_SERVER", show_envvar=True,
                     help="Ask rllc serve at URL (GET /sweeps/ID/llc, token from RLLC_TOKEN) "
                     "instead of reading STORE."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """LLC per (checkpoint, component, dataset): mean, std and standard error over the
    chains of every done seed, recomputed from the stored loss traces."""
    if tuning is not None:
        if server:
            raise UsageError("--tuning reads a store; it does not go through --server")
        return _tuning(store, tuning, fmt, as_json)
    if burnin is not None and burnin != "auto":
        try:
            burnin = int(burnin)
        except ValueError:
            raise UsageError(f"--burnin must be a number of draws or auto, got {burnin!r}") from None
    if server:
        result = _remote(server, sweep, component=component, dataset=dataset,
                         checkpoint=checkpoint, burnin=burnin, estimator=estimator,
                         metrics=metric or None)
    else:
        result = _local(store, sweep, component=component, dataset=dataset,
                        checkpoint=checkpoint, burnin=burnin, estimator=estimator,
                        metrics=metric or None)
    if fmt is Format.csv and not as_json:
        emit(result, False, _csv)
    else:
        emit(result, as_json or fmt is Format.json, _human)


def _local(store: str, sweep: str | None, **query: Any) -> dict[str, Any]:
    try:
        return llc_query(store, sweep, **query)
    except (QueryError, StoreError) as err:  # bad store, sweep id, filter or burn-in
        raise UsageError(str(err)) from err


def _remote(server: str, sweep: str | None, **query: Any) -> dict[str, Any]:
    """The same table from the server; without ``--sweep``, the server's only sweep."""
    from .client import remote

    def call(client) -> dict[str, Any]:
        name = sweep
        if name is None:
            known = [s["sweep"] for s in client.list()]
            if len(known) != 1:
                raise UsageError(f"server {server} has {len(known)} sweeps; name one with "
                                 f"--sweep{': ' + ', '.join(known) if known else ''}")
            name = known[0]
        return client.query(name, **query)

    return remote(server, call)


def _human(result: dict[str, Any]) -> str:
    head = (
        f"sweep {result['sweep']} in {result['store']}: burn-in {result['burnin']}, "
        f"{result['estimator']} estimator, {len(result['rows'])} rows"
    )
    return head + "\n" + table(result["rows"], result["columns"])


def _csv(result: dict[str, Any]) -> str:
    return _csv_rows(result["rows"], result["columns"])


def _tuning(store: str, tune_id: str, fmt: Format, as_json: bool) -> None:
    from rllc.store.tuning import trial_rows, tuning_attrs

    try:
        ts = open_store(store, read_only=True)
        if tune_id == ALL_TUNES:
            known = ts.list("tuning")
            if len(known) != 1:
                raise UsageError(f"store {store} has {len(known)} tunes; name one with "
                                 f"--tuning ID{': ' + ', '.join(known) if known else ''}")
            tune_id = known[0]
        attrs = tuning_attrs(ts, tune_id)
        rows = trial_rows(ts, tune_id)
    except StoreError as err:
        raise UsageError(str(err)) from err
    result = {"rows": rows, "store": store, "tune": tune_id, "best": attrs.get("best")}
    if fmt is Format.csv and not as_json:
        emit(result, False, lambda r: _csv_rows(r["rows"], TRIAL_COLUMNS))
    else:
        emit(result, as_json or fmt is Format.json, _human_tuning)


def _human_tuning(result: dict[str, Any]) -> str:
    best = result["best"]
    head = (f"tune {result['tune']} in {result['store']}: {len(result['rows'])} trials; best "
            + (f"ε = {best['step_size']:.3g}, γ = {best['localization']:.3g}" if best
               else "not chosen yet (unfinished)"))
    return head + "\n" + table(result["rows"], TRIAL_COLUMNS)


def _csv_rows(rows: list[dict[str, Any]], columns) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
