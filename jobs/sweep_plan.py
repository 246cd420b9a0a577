"""From a spec to a concrete grid of cells, and what running it will cost.

``resolve`` expands globs and run directories into checkpoint URIs (oldest first within
each entry), reads each checkpoint's metadata (its step and architecture) and checks the
components against it, expanding ``"L:*"`` into heads. ``SweepPlan.summary`` is the grid
and its work, ``sgld_steps = cells × chains × draws × steps_per_draw`` (per-chain SGLD
steps).

This module is pure: it reads checkpoint metadata, never weights, and runs nothing. The
time estimate of ``rllc sweep plan`` (a few timed SGLD steps) is ``rllc.jobs.plan_timing``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from rllc.data.datasets import DATASET_NAMES
from rllc.estimators import SelectionError, SGLDConfig
from rllc.models.checkpoint import CheckpointError, list_checkpoints, read_meta, step_of
from rllc.models.components import component_selection, expand_components, parse_component
from rllc.models.fastpath import takes_fast_path
from rllc.models.transformer import AttentionOnlyTransformer, TransformerConfig
from rllc.store import CellKey, SweepGrid, files

from .metrics import Metric
from .spec import COMPONENT_FIELDS, SpecError, SweepSpec

_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class SweepPlan:
    """A resolved spec: the store URI, the grid of cells, the sweep's sampler config and
    each checkpoint's architecture."""

    spec: SweepSpec
    store: str
    grid: SweepGrid
    models: dict[str, TransformerConfig] = field(default_factory=dict)

    @property
    def sweep_id(self) -> str:
        return self.spec.name

    @property
    def config(self) -> SGLDConfig:
        """The sweep's sampler config (stored with the traces)."""
        return self.spec.sampler

    def cell_config(self, seed: int, component: str | None = None) -> SGLDConfig:
        """The sampler config of a cell: the sweep's, with the settings of the first
        ``component_samplers`` pattern that ``component`` matches (None: none) and the
        cell's seed."""
        return self.spec.sampler_for(component).model_copy(update={"seed": int(seed)})

    def _sampler_key(self, component: str) -> tuple[float | None, ...]:
        """What may differ between the cells of one checkpoint, dataset and seed."""
        config = self.spec.sampler_for(component)
        return tuple(getattr(config, name) for name in COMPONENT_FIELDS)

    @property
    def cells(self) -> int:
        return math.prod(self.grid.shape)

    def units(self, cells: Iterable[CellKey]) -> list[tuple[CellKey, ...]]:
        """``cells`` in work units, the order kept: with ``compute.batch_heads`` the heads
        that take the head fast path (``rllc.models.fastpath.takes_fast_path``, on the
        checkpoint's architecture) and share a layer, checkpoint, dataset, seed and sampler
        settings (``component_samplers``) form one unit (one batched ``sample_heads``
        call); every other cell is a unit of its own."""
        groups: dict[tuple, list[CellKey]] = {}
        for key in cells:
            arch = self.models.get(key.checkpoint)
            batch = (self.spec.compute.batch_heads and arch is not None
                     and takes_fast_path(arch, key.component))
            layer = parse_component(key.component).layer if batch else key.component
            groups.setdefault((key.checkpoint, key.dataset, key.seed, batch, layer,
                               self._sampler_key(key.component)), []).append(key)
        return [tuple(g) for g in groups.values()]

    @property
    def sgld_steps(self) -> int:
        """Per-chain SGLD steps of the whole sweep (0 when its metrics leave out llc)."""
        c = self.config
        if Metric.LLC not in self.spec.metrics:
            return 0
        return self.cells * c.chains * c.draws * c.steps_per_draw

    def summary(self) -> dict[str, Any]:
        """The grid and its work, as ``rllc sweep plan --json`` prints them (without the
        time estimate, ``rllc.jobs.plan_timing``)."""
        c, g = self.config, self.grid
        return {
            "sweep": self.sweep_id,
            "store": self.store,
            "cells": self.cells,
            "sgld_steps": self.sgld_steps,
            "estimated_seconds": None,
            "checkpoints": list(g.checkpoints),
            "steps": list(g.steps),
            "components": list(g.components),
            "datasets": list(g.datasets),
            "seeds": list(g.seeds),
            "chains": c.chains,
            "draws": c.draws,
            "steps_per_draw": c.steps_per_draw,
            "units": len(self.units(g.cells())),
            "metrics": [m.value for m in self.spec.metrics],
        }


def absolute(uri: str) -> str:
    """Local paths (and ``file://`` URIs) made absolute paths (Ray workers need not share
    the driver's cwd); remote URIs stay as they are."""
    if files.is_remote(uri):
        return uri
    return os.path.abspath(os.path.expanduser(files.local_path(uri)))


def _is_checkpoint(uri: str) -> bool:
    return files.exists(files.join(uri, "config.json"))


def _glob(pattern: str) -> list[str]:
    try:
        return files.glob(pattern)
    except ValueError as err:  # s3://: only the last part may be a glob
        raise SpecError("checkpoints", str(err)) from None


def _step(uri: str) -> int:
    """A checkpoint's step, from its name when it is ``ckpt-NNNNNNN`` (no read needed)."""
    try:
        return step_of(uri)
    except CheckpointError:
        return int(read_meta(uri)["step"])


def expand_checkpoints(entries: list[str]) -> list[str]:
    """Checkpoint URIs of spec entries: a checkpoint directory stays itself, a run directory
    becomes its checkpoints and a glob the checkpoints it matches (each oldest first)."""
    out: list[str] = []
    for entry in entries:
        entry = absolute(entry)
        if any(c in entry for c in _GLOB_CHARS):
            found = [u for u in _glob(entry) if _is_checkpoint(u)]
            if not found:
                raise SpecError("checkpoints", f"no checkpoint matches {entry!r}")
            found.sort(key=lambda u: (_step(u), u))
        elif _is_checkpoint(entry):
            found = [entry]
        else:
            found = list_checkpoints(entry)
            if not found:
                raise SpecError(
                    "checkpoints",
                    f"no checkpoint at {entry!r} (no config.json, no ckpt-* inside)",
                )
        out += [u for u in found if u not in out]
    return out


def _components(spec: SweepSpec, metas: dict[str, dict[str, Any]]) -> list[str]:
    """The spec's components checked against every architecture among the checkpoints
    (built on the meta device: no weights are loaded) and, if asked, split into heads."""
    expanded: dict[str, list[str]] = {}
    for uri, meta in metas.items():
        key = repr(sorted(meta["model"].items()))
        if key in expanded:
            continue
        with torch.device("meta"):
            model = AttentionOnlyTransformer(TransformerConfig.model_validate(meta["model"]))
        try:
            if spec.expand_layers:
                labels = expand_components(model, spec.components)
            else:
                labels = [t for t in spec.components if component_selection(model, t)]
        except SelectionError as err:
            raise SpecError("components", f"{err} (checkpoint {uri})") from None
        expanded[key] = list(dict.fromkeys(labels))  # "0:*" and "0:1" name 0:1 once
        if (n_ctx := spec.data.n_ctx) and n_ctx > model.cfg.n_ctx:
            raise SpecError(
                "data.n_ctx", f"{n_ctx} exceeds the context length {model.cfg.n_ctx} of {uri}"
            )
    lists = list(expanded.values())
    if any(x != lists[0] for x in lists):
        raise SpecError(
            "components",
            "the checkpoints have different architectures, so the components expand to "
            "different heads; sweep them separately or name heads explicitly",
        )
    return lists[0]


def _datasets(names: list[str]) -> list[str]:
    """Dataset labels: built-in names, URIs, and local paths made absolute, which must
    exist before anything runs (S3 objects are left for the workers to read)."""
    out = []
    for name in names:
        if name in DATASET_NAMES or "://" in name:
            out.append(name)
            continue
        if not os.path.exists(name):
            raise SpecError("datasets", f"no such file: {name}")
        out.append(absolute(name))
    return out


def _check_patterns(spec: SweepSpec, components: tuple[str, ...]) -> None:
    """Every ``component_samplers`` pattern must be the first match of some cell's
    component: one that never is (a typo, or shadowed by an earlier pattern) is an error."""
    used = {spec.component_pattern(c) for c in components}
    for pattern in spec.component_samplers:
        if pattern not in used:
            raise SpecError(
                f"component_samplers.{pattern}",
                f"pattern {pattern!r} is the first match of none of the sweep's components "
                f"({', '.join(components)}); patterns match component labels with fnmatch, "
                "the first matching pattern wins",
            )


def resolve(spec: SweepSpec) -> SweepPlan:
    """The grid of ``spec``; ``SpecError`` naming the field if its checkpoints, components
    or local dataset files do not exist, or a ``component_samplers`` pattern matches none
    of its components."""
    datasets = _datasets(spec.datasets)
    checkpoints = expand_checkpoints(spec.checkpoints)
    try:
        metas = {uri: read_meta(uri) for uri in checkpoints}
    except (CheckpointError, FileNotFoundError) as err:
        raise SpecError("checkpoints", str(err)) from None
    grid = SweepGrid(
        checkpoints=tuple(checkpoints),
        steps=tuple(int(m["step"]) for m in metas.values()),
        components=tuple(_components(spec, metas)),
        datasets=tuple(datasets),
        seeds=tuple(spec.seeds),
    )
    _check_patterns(spec, grid.components)
    models = {uri: TransformerConfig.model_validate(m["model"]) for uri, m in metas.items()}
    return SweepPlan(spec=spec, store=absolute(spec.store), grid=grid, models=models)
