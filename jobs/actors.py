"""The sweep worker: one checkpoint's cells, sampled and written to the store in place.

``CheckpointWorker`` is a plain class, so it runs (and is tested) without Ray; the driver
turns it into a Ray actor with ``ray.remote(CheckpointWorker).options(num_gpus=…,
max_restarts=…, max_task_retries=…)``. Each worker holds ONE checkpoint at a time on its
device (a ``CheckpointSession``: model, loss datasets, shared L_n(w*)) and opens its own
handle on the store, so traces go from the worker straight to the store and only a small
summary travels back to the driver.

Cells are idempotent: a cell's traces depend only on (checkpoint, component, dataset,
seed) and the sweep's config, and ``write_cell`` sets the ``done`` flag after the
traces. A cell rerun after a crash (Ray retrying a task on a restarted actor) writes the
same numbers again.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from typing import Any

import torch

from rllc.estimators import AllChainsDivergedError, SamplingResult
from rllc.kernels.threads import use_threads
from rllc.store import CellKey, files, open_store

from .metrics import Metric, flatten
from .session import CheckpointSession
from .sweep_plan import SweepPlan


def cell_summary(key: CellKey, result: SamplingResult | None) -> dict[str, Any]:
    """The few numbers of a cell the driver sees (its traces stay in the store); NaN λ̂
    for a cell of baselines only."""
    if result is None:
        return {"cell": tuple(key), "llc_mean": math.nan, "llc_stderr": math.nan,
                "diverged_chains": 0, "seconds": 0.0}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            est = result.llc()
        llc_mean, llc_stderr = est.llc_mean, est.llc_stderr
    except AllChainsDivergedError:  # the traces are still data; the query shows NaN
        llc_mean = llc_stderr = math.nan
    return {
        "cell": tuple(key),
        "llc_mean": llc_mean,
        "llc_stderr": llc_stderr,
        "diverged_chains": int(result.diverged.sum()),
        "seconds": result.seconds,
    }


def dataset_cache(store: str) -> str:
    """The folder of a sweep store where sessions cache datasets sampled from the
    checkpoints (``generated``): ``<store>/cache/datasets``."""
    return files.join(store, "cache", "datasets")


class CheckpointWorker:
    """Samples cells and writes each into the sweep's store, holding one checkpoint at a
    time: the checkpoint of the cell at hand, loaded on first use and kept for the next
    cells (the driver sends a checkpoint's cells to one worker in a row).

    Loading lazily, rather than in ``__init__``, keeps a restarted actor correct whatever
    cells Ray retries on it, and lets one process serve checkpoint after checkpoint
    without paying its start-up (imports) again.
    """

    def __init__(self, plan: SweepPlan, threads: int | None = None) -> None:
        if threads is not None:
            # The driver's choose_threads(cores=num_cpus) (rllc.kernels.threads). Ray sets
            # OMP_NUM_THREADS from num_cpus, but torch may already have read it.
            use_threads(threads=max(1, threads))
        self.plan = plan
        self.session: CheckpointSession | None = None
        self.store = open_store(plan.store)

    def load(self, checkpoint: str) -> CheckpointSession:
        """The session of ``checkpoint``, replacing the one held before."""
        if self.session is None or self.session.checkpoint != checkpoint:
            self.session = None  # free the old model first: one checkpoint per device
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            # the generated dataset is kept in the store, so a resume sees the same tokens
            self.session = CheckpointSession(checkpoint, self.plan.spec.data,
                                             compute=self.plan.spec.compute,
                                             cache=dataset_cache(self.plan.store))
        return self.session

    def where(self) -> dict[str, Any]:
        """Host, process, device and checkpoint of this worker (for logs and tests)."""
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": self.session.device if self.session else None,
            "checkpoint": self.session.checkpoint if self.session else None,
        }

    def run_unit(self, keys: list[CellKey]) -> list[dict[str, Any]]:
        """Sample cells that share checkpoint, dataset, seed and sampler config in one
        batched call (a layer's heads, see ``SweepPlan.units``), store each cell's traces,
        return their summaries."""
        keys = [CellKey(*k) for k in keys]
        first = keys[0]
        if any((k.checkpoint, k.dataset, k.seed) != (first.checkpoint, first.dataset,
                                                      first.seed) for k in keys):
            raise ValueError("a work unit's cells must share checkpoint, dataset and seed")
        # the sampler settings may differ by component (component_samplers): a unit's
        # cells share them (SweepPlan.units)
        config = self.plan.cell_config(first.seed, first.component)
        if any(self.plan.cell_config(k.seed, k.component) != config for k in keys):
            raise ValueError("a work unit's cells must share their sampler config "
                             "(component_samplers)")
        session = self.load(first.checkpoint)
        components = [k.component for k in keys]
        spec = self.plan.spec
        results: dict[str, SamplingResult | None] = dict.fromkeys(components)
        if Metric.LLC in spec.metrics:
            results |= session.sample_many(components, first.dataset, config)
        metrics = {c: {} for c in components}
        if any(m != Metric.LLC for m in spec.metrics):
            found = session.baselines(components, first.dataset, spec.metrics, spec.baselines,
                                      seed=first.seed)
            metrics = {c: flatten(found[c]) for c in components}
        out = []
        for key in keys:
            result = results[key.component]
            self.store.write_cell(self.plan.sweep_id, key, result, metrics[key.component])
            out.append(cell_summary(key, result) | metrics[key.component])
        return out
