"""Sweeps and tunes run detached from the request: one Ray actor per run.

    runners = Runners(settings.store)
    runners.start(Job.SWEEP, "heads")        # returns at once; the actor runs the sweep
    runners.stop(Job.SWEEP, "heads")         # cooperative: workers killed, done cells kept

The actor (``JobRunner``, no CPUs of its own) reads the job's record from the registry,
marks it running and calls the same driver as ``rllc sweep run`` (``run_sweep``, with
``resume`` when the store already has the sweep, so a continued run skips done cells) or
``rllc tune`` (``tune_spec``), then writes the outcome back to the record. The worker
actors it starts are its own: a runner killed with the replica that started it (a
service stopped or restarted) takes its workers with it, and the restarted service
starts a fresh runner that resumes from the store's ``done`` flags, so no cell is lost
and none is stored twice.

A sweep's runner is cancelled cooperatively: ``stop`` sets an event that the driver
polls between units (``run_sweep(should_stop=…)``); the driver then kills its workers.
A tune's runner is killed (Ray Tune has no such hook); its trials die with it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .registry import UNFINISHED, Job, Registry, State, now

log = logging.getLogger(__name__)

#: seconds ``Runners.stop`` waits for a runner to wind down before killing it
STOP_TIMEOUT = 60.0
_ERROR_CHARS = 2000


class _Cancelled(Exception):
    """The runner was stopped before its run began."""


class JobRunner:
    """The body of one runner actor (``Runners`` makes it remote): one job, one run."""

    def __init__(self, registry_store: str) -> None:
        self.registry = Registry(registry_store)
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask the running sweep to stop after the units in flight (killed, not awaited)."""
        self._stop.set()

    def run(self, job: str, job_id: str) -> str:
        """Run ``job_id`` to its end; returns the final state (also written to its record)."""
        kind = Job(job)
        record = self.registry.update(kind, job_id, self._mark_running)
        if record.get("state") != State.RUNNING:  # cancelled before it started
            return str(record.get("state"))
        try:
            if self._stop.is_set():  # cancelled while it started
                raise _Cancelled
            outcome = self._sweep(record) if kind is Job.SWEEP else self._tune(record)
        except _Cancelled:
            outcome = {"state": State.CANCELLED.value, "error": None}
        except Exception as err:  # recorded, not raised: the record is the interface
            log.warning("%s %s failed: %s", kind.value, job_id, type(err).__name__)
            text = f"{type(err).__name__}: {err}"[:_ERROR_CHARS]
            outcome = {"state": State.FAILED.value, "error": text}
        final = self.registry.update(kind, job_id, lambda r: _finish(r, outcome))
        return str(final["state"])

    @staticmethod
    def _mark_running(record: dict[str, Any]) -> dict[str, Any] | None:
        if record.get("state") not in UNFINISHED:  # cancelled before the runner started
            return None
        return record | {"state": State.RUNNING.value, "started": now(), "error": None}

    def _sweep(self, record: dict[str, Any]) -> dict[str, Any]:
        from rllc.jobs.spec import parse_spec
        from rllc.jobs.sweep import run_sweep
        from rllc.store import open_store

        spec = parse_spec(record["spec"])
        store = open_store(spec.store)
        resume = spec.name in store.list_sweeps()
        before = store.sweep_progress(spec.name)["cells_done"] if resume else 0
        self.registry.update(Job.SWEEP, spec.name,
                             lambda r: r | {"cells_done_at_start": before})
        report = run_sweep(spec, resume=resume, progress=False, should_stop=self._stop.is_set)
        run = {"finished": now(), "cells_run": report.cells_run,
               "cells_skipped": report.cells_skipped, "stopped": report.stopped}
        if report.cells_done == report.cells_total:
            state, error = State.DONE, None
        elif report.stopped:
            state, error = State.CANCELLED, None
        else:
            state = State.FAILED
            error = f"{report.cells_failed} of {report.cells_total} cells failed"
        return {"state": state.value, "error": error, "run": run}

    def _tune(self, record: dict[str, Any]) -> dict[str, Any]:
        from rllc.jobs.tune import TuneError, tune_spec
        from rllc.jobs.tune_spec import parse_tune_spec

        try:
            out = tune_spec(parse_tune_spec(record["spec"]), progress=False)
        except TuneError as err:
            return {"state": State.FAILED.value, "error": str(err)[:_ERROR_CHARS]}
        keep = ("best", "objective", "passed", "trials", "seconds")
        return {"state": State.DONE.value, "error": None,
                "result": {k: out.get(k) for k in keep}}


def _finish(record: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    """The record after a run: its outcome, the run appended to ``runs``. A run that was
    stopped stays cancelled (``DELETE`` wrote that already)."""
    out = record | {k: v for k, v in outcome.items() if k != "run"} | {"finished": now()}
    if "run" in outcome:
        out["runs"] = [*record.get("runs", []),
                       outcome["run"] | {"started": record.get("started")}]
    return out


class Runners:
    """The runner actors of one replica: start, stop, and notice the ones that died."""

    def __init__(self, registry_store: str, tune_state: str | None = None) -> None:
        import ray

        self.ray = ray
        self.registry_store = registry_store
        self.tune_state = tune_state
        self._actors: dict[tuple[Job, str], tuple[Any, Any]] = {}  # → (actor, run ref)
        self._lock = threading.Lock()
        self._cls = ray.remote(JobRunner)

    def active(self, job: Job, job_id: str) -> bool:
        """Whether a runner of ``job_id`` is alive and has not returned."""
        with self._lock:
            entry = self._actors.get((job, job_id))
        if entry is None:
            return False
        ready, _ = self.ray.wait([entry[1]], timeout=0)
        return not ready

    def start(self, job: Job, job_id: str) -> None:
        """Start a runner for ``job_id`` unless one is active (never two at once)."""
        with self._lock:
            entry = self._actors.get((job, job_id))
            if entry is not None and not self.ray.wait([entry[1]], timeout=0)[0]:
                return
            env = {"RLLC_TUNE_STATE": self.tune_state} if self.tune_state else {}
            actor = self._cls.options(
                num_cpus=0, max_concurrency=2, max_restarts=0,
                runtime_env={"env_vars": env} if env else None,
            ).remote(self.registry_store)
            self._actors[job, job_id] = (actor, actor.run.remote(job.value, job_id))

    def stop(self, job: Job, job_id: str, timeout: float = STOP_TIMEOUT) -> None:
        """Stop ``job_id``'s runner and wait for it: a sweep's cooperatively (its workers
        are killed between units), a tune's by killing it. Returns once it is gone."""
        with self._lock:
            entry = self._actors.pop((job, job_id), None)
        if entry is None:
            return
        actor, ref = entry
        if job is Job.SWEEP:
            actor.stop.remote()
            ready, _ = self.ray.wait([ref], timeout=timeout)
            if ready:
                return
        self.ray.kill(actor, no_restart=True)

    def reap(self, registry: Registry) -> None:
        """Forget runners that returned; a runner that died without writing its outcome
        (its process or node lost) leaves its job failed, with the reason."""
        with self._lock:
            entries = list(self._actors.items())
        for key, (_, ref) in entries:
            ready, _ = self.ray.wait([ref], timeout=0)
            if not ready:
                continue
            with self._lock:
                if self._actors.get(key, (None, None))[1] is ref:
                    del self._actors[key]
            try:
                self.ray.get(ref)
            except self.ray.exceptions.RayError as err:
                job, job_id = key
                text = f"runner lost: {type(err).__name__}"

                def lost(r: dict[str, Any], text: str = text) -> dict[str, Any] | None:
                    if r.get("state") not in UNFINISHED:
                        return None
                    return r | {"state": State.FAILED.value, "error": text, "finished": now()}

                registry.update(job, job_id, lost)

    def shutdown(self) -> None:
        """Kill every runner (and with them their workers)."""
        with self._lock:
            entries, self._actors = list(self._actors.values()), {}
        for actor, _ in entries:
            self.ray.kill(actor, no_restart=True)
