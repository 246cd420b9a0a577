"""From a spec to a concrete grid of cells, and what running it will cost.

``resolve`` expands globs and run directories into checkpoint URIs (oldest first within
each entry), reads each checkpoint's metadata (its step and architecture) and checks the
components against it, expanding ``"L:*"`` into heads. ``plan`` adds the work estimate:

    sgld_steps        = cells × chains × draws × steps_per_draw   (per-chain SGLD steps)
    estimated_seconds = (checkpoints · t_load
                         + checkpoints · datasets · seeds · draws · steps_per_draw · t_step)
                        / workers

where t_step (one step of every work unit of a checkpoint, dataset and seed: all chains,
a layer's heads batched together) and t_load (checkpoint, datasets and L_n(w*)) are timed
on this machine with the first checkpoint, dataset and seed, using the actors' thread
count, and workers = min(checkpoints, resources.max_workers or the
local CPUs ÷ resources.num_cpus). It is an estimate for a local run; a cluster with
more (or GPU) workers is faster.
"""

from __future__ import annotations

import glob
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch

from rllc.data.datasets import DATASETS
from rllc.estimators import SelectionError, SGLDConfig
from rllc.models import uri as U
from rllc.models.checkpoint import CheckpointError, list_checkpoints, read_meta, step_of
from rllc.models.components import component_selection, expand_components, parse_component
from rllc.models.transformer import AttentionOnlyTransformer, TransformerConfig
from rllc.store import CellKey, SweepGrid

from .session import CheckpointSession
from .spec import SpecError, SweepSpec

_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class SweepPlan:
    """A resolved spec: the store URI, the grid of cells and the sweep's sampler config."""

    spec: SweepSpec
    store: str
    grid: SweepGrid

    @property
    def sweep_id(self) -> str:
        return self.spec.name

    @property
    def config(self) -> SGLDConfig:
        """The sweep's sampler config (stored with the traces)."""
        return self.spec.sampler

    def cell_config(self, seed: int) -> SGLDConfig:
        """The sampler config of a cell: the sweep's, with the cell's seed."""
        return self.config.model_copy(update={"seed": int(seed)})

    @property
    def cells(self) -> int:
        return math.prod(self.grid.shape)

    def units(self, cells: Iterable[CellKey]) -> list[tuple[CellKey, ...]]:
        """``cells`` in work units, the order kept: with ``compute.batch_heads`` the heads
        ``"L:H"`` of one layer that share checkpoint, dataset and seed form one unit (one
        batched ``sample_heads`` call); every other cell is a unit of its own."""
        groups: dict[tuple, list[CellKey]] = {}
        for key in cells:
            comp = parse_component(key.component)
            batch = self.spec.compute.batch_heads and comp.kind == "head"
            layer = comp.layer if batch else key.component
            groups.setdefault((key.checkpoint, key.dataset, key.seed, batch, layer),
                              []).append(key)
        return [tuple(g) for g in groups.values()]

    @property
    def sgld_steps(self) -> int:
        """Per-chain SGLD steps of the whole sweep."""
        c = self.config
        return self.cells * c.chains * c.draws * c.steps_per_draw


def absolute(uri: str) -> str:
    """Local paths made absolute (Ray workers need not share the driver's cwd)."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def _is_checkpoint(uri: str) -> bool:
    return U.exists(U.join(uri, "config.json"))


def _glob(pattern: str) -> list[str]:
    if U.is_s3(pattern):
        base, _, last = pattern.rstrip("/").rpartition("/")
        if any(c in base for c in _GLOB_CHARS):
            raise SpecError(
                "checkpoints", f"in an s3:// URI only the last part may be a glob: {pattern!r}"
            )
        return [U.join(base, n) for n in U.list_dirs(base) if fnmatchcase(n, last)]
    return glob.glob(pattern)


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
        if name in DATASETS or "://" in name:
            out.append(name)
            continue
        if not os.path.exists(name):
            raise SpecError("datasets", f"no such file: {name}")
        out.append(absolute(name))
    return out


def resolve(spec: SweepSpec) -> SweepPlan:
    """The grid of ``spec``; ``SpecError`` naming the field if its checkpoints, components
    or local dataset files do not exist."""
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
    return SweepPlan(spec=spec, store=absolute(spec.store), grid=grid)


@dataclass(frozen=True)
class Timing:
    """Measured costs: one SGLD step of each work unit of a (checkpoint, dataset, seed)
    (all its chains, a batched layer's heads together), and preparing one checkpoint."""

    unit_step_seconds: tuple[float, ...]
    load_seconds: float

    @property
    def step_seconds(self) -> float:
        """One SGLD step of every cell of a (checkpoint, dataset, seed)."""
        return sum(self.unit_step_seconds)


def time_plan(plan: SweepPlan, steps: int = 4) -> Timing:
    """Time ``steps`` SGLD steps of each work unit of the first checkpoint, dataset and
    seed, and loading that checkpoint, with the actors' thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(plan.spec.resources.num_cpus)))
    try:
        first = next(plan.grid.cells())
        units = [u for u in plan.units(plan.grid.cells())
                 if (u[0].checkpoint, u[0].dataset, u[0].seed)
                 == (first.checkpoint, first.dataset, first.seed)]
        start = time.perf_counter()
        session = CheckpointSession(first.checkpoint, plan.spec.data,
                                    compute=plan.spec.compute)
        config = plan.cell_config(first.seed)
        session.init_loss(first.dataset, config, plan.spec.compute.precision)
        load = time.perf_counter() - start
        probe = config.model_copy(update={"draws": steps + 1, "burnin": 0, "steps_per_draw": 1})
        per_unit = []
        for unit in units:
            stamps: list[float] = []  # when each step ended

            def stamp(step: int, total: int, stamps=stamps) -> None:
                stamps.append(time.perf_counter())

            session.sample_many([k.component for k in unit], first.dataset, probe,
                                progress=stamp)
            # the first step warms up (and compiles, once per shape)
            per_unit.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
    finally:
        torch.set_num_threads(threads)
    return Timing(unit_step_seconds=tuple(per_unit),
                  load_seconds=load * len(plan.grid.datasets))


def local_workers(plan: SweepPlan) -> int:
    """Actors a local run would start at once."""
    res = plan.spec.resources
    fit = max(1, int((os.cpu_count() or 1) // res.num_cpus))
    return min(len(plan.grid.checkpoints), res.max_workers or fit)


def plan(spec: SweepSpec, timing: bool = True) -> dict[str, Any]:
    """What ``rllc sweep plan --json`` prints: the grid, ``cells``, ``sgld_steps`` and
    ``estimated_seconds`` (None without ``timing``)."""
    p = resolve(spec)
    c = p.config
    out: dict[str, Any] = {
        "sweep": p.sweep_id,
        "store": p.store,
        "cells": p.cells,
        "sgld_steps": p.sgld_steps,
        "estimated_seconds": None,
        "checkpoints": list(p.grid.checkpoints),
        "steps": list(p.grid.steps),
        "components": list(p.grid.components),
        "datasets": list(p.grid.datasets),
        "seeds": list(p.grid.seeds),
        "chains": c.chains,
        "draws": c.draws,
        "steps_per_draw": c.steps_per_draw,
    }
    if timing:
        t = time_plan(p)
        workers = local_workers(p)
        g = p.grid
        groups = len(g.checkpoints) * len(g.datasets) * len(g.seeds)
        serial = len(g.checkpoints) * t.load_seconds + groups * c.total_steps * t.step_seconds
        out |= {
            "estimated_seconds": serial / workers,
            "seconds_per_step": t.step_seconds / len(g.components),  # per cell, on average
            "units": len(p.units(g.cells())),
            "workers": workers,
        }
    return out
