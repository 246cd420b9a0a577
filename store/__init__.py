"""rllc.store: every chain trace of a sweep in Zarr v3, on local disk or S3, read as xarray.

    store = open_store("s3://bucket/prefix")            # or a local path; ./rllc-store
    store.create_sweep("demo", grid, config, spec)       # idempotent
    store.write_cell("demo", CellKey(ckpt, "1:7", "train", 0), result)
    ds = open_sweep("s3://bucket/prefix", "demo")        # labelled xarray.Dataset
    rows = llc_table(ds, component="1:*", burnin=50)     # λ̂ recomputed from loss[chain, draw]

Layout: ``sweeps/<sweep_id>`` (later ``tuning/<id>``), see ``rllc.store.sweep``.
"""

from .base import DEFAULT_STORE, TraceStore
from .errors import (
    LayoutMismatchError,
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

__all__ = [
    "CELL_DIMS",
    "DEFAULT_STORE",
    "ArraySpec",
    "CellKey",
    "GroupLayout",
    "LayoutMismatchError",
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
