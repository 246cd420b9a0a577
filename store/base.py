"""``TraceStore``: a narrow store of labelled array groups, and sweeps built on top of it.

A backend implements ``exists``, ``list``, ``read`` (→ ``xarray.Dataset``), ``_create``
(a group from a ``GroupLayout``), ``_write`` (arrays at a region of a group) and
``with_read_only``.
Read-only mode is checked once, in the public ``create``/``write``; the sweep methods
(``create_sweep``, ``write_cell``, ``done_cells``, …) are written once, over those
primitives, for every backend — as zarr's ``Store`` builds its defaults on a few abstract
methods.

Concurrency: a sweep cell is one chunk of each array and exactly one writer writes it,
then sets its ``done`` flag (its own chunk) last. Whole-object writes are atomic on both
backends (local: temp file + rename; S3: PUT), so a reader sees either the old or the new
chunk, and ``done`` is never set before the traces are in place. Creating a sweep is not
safe to race (the driver creates it once, before workers start); a crash half-way through
creation is harmless, because the group's ``rllc`` attribute, which marks it complete, is
written last and a retry re-creates an incomplete group.
"""

from __future__ import annotations

import builtins
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import xarray as xr

from rllc.estimators.config import SGLDConfig

from .errors import (
    LayoutMismatchError,
    LayoutVersionError,
    ReadOnlyStoreError,
    UnknownGroupError,
)
from .layout import GroupLayout, group_path, validate_id
from .sweep import (
    ATTR_RLLC,
    ATTR_SPEC,
    LAYOUT_VERSION,
    SWEEP_VARIABLES,
    CellKey,
    SweepGrid,
    cell_values,
    columns_of_metrics,
    compute_from_attrs,
    config_from_attrs,
    diff_fields,
    grid_from_attrs,
    layout_version,
    metrics_from_attrs,
    sweep_layout,
)

if TYPE_CHECKING:
    from rllc.estimators import SamplingResult

#: Where ``rllc`` keeps its traces when no store is named (docs/cli.md §1).
DEFAULT_STORE = "./rllc-store"


class TraceStore(ABC):
    """Groups of named-dimension arrays at paths like ``sweeps/<id>``, local or remote.

    Capability flags (class attributes, like zarr's ``supports_*``) say what a backend can
    do; ``supports_writes`` is also false for a read-only handle.
    """

    #: Child groups can be listed (``list``, ``list_sweeps``).
    supports_listing: ClassVar[bool] = True
    #: Different processes may write different cells of one sweep at the same time.
    supports_concurrent_writers: ClassVar[bool] = True

    def __init__(self, uri: str, *, read_only: bool = False) -> None:
        self.uri = uri
        self.read_only = read_only
        # A sweep's grid and config never change after creation: safe to cache per handle.
        self._attrs_cache: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"{type(self).__name__}({self.uri!r}, {mode})"

    @property
    def supports_writes(self) -> bool:
        """False for a read-only handle."""
        return not self.read_only

    # ---- the backend's primitives ---------------------------------------------------

    @abstractmethod
    def with_read_only(self) -> Self:
        """A read-only handle on the same store (this one is unchanged)."""

    @abstractmethod
    def exists(self, path: str) -> bool:
        """Whether a group exists at ``path`` (``""`` is the store's root)."""

    @abstractmethod
    def list(self, prefix: str = "") -> builtins.list[str]:
        """Names of the groups directly under ``prefix``, sorted; empty if there is none."""

    @abstractmethod
    def read(self, path: str) -> xr.Dataset:
        """The group at ``path`` as a lazily loaded, labelled ``xarray.Dataset``."""

    def read_attrs(self, path: str) -> dict[str, Any]:
        """The attributes of the group at ``path`` (backends may do this more cheaply)."""
        return dict(self.read(path).attrs)

    def read_array(self, path: str, name: str) -> np.ndarray:
        """All values of array ``name`` of the group at ``path``."""
        return np.asarray(self.read(path)[name].values)

    @abstractmethod
    def _create(self, path: str, layout: GroupLayout) -> None:
        """Create (or re-create over an incomplete one) the group at ``path``; write its
        coordinate values, then its attributes last."""

    @abstractmethod
    def _write(self, path: str, values: Mapping[str, Any], region: Mapping[str, int]) -> None:
        """Write each array of ``values`` at the integer ``region`` (dim → index; whole
        along other dims) of the group at ``path``, possibly concurrently; all are stored
        when it returns (so a later call, like the ``done`` flag's, lands after them)."""

    # ---- checked public writes ------------------------------------------------------

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(
                f"store {self.uri} is open read-only: writes are refused "
                "(open it with read_only=False to write)"
            )

    def create(self, path: str, layout: GroupLayout) -> None:
        """Create the group at ``path`` from ``layout`` (see ``_create``)."""
        self._check_writable()
        self._create(path, layout)

    def write(self, path: str, values: Mapping[str, Any], region: Mapping[str, int]) -> None:
        """Write arrays into a region of an existing group (see ``_write``)."""
        self._check_writable()
        self._write(path, values, region)

    def update_attrs(self, path: str, attrs: Mapping[str, Any]) -> None:
        """Set attributes of an existing group (each key replaced whole)."""
        self._check_writable()
        self._update_attrs(path, attrs)

    def _update_attrs(self, path: str, attrs: Mapping[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot update attributes")

    # ---- sweeps ---------------------------------------------------------------------

    @staticmethod
    def group_path(kind: str, group_id: str) -> str:
        """``"<kind>/<id>"``, e.g. ``sweeps/demo``; kinds: sweeps, tuning."""
        return group_path(kind, group_id)

    def list_sweeps(self) -> builtins.list[str]:
        """Ids of the sweeps in this store, sorted."""
        return self.list("sweeps")

    def create_sweep(
        self,
        sweep_id: str,
        grid: SweepGrid,
        config: SGLDConfig,
        spec: Mapping[str, Any] | None = None,
        compute: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Sequence[str]] | None = None,
    ) -> bool:
        """Create the group of a sweep; a no-op if it exists with the same grid, sampler
        config, compute settings and metric columns.

        Args:
            sweep_id: letters, digits, ``-`` and ``_``.
            grid: checkpoints (with steps), components, datasets, seeds.
            config: the sampler config; its ``chains`` and ``draws`` size the traces.
            spec: the sweep spec as given (JSON-able), kept in the group's attributes.
            compute: how the cells are computed (JSON-able, e.g. the precision): opaque
                here, but fixed at creation like the config, so a resume cannot change it.
            metrics: ``{metric: [column, …]}``, float columns per cell beside the traces
                (the baselines).

        Returns:
            True if the group was created, False if it already existed.

        Raises:
            LayoutMismatchError: the sweep exists with another grid, sampler config or
                compute settings.
            LayoutVersionError: the sweep exists with another store layout version.
        """
        path = group_path("sweeps", sweep_id)
        self._check_writable()
        if self.exists(path):
            attrs = self.read_attrs(path)
            if ATTR_RLLC in attrs:  # complete: compare, never overwrite
                self._check_version(sweep_id, attrs, writing=True)
                self._check_same(sweep_id, attrs, grid, config, compute, metrics)
                self._attrs_cache[sweep_id] = attrs
                return False
        layout = sweep_layout(sweep_id, grid, config, spec, compute, metrics)
        self.create(path, layout)
        self._attrs_cache.pop(sweep_id, None)
        return True

    def _check_version(self, sweep_id: str, attrs: Mapping[str, Any], writing: bool) -> None:
        """Refuse to write a sweep of another layout version, or to read a newer one."""
        version = layout_version(attrs)
        if version > LAYOUT_VERSION:
            raise LayoutVersionError(
                f"sweep {sweep_id!r} in store {self.uri} has store layout version {version}, "
                f"newer than this rllc's ({LAYOUT_VERSION}); upgrade rllc to read it"
            )
        if writing and version < LAYOUT_VERSION:
            raise LayoutVersionError(
                f"sweep {sweep_id!r} in store {self.uri} was written with store layout "
                f"version {version}; this rllc writes version {LAYOUT_VERSION}. Its traces "
                "can still be read (rllc query); to add cells, run the spec again under a "
                "new sweep name or in a new store"
            )

    @staticmethod
    def _check_same(
        sweep_id: str,
        attrs: Mapping[str, Any],
        grid: SweepGrid,
        config: SGLDConfig,
        compute: Mapping[str, Any] | None,
        metrics: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        old_grid = grid_from_attrs(attrs)
        if old_grid != grid:
            changes = diff_fields(old_grid.model_dump(), grid.model_dump())
            raise LayoutMismatchError(
                f"sweep {sweep_id!r} already exists with a different grid "
                f"({'; '.join(changes)}); resume it unchanged or use a new sweep id"
            )
        new_config = config.model_dump(mode="json")
        # through the model, so that fields added since (at their defaults) compare equal
        old_config = config_from_attrs(attrs).model_dump(mode="json")
        if old_config != new_config:
            changes = diff_fields(old_config, new_config)
            raise LayoutMismatchError(
                f"sweep {sweep_id!r} already exists with a different sampler config "
                f"({'; '.join(changes)}); resume it unchanged or use a new sweep id"
            )
        old_compute = compute_from_attrs(attrs)
        new_compute = json.loads(json.dumps(dict(compute or {}), default=str))
        if old_compute != new_compute:
            changes = diff_fields(old_compute, new_compute)
            raise LayoutMismatchError(
                f"sweep {sweep_id!r} already exists with different compute settings "
                f"({'; '.join(changes)}); resume it unchanged or use a new sweep id"
            )
        old_metrics = sorted(metrics_from_attrs(attrs))
        new_metrics = sorted(metrics or {})
        if old_metrics != new_metrics:
            raise LayoutMismatchError(
                f"sweep {sweep_id!r} already exists with baselines {old_metrics or 'none'}, "
                f"not {new_metrics or 'none'}; resume it with the same metrics or use a new "
                "sweep id"
            )

    def _sweep_attrs(self, sweep_id: str) -> dict[str, Any]:
        """The attributes of a complete sweep group, or ``UnknownGroupError``."""
        if sweep_id not in self._attrs_cache:
            path = group_path("sweeps", sweep_id)
            attrs = self.read_attrs(path) if self.exists(path) else {}
            if ATTR_RLLC not in attrs:
                raise self._unknown_sweep(sweep_id)
            self._check_version(sweep_id, attrs, writing=False)
            self._attrs_cache[sweep_id] = attrs
        return self._attrs_cache[sweep_id]

    def _unknown_sweep(self, sweep_id: str) -> UnknownGroupError:
        known = self.list_sweeps()
        have = f"it has: {', '.join(known)}" if known else "it has no sweeps"
        return UnknownGroupError(f"no sweep {sweep_id!r} in store {self.uri} ({have})")

    def sweep_grid(self, sweep_id: str) -> SweepGrid:
        """The grid the sweep was created with."""
        return grid_from_attrs(self._sweep_attrs(sweep_id))

    def sweep_config(self, sweep_id: str) -> SGLDConfig:
        """The sampler config the sweep was created with."""
        return config_from_attrs(self._sweep_attrs(sweep_id))

    def sweep_compute(self, sweep_id: str) -> dict[str, Any]:
        """The compute settings the sweep was created with (``{}`` if none were)."""
        return compute_from_attrs(self._sweep_attrs(sweep_id))

    def sweep_spec(self, sweep_id: str) -> dict[str, Any]:
        """The spec the sweep was created with, as given (JSON); ``{}`` if none was."""
        return dict(self._sweep_attrs(sweep_id).get(ATTR_SPEC) or {})

    def sweep_metrics(self, sweep_id: str) -> dict[str, list[str]]:
        """The metrics (baselines) the sweep was created with, and their columns."""
        return metrics_from_attrs(self._sweep_attrs(sweep_id))

    def write_cell(self, sweep_id: str, key: CellKey, result: SamplingResult | None,
                   metrics: Mapping[str, float] | None = None) -> None:
        """Store one cell's traces (None: a cell of metrics only) and metric columns, then
        mark it done (the flag is written last)."""
        self._check_writable()
        attrs = self._sweep_attrs(sweep_id)
        self._check_version(sweep_id, attrs, writing=True)
        grid, config = self.sweep_grid(sweep_id), self.sweep_config(sweep_id)
        region = grid.region(key)
        values = cell_values(result, config, metrics,
                             columns_of_metrics(metrics_from_attrs(attrs)))
        path = group_path("sweeps", sweep_id)
        self.write(path, values, region)
        self.write(path, {"done": np.asarray(True)}, region)

    def write_failure(self, sweep_id: str, key: CellKey, error_text: str) -> None:
        """Record that a cell's run failed, with its error text (the cell stays not done)."""
        self._check_writable()
        self._check_version(sweep_id, self._sweep_attrs(sweep_id), writing=True)
        region = self.sweep_grid(sweep_id).region(key)
        path = group_path("sweeps", sweep_id)
        self.write(path, {"done": np.asarray(False)}, region)
        self.write(path, {"error": np.asarray(str(error_text) or "failed", dtype=object)}, region)

    def done_cells(self, sweep_id: str) -> set[CellKey]:
        """Cells whose traces are completely stored."""
        grid = self.sweep_grid(sweep_id)
        done = self.read_array(group_path("sweeps", sweep_id), "done")
        return {grid.key_at(tuple(i)) for i in np.argwhere(done)}

    def failed_cells(self, sweep_id: str) -> dict[CellKey, str]:
        """Cells whose last run failed (and that are not done), with their error text."""
        grid = self.sweep_grid(sweep_id)
        path = group_path("sweeps", sweep_id)
        done = self.read_array(path, "done")
        error = self.read_array(path, "error").astype(object)
        failed = (error != "") & ~done
        return {grid.key_at(tuple(i)): str(error[tuple(i)]) for i in np.argwhere(failed)}

    def sweep_progress(self, sweep_id: str) -> dict[str, int]:
        """``cells_total``, ``cells_done``, ``cells_failed`` (the CLI's JSON keys)."""
        grid = self.sweep_grid(sweep_id)
        return {
            "cells_total": int(np.prod(grid.shape)),
            "cells_done": len(self.done_cells(sweep_id)),
            "cells_failed": len(self.failed_cells(sweep_id)),
        }

    def resolve_sweep(self, sweep_id: str | None = None) -> str:
        """``sweep_id`` if the store has it; with None, the store's only sweep."""
        if sweep_id is None:
            known = self.list_sweeps()
            if len(known) == 1:
                return known[0]
            if not known:
                raise UnknownGroupError(f"store {self.uri} has no sweeps")
            raise UnknownGroupError(
                f"store {self.uri} has {len(known)} sweeps, name one with --sweep: "
                f"{', '.join(known)}"
            )
        try:
            validate_id(sweep_id)
        except ValueError as err:
            raise UnknownGroupError(str(err)) from None
        self._sweep_attrs(sweep_id)
        return sweep_id

    def open_sweep(self, sweep_id: str | None = None) -> xr.Dataset:
        """The sweep as a labelled ``xarray.Dataset`` (lazy); None = the only sweep."""
        sweep_id = self.resolve_sweep(sweep_id)
        ds = self.read(group_path("sweeps", sweep_id))
        # Backends list arrays in any order; show them in the layout's order.
        order = [v for v in SWEEP_VARIABLES if v in ds.data_vars]
        return ds[order + sorted(set(ds.data_vars) - set(order))]
