"""The time estimate of ``rllc sweep plan``: a few SGLD steps timed on this machine.

    estimated_seconds = (checkpoints · t_load
                         + checkpoints · datasets · seeds · draws · steps_per_draw · t_step)
                        / workers

plus, where the spec computes baselines, checkpoints · datasets · seeds · t_baselines,
with t_baselines the baselines of every component of a (checkpoint, dataset, seed): one
component per layer is timed (layers cost differently: a head of layer L runs layers L…)
and stands for the others of its layer. Where t_step (one step of every work unit of a checkpoint, dataset and seed: all chains,
a layer's heads batched together) and t_load (checkpoint, datasets and L_n(w*)) are timed
with the first checkpoint, dataset and seed, using the actors' thread count, and workers
= min(checkpoints, resources.max_workers or the local CPUs ÷ resources.num_cpus). It is
an estimate for a local run; a cluster with more (or GPU) workers is faster.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from rllc.kernels.threads import choose_threads
from rllc.models.baselines import start_layer

from .metrics import Metric
from .session import CheckpointSession
from .spec import SweepSpec
from .sweep_plan import SweepPlan, resolve


@dataclass(frozen=True)
class Timing:
    """Measured costs: one SGLD step of each work unit of a (checkpoint, dataset, seed)
    (all its chains, a batched layer's heads together), and preparing one checkpoint."""

    unit_step_seconds: tuple[float, ...]
    load_seconds: float
    baseline_seconds: float = 0.0  # the baselines of every component of one cell group

    @property
    def step_seconds(self) -> float:
        """One SGLD step of every cell of a (checkpoint, dataset, seed)."""
        return sum(self.unit_step_seconds)


def time_plan(plan: SweepPlan, steps: int = 4) -> Timing:
    """Time ``steps`` SGLD steps of each work unit of the first checkpoint, dataset and
    seed, and loading that checkpoint, with the actors' thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(choose_threads(cores=plan.spec.resources.num_cpus))  # the actors
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
        probe_fields = {"draws": steps + 1, "burnin": 0, "steps_per_draw": 1}
        per_unit = []
        for unit in units if Metric.LLC in plan.spec.metrics else []:
            # the unit's own sampler settings (component_samplers)
            probe = plan.cell_config(first.seed, unit[0].component).model_copy(
                update=probe_fields)
            stamps: list[float] = []  # when each step ended

            def stamp(step: int, total: int, stamps=stamps) -> None:
                stamps.append(time.perf_counter())

            session.sample_many([k.component for k in unit], first.dataset, probe,
                                progress=stamp)
            # the first step warms up (and compiles, once per shape)
            per_unit.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
        baselines = time_baselines(plan, session, first.dataset, first.seed)
    finally:
        torch.set_num_threads(threads)
    return Timing(unit_step_seconds=tuple(per_unit),
                  load_seconds=load * len(plan.grid.datasets), baseline_seconds=baselines)


def time_baselines(plan: SweepPlan, session: CheckpointSession, dataset: str,
                   seed: int) -> float:
    """Seconds of the spec's baselines for every component of one (checkpoint, dataset,
    seed): one component per first layer timed, times the components of that layer."""
    metrics = [m for m in plan.spec.metrics if m != Metric.LLC]
    if not metrics:
        return 0.0
    by_layer: dict[int, list[str]] = {}
    for c in plan.grid.components:
        by_layer.setdefault(start_layer(c), []).append(c)
    total = 0.0
    for comps in by_layer.values():
        start = time.perf_counter()
        session.baselines(comps[:1], dataset, metrics, plan.spec.baselines, seed=seed)
        total += (time.perf_counter() - start) * len(comps)
    return total


def local_workers(plan: SweepPlan) -> int:
    """Actors a local run would start at once."""
    res = plan.spec.resources
    fit = max(1, int((os.cpu_count() or 1) // res.num_cpus))
    return min(len(plan.grid.checkpoints), res.max_workers or fit)


def plan(spec: SweepSpec, timing: bool = True) -> dict[str, Any]:
    """What ``rllc sweep plan --json`` prints: ``SweepPlan.summary`` (the grid, ``cells``,
    ``sgld_steps``) with ``estimated_seconds`` (None without ``timing``)."""
    p = resolve(spec)
    out = p.summary()
    if timing:
        t = time_plan(p)
        workers = local_workers(p)
        g = p.grid
        groups = len(g.checkpoints) * len(g.datasets) * len(g.seeds)
        steps = p.config.total_steps if Metric.LLC in spec.metrics else 0
        serial = (len(g.checkpoints) * t.load_seconds
                  + groups * (steps * t.step_seconds + t.baseline_seconds))
        out |= {
            "estimated_seconds": serial / workers,
            "seconds_per_step": t.step_seconds / len(g.components),  # per cell, on average
            "baseline_seconds_per_cell": t.baseline_seconds / len(g.components),
            "workers": workers,
        }
    return out
