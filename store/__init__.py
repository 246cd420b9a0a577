"""rllc.store: every chain trace of a sweep in Zarr v3, on local disk or S3, read as xarray.

    store = open_store("s3://bucket/prefix")            # or a local path; ./rllc-store
    store.create_sweep("demo", grid, config, spec)       # idempotent
    store.write_cell("demo", CellKey(ckpt, "1:7", "train", 0), result)
    ds = open_sweep("s3://bucket/prefix", "demo")        # labelled xarray.Dataset
    rows = llc_table(ds, component="1:*", burnin=50)     # λ̂ recomputed from loss[chain, draw]

Layout: ``sweeps/<sweep_id>`` (later ``tuning/<id>``), see ``rllc.store.sweep``. Plain
files (checkpoints, corpora) at local paths or ``s3://`` URIs: ``rllc.store.files``.
"""

# Names load on first use (PEP 562), so that ``rllc.store.files`` (stdlib only) and the
# light modules do not pull in xarray and zarr; the imports below are for type checkers.
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import DEFAULT_STORE, TraceStore
    from .errors import (
        LayoutMismatchError,
        LayoutVersionError,
        QueryError,
        ReadOnlyStoreError,
        StoreError,
        StoreNotFoundError,
        UnknownGroupError,
    )
    from .layout import ArraySpec, GroupLayout, group_path
    from .query import llc_table, open_sweep, select, sweep_config
    from .sweep import CELL_DIMS, CellKey, SweepGrid
    from .zarr_store import LocalTraceStore, S3TraceStore, ZarrTraceStore, open_store

_SUBMODULES = ("errors", "layout", "sweep", "base", "zarr_store", "query")


def __getattr__(name: str):
    if name in __all__:
        import importlib

        for sub in _SUBMODULES:
            module = importlib.import_module(f".{sub}", __name__)
            if name in vars(module):
                value = globals()[name] = vars(module)[name]
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "CELL_DIMS",
    "DEFAULT_STORE",
    "ArraySpec",
    "CellKey",
    "GroupLayout",
    "LayoutMismatchError",
    "LayoutVersionError",
    "LocalTraceStore",
    "QueryError",
    "ReadOnlyStoreError",
    "S3TraceStore",
    "StoreError",
    "StoreNotFoundError",
    "SweepGrid",
    "TraceStore",
    "UnknownGroupError",
    "ZarrTraceStore",
    "group_path",
    "llc_table",
    "open_store",
    "open_sweep",
    "select",
    "sweep_config",
]
