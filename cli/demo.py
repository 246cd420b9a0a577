"""``rllc demo [--quick] [--out DIR]`` (the main job) and ``rllc report STORE --out DIR``
(its report, re-rendered from the store alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonFlag, UsageError, emit, handle_errors, table


@handle_errors
def demo_command(
    quick: Annotated[
        bool, typer.Option("--quick", help="A smaller model, fewer checkpoints and draws: "
                           "the same report in ≤ 5 minutes (default run: ≤ 45).")
    ] = False,
    out: Annotated[
        Path, typer.Option("--out", help="Folder of the run: run/ (checkpoints), store/ "
                           "(traces), report/index.html. Re-running into it resumes.")
    ] = Path("rllc-demo"),
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Ray actors (default: one per "
                                 "CPU).")
    ] = None,
    clustering: Annotated[
        str, typer.Option("--clustering", help="How the report clusters the normalised "
                          "wrLLC curves: kmeans, or dtw (needs tslearn: pip install "
                          "rllc[dtw]).")
    ] = "kmeans",
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (default: a local "
                                 "Ray runtime).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """The paper's head analysis end to end: train, tune, sweep wrLLCs, drLLCs and
    baselines, cluster and stage, and write the report."""
    from rllc.analysis.clusters import ClusterMethod
    from rllc.jobs.demo import QUICK, DemoConfig, run_demo

    config = QUICK if quick else DemoConfig()
    try:
        method = ClusterMethod(clustering)
    except ValueError:
        raise UsageError(f"--clustering must be kmeans or dtw, got {clustering!r}") from None
    if method == ClusterMethod.DTW:
        import importlib.util

        if importlib.util.find_spec("tslearn") is None:
            raise UsageError("--clustering dtw needs tslearn: pip install tslearn (or "
                             "rllc[dtw])")
    config = config.model_copy(update={"workers": workers or config.workers,
                                       "clustering": method})
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} exists and is not a folder")
    try:
        result = run_demo(out, config, progress=True, address=address)
    except ValueError as err:
        if "holds a demo run with other settings" in str(err):
            raise UsageError(f"--out: {err}") from err
        raise
    emit(result.as_dict(), as_json, _human)


@handle_errors
def report_command(
    store: Annotated[str, typer.Argument(help="Store of a demo run: a path or "
                                         "s3://bucket/prefix.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write report/ into.")],
    sweep: Annotated[
        str | None, typer.Option("--sweep", help="The demo's id (its record), or one of its "
                                 "sweeps' ids; needed when the store holds several demos.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-render a demo's report from its store alone."""
    from rllc.report import render_report
    from rllc.store import StoreNotFoundError, UnknownGroupError, open_store
    from rllc.store.records import list_records, read_record

    try:
        handle = open_store(store, read_only=True)
        records = list_records(handle, "reports")
    except StoreNotFoundError as err:
        raise UsageError(str(err)) from err
    report_id = sweep
    if sweep is not None and sweep not in records:
        owners = [r for r in records
                  if sweep in read_record(handle, "reports", r).get("sweeps", {}).values()]
        if not owners:
            have = ", ".join(records) or "none"
            raise UsageError(f"--sweep: no demo or demo sweep {sweep!r} in {store} (demos: "
                             f"{have})")
        report_id = owners[0]
    if report_id is None and len(records) != 1:
        have = ", ".join(records) if records else "none: run rllc demo first"
        raise UsageError(f"store: {store} holds {len(records)} demo records ({have}); name "
                         "one with --sweep")
    try:
        index = render_report(store, out, report_id)
    except UnknownGroupError as err:
        raise UsageError(str(err)) from err
    emit({"report": str(index)}, as_json, lambda r: f"report: {r['report']}")


def _human(r: dict) -> str:
    rows = [{"stage": k, "seconds": v} for k, v in r["timings"].items()]
    return (table(rows, ["stage", "seconds"]) + f"\n\nreport: {r['report']}\nstore:  "
            f"{r['store']}\nseconds: {r['seconds']:.0f}")
