"""The layout of one sweep: a grid of cells (checkpoint × component × dataset × seed), each
holding the traces of one ``SamplingResult`` (``chain × draw``).

Arrays of the group ``sweeps/<sweep_id>`` (dims in order; "cell" = checkpoint, component,
dataset, seed):

- coordinates: ``checkpoint`` (URI), ``step`` (training step, along checkpoint),
  ``component`` ("L:H", ...), ``dataset``, ``seed``, ``chain``, ``draw``;
- ``loss``, ``batch_init_loss``, ``distance``, ``grad_norm``, ``mala_acceptance``
  ``[cell…, chain, draw]`` (NaN until written);
- ``diverged[cell…, chain]``;
- ``init_loss``, ``nbeta``, ``seconds``, ``num_weights``, ``n_samples`` ``[cell…]``;
- ``done[cell…]`` (written last, so a set flag means the cell's traces are complete) and
  ``error[cell…]`` (the failure text of a cell whose run failed; "" otherwise).

Attributes: ``rllc`` (layout version, kind, sweep id, grid), ``sgld_config``, ``compute``
(how cells are computed, e.g. ``{"precision": "float32", …}``: opaque to the store, and,
like the grid and sampler config, fixed when the sweep is created, so a resume runs as it
started), ``spec`` and ``versions`` (rllc, torch, zarr, numpy, xarray). ``rllc`` is written
after all arrays, so its presence marks a completely created group.

Layout versions (``LAYOUT_VERSION``; it goes up with every change of the layout):

1. the layout above without ``compute`` and ``threads``;
2. adds the ``compute`` attribute and ``threads[cell…]`` (the CPU threads each cell's
   sampler ran with, -1 where unknown);
3. adds ``burnin[cell…]``: the draws each cell's estimate leaves out, as the sampler
   config's ``burnin`` resolved on the cell's trace when written (``"auto"``:
   ``rllc.estimators.burnin``); queries use it unless told another burn-in.

4. adds the metric columns: one float64 array ``[cell…]`` (NaN until written) per column
   of the ``rllc.metrics`` attribute (``{metric: [column, …]}``), the baselines a spec's
   ``metrics:`` asks for (``rllc.jobs.metrics``; opaque names here). They are written with the cell's traces,
   before its ``done`` flag. A cell may hold metrics without traces (a spec without
   ``llc``): its trace arrays then stay NaN.

A sweep written with an older version is read as it is (queries work; what it lacks is
absent) and refused for writing with a message that says what to do; a newer one is
refused for reading too.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rllc.estimators.config import SGLDConfig

from .layout import ArraySpec, GroupLayout

if TYPE_CHECKING:
    from rllc.estimators import SamplingResult

LAYOUT_VERSION = 4
CELL_DIMS = ("checkpoint", "component", "dataset", "seed")
TRACES = {
    "loss": "L_B(w_t): minibatch loss at each draw, before the update using that batch",
    "batch_init_loss": "L_B(w*): loss of w* on the same minibatch (paired estimator)",
    "distance": "‖w_t − w*‖ over the sampled weights",
    "grad_norm": "‖∇L_B(w_t)‖ over the sampled weights",
    "mala_acceptance": "MALA acceptance estimate of the step before the draw",
}
CELL_FLOATS = {
    "init_loss": "L_n(w*): full-data loss at the checkpoint's weights",
    "nbeta": "nβ used by the sampler",
    "seconds": "wall-clock seconds of the sampling run",
}
CELL_INTS = {
    "num_weights": "number of sampled weights (size of the component)",
    "n_samples": "n, samples in the loss dataset",
    "threads": "CPU threads the cell's sampler ran with (-1: not recorded)",
    "burnin": "draws left out of the cell's estimate, chosen from its trace when written",
}
#: Data variables of a sweep, in the order they are shown.
SWEEP_VARIABLES = (*TRACES, "diverged", *CELL_FLOATS, *CELL_INTS, "done", "error")
#: Attribute names; ``ATTR_RLLC`` is written last and marks a complete group.
ATTR_RLLC, ATTR_CONFIG, ATTR_SPEC, ATTR_VERSIONS = "rllc", "sgld_config", "spec", "versions"
ATTR_COMPUTE = "compute"


class CellKey(NamedTuple):
    """One cell of a sweep: one sampling run."""

    checkpoint: str
    component: str
    dataset: str
    seed: int


class SweepGrid(BaseModel):
    """The labels along a sweep's cell dimensions; chains and draws come from the config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoints: tuple[str, ...] = Field(description="Checkpoint URIs, oldest first.")
    steps: tuple[int, ...] = Field(description="Training step of each checkpoint.")
    components: tuple[str, ...] = Field(description='Component labels, e.g. "1:7".')
    datasets: tuple[str, ...] = Field(description="Dataset names or URIs.")
    seeds: tuple[int, ...] = Field(description="Sampler seeds.")

    @model_validator(mode="after")
    def _consistent(self) -> SweepGrid:
        if len(self.steps) != len(self.checkpoints):
            raise ValueError(
                f"steps has {len(self.steps)} entries but checkpoints has "
                f"{len(self.checkpoints)}: give one training step per checkpoint"
            )
        for name in ("checkpoints", "components", "datasets", "seeds"):
            labels = getattr(self, name)
            if not labels:
                raise ValueError(f"{name} is empty: a sweep needs at least one")
            dupes = sorted({str(x) for x in labels if labels.count(x) > 1})
            if dupes:
                raise ValueError(f"{name} has duplicates: {', '.join(dupes)}")
        return self

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Cells along (checkpoint, component, dataset, seed)."""
        return (len(self.checkpoints), len(self.components), len(self.datasets), len(self.seeds))

    def cells(self) -> Iterator[CellKey]:
        """Every cell, checkpoint-major."""
        for c in self.checkpoints:
            for h in self.components:
                for d in self.datasets:
                    for s in self.seeds:
                        yield CellKey(c, h, d, s)

    def region(self, key: CellKey) -> dict[str, int]:
        """Indices of ``key`` along the cell dims, or ``KeyError`` naming the unknown label."""
        key = CellKey(*key)
        labels = (self.checkpoints, self.components, self.datasets, self.seeds)
        region = {}
        for dim, value, axis in zip(CELL_DIMS, key, labels, strict=True):
            try:
                region[dim] = axis.index(value)
            except ValueError:
                raise KeyError(
                    f"{dim} {value!r} is not in this sweep (it has: "
                    f"{', '.join(map(str, axis[:10]))}{' …' if len(axis) > 10 else ''})"
                ) from None
        return region

    def key_at(self, index: tuple[int, int, int, int]) -> CellKey:
        """The cell at integer position ``index`` along the cell dims."""
        k, h, d, s = (int(i) for i in index)
        return CellKey(self.checkpoints[k], self.components[h], self.datasets[d], self.seeds[s])


def software_versions() -> dict[str, str]:
    """Installed versions of the packages that produce and read the traces."""
    out = {}
    for pkg in ("rllc", "torch", "zarr", "numpy", "xarray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _jsonable(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON round-trip of ``obj`` (Zarr attributes are JSON); paths etc. become strings."""
    return json.loads(json.dumps(dict(obj or {}), default=str))


def sweep_layout(
    sweep_id: str,
    grid: SweepGrid,
    config: SGLDConfig,
    spec: Mapping[str, Any] | None = None,
    compute: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Sequence[str]] | None = None,
) -> GroupLayout:
    """The group to create for a sweep (see the module docstring)."""
    cell = CELL_DIMS
    sizes = dict(zip(cell, grid.shape, strict=True)) | {
        "chain": config.chains,
        "draw": config.draws,
    }
    # CF's "coordinates" attribute: xarray decodes ``step`` as a coordinate on open.
    on_cells = {"coordinates": "step"}
    arrays: dict[str, ArraySpec] = {
        "checkpoint": ArraySpec(
            ("checkpoint",), "str", "", np.array(grid.checkpoints, dtype=object)
        ),
        "step": ArraySpec(("checkpoint",), "int64", -1, np.array(grid.steps, dtype=np.int64)),
        "component": ArraySpec(("component",), "str", "", np.array(grid.components, dtype=object)),
        "dataset": ArraySpec(("dataset",), "str", "", np.array(grid.datasets, dtype=object)),
        "seed": ArraySpec(("seed",), "int64", -1, np.array(grid.seeds, dtype=np.int64)),
        "chain": ArraySpec(("chain",), "int64", -1, np.arange(config.chains, dtype=np.int64)),
        "draw": ArraySpec(("draw",), "int64", -1, np.arange(config.draws, dtype=np.int64)),
    }
    for name, doc in TRACES.items():
        arrays[name] = ArraySpec(
            (*cell, "chain", "draw"), "float64", np.nan, attrs=on_cells | {"long_name": doc}
        )
    arrays["diverged"] = ArraySpec(
        (*cell, "chain"),
        "bool",
        False,
        attrs=on_cells
        | {"long_name": "chain went non-finite or exploded (excluded from estimates)"},
    )
    for name, doc in CELL_FLOATS.items():
        arrays[name] = ArraySpec(cell, "float64", np.nan, attrs=on_cells | {"long_name": doc})
    for name, doc in CELL_INTS.items():
        arrays[name] = ArraySpec(cell, "int64", -1, attrs=on_cells | {"long_name": doc})
    metrics = {m: list(cols) for m, cols in (metrics or {}).items()}
    for name in columns_of_metrics(metrics):
        if name in arrays or name in ("done", "error"):
            raise ValueError(f"metric column {name!r} would shadow a sweep array")
        arrays[name] = ArraySpec(cell, "float64", np.nan,
                                 attrs=on_cells | {"long_name": f"metric {name}"})
    arrays["done"] = ArraySpec(
        cell,
        "bool",
        False,
        attrs=on_cells | {"long_name": "cell's traces are complete (written after them)"},
    )
    arrays["error"] = ArraySpec(
        cell,
        "str",
        "",
        attrs=on_cells | {"long_name": "failure text of a cell whose run failed; empty otherwise"},
    )

    attrs = {
        ATTR_CONFIG: config.model_dump(mode="json"),
        ATTR_COMPUTE: _jsonable(compute),
        ATTR_SPEC: _jsonable(spec),
        ATTR_VERSIONS: software_versions(),
        ATTR_RLLC: {
            "kind": "sweep",
            "layout_version": LAYOUT_VERSION,
            "sweep_id": sweep_id,
            "grid": grid.model_dump(mode="json"),
            "metrics": metrics,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }
    return GroupLayout(sizes=sizes, arrays=arrays, attrs=attrs, unit_dims=cell)


def layout_version(attrs: Mapping[str, Any]) -> int:
    """The layout version a sweep group was written with."""
    return int(attrs[ATTR_RLLC].get("layout_version", 1))


def compute_from_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The compute settings recorded with a sweep (``{}`` before layout version 2)."""
    return dict(attrs.get(ATTR_COMPUTE) or {})


def metrics_from_attrs(attrs: Mapping[str, Any]) -> dict[str, list[str]]:
    """The metrics of a sweep and their columns (none before layout version 4)."""
    return {m: list(c) for m, c in (attrs[ATTR_RLLC].get("metrics") or {}).items()}


def columns_of_metrics(metrics: Mapping[str, Sequence[str]]) -> list[str]:
    """Every column of ``metrics``, in order, once."""
    return list(dict.fromkeys(c for cols in metrics.values() for c in cols))


def grid_from_attrs(attrs: Mapping[str, Any]) -> SweepGrid:
    """The ``SweepGrid`` recorded in a sweep group's attributes."""
    return SweepGrid.model_validate(attrs[ATTR_RLLC]["grid"])


def config_from_attrs(attrs: Mapping[str, Any]) -> SGLDConfig:
    """The ``SGLDConfig`` recorded in a sweep group's attributes."""
    return SGLDConfig.model_validate(attrs[ATTR_CONFIG])


def cell_values(result: SamplingResult | None, config: SGLDConfig,
                metrics: Mapping[str, float] | None = None,
                metric_columns: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The arrays of one cell from a sampling result (None: a cell of metrics only) and its
    metric columns, checked against the sweep's shape and columns.

    ``done`` is not among them: it is written separately, last.
    """
    metrics = dict(metrics or {})
    unknown = sorted(set(metrics) - set(metric_columns))
    if unknown:
        raise ValueError(f"metric columns {unknown} are not in this sweep (it has: "
                         f"{', '.join(metric_columns) or 'none'})")
    values: dict[str, np.ndarray] = {k: np.asarray(float(v)) for k, v in metrics.items()}
    values["error"] = np.asarray("", dtype=object)  # a success clears an earlier failure
    if result is None:
        return values
    want = (config.chains, config.draws)
    for name in TRACES:
        arr = np.asarray(getattr(result, name), dtype=np.float64)
        if arr.shape != want:
            raise ValueError(
                f"result.{name} has shape {arr.shape}, but the sweep stores "
                f"[chain, draw] = {want} (chains, draws of its sampler config)"
            )
        values[name] = arr
    diverged = np.asarray(result.diverged, dtype=bool)
    if diverged.shape != want[:1]:
        raise ValueError(f"result.diverged has shape {diverged.shape}, expected {want[:1]}")
    values["diverged"] = diverged
    for name in CELL_FLOATS:
        values[name] = np.asarray(float(getattr(result, name)))
    for name in CELL_INTS:
        if name == "threads":
            value = result.extra.get(name, -1)
        elif name == "burnin":
            value = result.burnin()
        else:
            value = getattr(result, name)
        values[name] = np.asarray(int(value), dtype=np.int64)
    return values


def diff_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"field: old → new"`` for each field whose value differs (for mismatch errors)."""
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            out.append(f"{k}: {_short(old.get(k))} → {_short(new.get(k))}")
    return out


def _short(v: Any, limit: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"
