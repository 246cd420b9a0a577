"""The sweep driver: cells of a grid to Ray actors, traces into the store, resumable.

    report = run_sweep(load_spec("sweep.yaml"))            # local Ray, or an existing one
    report.as_dict()  # {store, sweep, cells_total, cells_done, cells_failed, seconds, …}

The driver creates the sweep in the store once, before any worker starts, then skips the
cells already done (so ``resume`` finishes an interrupted sweep without redoing work).
Cells travel in work units (``SweepPlan.units``): with ``compute.batch_heads`` the heads
of one layer that share checkpoint, dataset and seed are sampled as one batch on the head
fast path; other cells are units of one. Each checkpoint's units go to the one actor that
holds that checkpoint (``rllc.jobs.actors.CheckpointWorker``); when they are done the actor
moves on to the next checkpoint (one process start-up per worker, not per checkpoint). At
most ``resources.max_workers`` actors live at once and each has at most
``resources.cells_in_flight`` units submitted, so the driver holds a bounded set of refs
and waits on them with ``ray.wait``.

Failures:
- process or node death: Ray restarts the actor (``max_restarts``) and resubmits its
  tasks (``max_task_retries``); the restarted actor reloads the checkpoint of the cell it
  gets. If it stays dead the driver starts a new actor in its place and resubmits the
  units, counting one attempt per unit;
- a unit that raises is rerun up to ``resources.max_retries`` times, then its error text
  is recorded with ``write_failure`` for each of its cells and the sweep goes on.
No cell is lost (it stays queued until done or recorded as failed) and none is counted
twice (results are keyed by cell; a rerun rewrites the same numbers, see ``actors``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rllc.store import CellKey, UnknownGroupError, open_store
from rllc.store.base import TraceStore

from .actors import CheckpointWorker
from .metrics import Metric, metric_columns
from .spec import Resources, SpecError, SweepSpec
from .sweep_plan import SweepPlan, resolve

Unit = tuple[CellKey, ...]  # cells sampled in one call (SweepPlan.units)
_ERROR_CHARS = 4000  # enough for a traceback's last frames; the store keeps one per cell


@dataclass
class SweepReport:
    """What ``rllc sweep run --json`` prints (``as_dict``), plus the cells of this run."""

    store: str
    sweep: str
    cells_total: int
    cells_done: int
    cells_failed: int
    seconds: float
    cells_skipped: int = 0
    summaries: list[dict[str, Any]] = field(default_factory=list)
    #: ``should_stop`` ended the run before every cell was tried (``run_sweep``)
    stopped: bool = False

    @property
    def cells_run(self) -> int:
        """Cells completed by this invocation."""
        return len(self.summaries)

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "sweep": self.sweep,
            "cells_total": self.cells_total,
            "cells_done": self.cells_done,
            "cells_failed": self.cells_failed,
            "seconds": self.seconds,
            "cells_run": self.cells_run,
            "cells_skipped": self.cells_skipped,
        }


@contextmanager
def ray_runtime(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Use the Ray runtime already initialised in this process, else connect to
    ``address`` (a cluster) or start a local one; shut down only what was started here."""
    import ray

    if ray.is_initialized():
        yield
        return
    # "local" forces a fresh local instance instead of joining one found on the machine.
    ray.init(
        address=address or "local",
        num_cpus=None if address else num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    try:
        yield
    finally:
        ray.shutdown()


def gpus_per_worker(res: Resources, cluster: dict[str, float]) -> float:
    """``res.num_gpus``, or for None: 1 when the cluster has GPUs, else 0."""
    if res.num_gpus is not None:
        return res.num_gpus
    return 1.0 if cluster.get("GPU", 0) else 0.0


def actor_options(res: Resources, cluster: dict[str, float]) -> tuple[dict[str, Any], int]:
    """Ray options of a worker actor, and how many such actors the cluster fits.

    ``num_gpus=None`` asks for one GPU per actor when the cluster has any (the actor then
    samples on CUDA), else none. The actor's process gets this process's OpenMP wait
    policy (``rllc.kernels.threads.wait_policy_env``: passive unless the user set one),
    which its OpenMP runtime must see before torch loads.
    """
    from rllc.kernels.threads import wait_policy_env

    gpus = gpus_per_worker(res, cluster)
    need = {"CPU": res.num_cpus, "GPU": gpus, **res.custom}
    fit = min(math.floor(cluster.get(r, 0.0) / x + 1e-9) for r, x in need.items() if x > 0)
    if fit < 1:
        short = {r: x for r, x in need.items() if x > cluster.get(r, 0.0)}
        raise SpecError(
            "resources",
            f"the Ray cluster cannot fit one worker: it needs {short}, the cluster has "
            f"{ {r: cluster.get(r, 0.0) for r in short} }",
        )
    options = {
        "num_cpus": res.num_cpus,
        "num_gpus": gpus,
        "resources": dict(res.custom),
        "max_restarts": res.max_restarts,
        # Resubmit a restarted actor's tasks: cells are idempotent.
        "max_task_retries": res.max_restarts,
        # merged with the job's runtime_env by Ray (these keys win)
        "runtime_env": {"env_vars": wait_policy_env()},
    }
    return options, fit


def prepare_store(plan: SweepPlan, resume: bool) -> TraceStore:
    """Open the store and create the sweep (``run``) or check that it exists (``resume``);
    ``LayoutMismatchError`` if it exists with another grid, sampler config or compute
    settings (the precision among them), or was written with another store layout."""
    store = open_store(plan.store)
    try:
        store.sweep_grid(plan.sweep_id)
        exists = True
    except UnknownGroupError:
        exists = False
    if exists and not resume:
        raise SpecError(
            "name",
            f"sweep {plan.sweep_id!r} already exists in store {plan.store}; finish it with "
            "`rllc sweep resume` or choose another name",
        )
    if resume and not exists:
        raise SpecError(
            "name",
            f"no sweep {plan.sweep_id!r} in store {plan.store} to resume; start it with "
            "`rllc sweep run`",
        )
    # the grid, sampler config and compute settings are fixed at creation: a resume with
    # other ones is refused by the store (LayoutMismatchError)
    store.create_sweep(plan.sweep_id, plan.grid, plan.config, plan.spec.model_dump(mode="json"),
                       compute=recorded_compute(plan.spec),
                       metrics=metric_columns(plan.spec.metrics))
    return store


def recorded_compute(spec: SweepSpec) -> dict[str, Any]:
    """The compute settings fixed with the sweep: ``compute``, the baselines' options
    where the spec computes baselines (they change the numbers as the precision does),
    and the per-component sampler settings where it has any (``component_samplers``: a
    resume must sample every cell as it started; the sweep's own sampler config is
    compared by the store)."""
    out = spec.compute.model_dump(mode="json")
    if any(m != Metric.LLC for m in spec.metrics):
        out["baselines"] = spec.baselines.model_dump(mode="json")
    if spec.component_samplers:  # pattern order matters (the first match wins): a list
        out["component_samplers"] = [[pattern, entry.overrides()]
                                     for pattern, entry in spec.component_samplers.items()]
    return out


def error_text(err: BaseException) -> str:
    """A cell's failure as stored: the original exception of a task, else Ray's message."""
    cause = getattr(err, "cause", None)
    text = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(err)
    return text[:_ERROR_CHARS]


class _Driver:
    """The submit / wait / collect loop of one sweep run.

    Worker slots (at most ``max_workers``) each hold one actor and are assigned one
    checkpoint at a time; all queued units of that checkpoint go to that actor, then the
    slot takes the next checkpoint with queued units. A slot with nothing left to take
    kills its actor, freeing its resources.
    """

    def __init__(self, plan: SweepPlan, store: TraceStore, todo: list[CellKey], bar,
                 should_stop: Callable[[], bool] | None = None) -> None:
        import ray

        from rllc.kernels.threads import choose_threads

        self.ray = ray
        self.plan, self.store, self.bar = plan, store, bar
        res = plan.spec.resources
        self.options, fit = actor_options(res, ray.cluster_resources())
        self.threads = choose_threads(cores=res.num_cpus)  # as plan_timing times it
        self.queues: dict[str, deque[Unit]] = {}  # checkpoint → its units to run
        for unit in plan.units(todo):
            self.queues.setdefault(unit[0].checkpoint, deque()).append(unit)
        self.slots = min(res.max_workers or fit, fit, len(self.queues))
        self.actors: dict[int, Any] = {}  # slot → actor
        self.assigned: dict[int, str] = {}  # slot → checkpoint
        self.in_flight: dict[Any, tuple[Unit, int, Any]] = {}  # ref → (unit, slot, actor)
        self.attempts: Counter[Unit] = Counter()
        self.summaries: dict[CellKey, dict[str, Any]] = {}
        self.failed = 0
        self.should_stop, self.stopped = should_stop, False
        # The plan is small (labels and settings), so it travels inline with each actor's
        # creation: an actor restarted on another node must not depend on an object that
        # lived on a node that died (ray-project/ray#53727).
        self.worker_cls = ray.remote(CheckpointWorker)

    def run(self) -> list[dict[str, Any]]:
        """Run every queued unit; with ``should_stop``, check it between waits and, once
        it says so, submit nothing more and kill the workers (the ``finally``): cells
        already stored stay done, units in flight are abandoned (their ``done`` flags are
        not set, so a resume runs them)."""
        timeout = 5.0 if self.should_stop is None else 0.5
        try:
            while self.queues or self.in_flight:
                if self.should_stop is not None and self.should_stop():
                    self.stopped = True
                    break
                self._fill()
                ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=timeout)
                for ref in ready:
                    self._collect(ref)
        finally:
            for actor in self.actors.values():
                self.ray.kill(actor, no_restart=True)
        return list(self.summaries.values())

    def _busy(self, slot: int) -> int:
        return sum(s == slot for _, s, _ in self.in_flight.values())

    def _fill(self) -> None:
        """Give idle slots the next checkpoints, start their actors, and top each actor up
        to ``cells_in_flight`` submitted units; kill the actors of slots left idle."""
        limit = self.plan.spec.resources.cells_in_flight
        for slot in range(self.slots):
            current = self.assigned.get(slot)
            if current is None or (not self.queues.get(current) and not self._busy(slot)):
                taken = set(self.assigned.values())
                nxt = next((c for c in self.queues if c not in taken), None)
                if nxt is None:
                    self.assigned.pop(slot, None)
                    if slot in self.actors and not self._busy(slot):
                        self.ray.kill(self.actors.pop(slot), no_restart=True)
                    continue
                self.assigned[slot] = current = nxt
            if slot not in self.actors:
                self.actors[slot] = self.worker_cls.options(**self.options).remote(
                    self.plan, self.threads
                )
            actor, queue = self.actors[slot], self.queues.get(current)
            while queue and self._busy(slot) < limit:
                unit = queue.popleft()
                self.in_flight[actor.run_unit.remote(list(unit))] = (unit, slot, actor)
        self.queues = {c: q for c, q in self.queues.items() if q}

    def _collect(self, ref: Any) -> None:
        unit, slot, actor = self.in_flight.pop(ref)
        try:
            summaries = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as err:
            # Dead beyond its restarts (or unreachable): the next _fill starts a fresh
            # actor in the slot; the slot's other cells come back here too. Kill the old
            # one in case it was only unreachable, so it cannot hold resources.
            if self.actors.get(slot) is actor:
                self.ray.kill(self.actors.pop(slot), no_restart=True)
            self._retry_or_fail(unit, err)
        except self.ray.exceptions.RayError as err:
            self._retry_or_fail(unit, err)
        else:
            for key, summary in zip(unit, summaries, strict=True):
                self.summaries[key] = summary
            self.bar.update(len(unit))

    def _retry_or_fail(self, unit: Unit, err: BaseException) -> None:
        self.attempts[unit] += 1
        if self.attempts[unit] <= self.plan.spec.resources.max_retries:
            self.queues.setdefault(unit[0].checkpoint, deque()).appendleft(unit)
            return
        for key in unit:
            self.store.write_failure(self.plan.sweep_id, key, error_text(err))
        self.failed += len(unit)
        self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(len(unit))


def run_sweep(
    spec: SweepSpec | SweepPlan,
    *,
    resume: bool = False,
    progress: bool = True,
    address: str | None = None,
    num_cpus: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SweepReport:
    """Run (``resume=False``: create) or finish (``resume=True``) a sweep on Ray.

    Uses the Ray runtime of this process if there is one, else connects to ``address`` or
    starts a local runtime with ``num_cpus`` CPUs (and shuts it down afterwards). Progress
    (a tqdm bar with ETA) goes to stderr.

    ``should_stop`` is a cooperative cancel hook (the HTTP service's ``DELETE``): polled
    between units, and when it returns True the workers are killed and the report comes
    back with ``stopped`` set; finished cells stay, and ``resume=True`` finishes the rest.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    plan = spec if isinstance(spec, SweepPlan) else resolve(spec)
    store = prepare_store(plan, resume)
    done = store.done_cells(plan.sweep_id)
    todo = [key for key in plan.grid.cells() if key not in done]
    summaries: list[dict[str, Any]] = []
    stopped = False
    if todo:
        with (
            ray_runtime(address, num_cpus),
            tqdm(
                total=plan.cells,
                initial=plan.cells - len(todo),
                desc=f"sweep {plan.sweep_id}",
                unit="cell",
                file=sys.stderr,
                disable=not progress,
                dynamic_ncols=True,
            ) as bar,
        ):
            driver = _Driver(plan, store, todo, bar, should_stop)
            summaries = driver.run()
            stopped = driver.stopped
    counts = store.sweep_progress(plan.sweep_id)
    return SweepReport(
        store=plan.store,
        sweep=plan.sweep_id,
        seconds=time.perf_counter() - start,
        cells_skipped=plan.cells - len(todo),
        summaries=summaries,
        stopped=stopped,
        **counts,
    )
