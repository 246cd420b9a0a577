"""What each route does, as plain methods: the FastAPI handlers (``rllc.service.app``) only
parse the request and call these.

``ServiceCore`` owns the registry (in the service's store) and the runner actors. On
creation it continues the jobs its registry lists as queued or running: a restarted
service picks up where the last one stopped. Every refusal is a ``RequestError`` with
its HTTP status; ids are checked before any store is touched.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import os
import threading
from typing import Any

import numpy as np

from rllc.jobs.spec import parse_spec
from rllc.jobs.tune_spec import parse_tune_spec
from rllc.store import QueryError, StoreError, open_store, select
from rllc.store.query import llc_query

from .config import ServiceSettings
from .registry import UNFINISHED, Job, Registry, State, now
from .runner import Runners
from .security import valid_id
from .submission import RequestError, parse_body, validate

log = logging.getLogger(__name__)

#: Variables a trace request may ask for (per chain and draw, or per chain).
TRACE_VARIABLES = ("loss", "batch_init_loss", "distance", "grad_norm", "mala_acceptance",
                   "diverged")


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as None and numpy scalars as Python numbers (JSON
    has no NaN; the CLI's ``--json`` does the same)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    return obj


class ServiceCore:
    """The service's state and operations (one per replica)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.roots = settings.root_set
        self.registry = Registry(settings.store)
        local = "://" not in settings.store
        self.runners = Runners(settings.store,
                               os.path.join(settings.store, "tune-state") if local else None)
        self._submit_lock = threading.Lock()
        for job in Job:
            for record in self.registry.unfinished(job):
                log.info("continuing %s %s (%s)", job.value, record["id"], record["state"])
                self.runners.start(job, record["id"])

    # ---- sweeps ------------------------------------------------------------------------

    def submit(self, body: bytes, job: Job = Job.SWEEP) -> tuple[int, dict[str, Any]]:
        """A new sweep (201, queued) or the same one again (200); 409 for another spec
        under an existing id."""
        data = parse_body(body, self.settings.caps)
        parse = parse_spec if job is Job.SWEEP else parse_tune_spec
        sub = validate(data, self.roots, self.settings.caps, self.settings.store, parse)
        job_id, canonical = sub.spec.name, sub.canonical
        with self._submit_lock:  # two identical submissions start one job
            self.runners.reap(self.registry)
            record = self.registry.get(job, job_id)
            if record is not None:
                if record["spec"] != canonical:
                    raise RequestError(409, f"{job.value} {job_id!r} exists with a different "
                                            "spec; choose another name")
                return 200, self._summary(job, record)
            self._check_store_free(job, sub.spec.store, job_id)
            record = self.registry.put(job, job_id, {
                "id": job_id, "job": job.value, "spec": canonical, "store": sub.spec.store,
                "state": State.QUEUED.value, "cells_total": sub.cells, "submitted": now(),
                "error": None, "runs": [],
            })
            self.runners.start(job, job_id)
        log.info("%s %s queued (%d cells)", job.value, job_id, sub.cells)
        return 201, self._summary(job, record)

    def _check_store_free(self, job: Job, store: str, job_id: str) -> None:
        """409 when the target store already has this id from outside the service (a
        sweep run with ``rllc sweep run``): the service would otherwise adopt it."""
        try:
            ts = open_store(store, read_only=True)
            taken = job_id in (ts.list_sweeps() if job is Job.SWEEP else ts.list("tuning"))
        except StoreError:
            taken = False
        if taken:
            raise RequestError(409, f"store {store} already has a {job.value} {job_id!r} "
                                    "that this service did not start; choose another name")

    def record(self, job: Job, job_id: str) -> dict[str, Any]:
        """The record of ``job_id``; 404 if the service has none (malformed ids too)."""
        if not valid_id(job_id):
            raise RequestError(404, f"no {job.value} {job_id!r}")
        self.runners.reap(self.registry)
        record = self.registry.get(job, job_id)
        if record is None:
            raise RequestError(404, f"no {job.value} {job_id!r}")
        return record

    def status(self, sweep_id: str) -> dict[str, Any]:
        """``{sweep, state, cells_done, cells_failed, cells_total, eta_seconds, …}``."""
        return self._summary(Job.SWEEP, self.record(Job.SWEEP, sweep_id), progress=True)

    def list(self) -> dict[str, Any]:
        self.runners.reap(self.registry)
        out = []
        for job_id in self.registry.ids(Job.SWEEP):
            record = self.registry.get(Job.SWEEP, job_id)
            if record is not None:
                out.append(self._summary(Job.SWEEP, record, progress=True))
        return {"sweeps": out}

    def cancel(self, sweep_id: str) -> dict[str, Any]:
        """Cancel a queued or running sweep: its runner stops and kills its workers before
        this returns; finished cells stay. A finished sweep is left as it is."""
        record = self.record(Job.SWEEP, sweep_id)
        if record["state"] in UNFINISHED:
            self.registry.update(Job.SWEEP, sweep_id, _cancelled)
            self.runners.stop(Job.SWEEP, sweep_id)
            log.info("sweep %s cancelled", sweep_id)
        return self.status(sweep_id)

    def resume(self, sweep_id: str) -> dict[str, Any]:
        """Continue a cancelled or failed sweep (its done cells are skipped); a queued,
        running or done one is left as it is."""
        record = self.record(Job.SWEEP, sweep_id)
        if record["state"] in (State.CANCELLED, State.FAILED):
            with self._submit_lock:
                if self.runners.active(Job.SWEEP, sweep_id):
                    raise RequestError(409, f"sweep {sweep_id!r} is still stopping; retry")
                self.registry.update(Job.SWEEP, sweep_id, lambda r: r | {
                    "state": State.QUEUED.value, "error": None, "finished": None})
                self.runners.start(Job.SWEEP, sweep_id)
            log.info("sweep %s resumed", sweep_id)
        return self.status(sweep_id)

    def _summary(self, job: Job, record: dict[str, Any], progress: bool = False
                 ) -> dict[str, Any]:
        out = {job.value: record["id"], "state": record["state"]}
        if job is Job.TUNE:
            return out | self._tune_progress(record)
        out |= {"cells_done": 0, "cells_failed": 0,
                "cells_total": int(record.get("cells_total") or 0)}
        if progress or record["state"] != State.QUEUED:
            out |= self._progress(record)
        out["eta_seconds"] = _eta(record, out)
        return out | {"store": record["store"], "submitted": record.get("submitted"),
                      "started": record.get("started"), "finished": record.get("finished"),
                      "error": record.get("error")}

    @staticmethod
    def _progress(record: dict[str, Any]) -> dict[str, int]:
        try:
            store = open_store(record["store"], read_only=True)
            if record["id"] not in store.list_sweeps():
                return {}
            return store.sweep_progress(record["id"])
        except StoreError:
            return {}

    # ---- results -----------------------------------------------------------------------

    def _dataset(self, sweep_id: str):
        record = self.record(Job.SWEEP, sweep_id)
        try:
            return record, open_store(record["store"], read_only=True).open_sweep(sweep_id)
        except StoreError:
            raise RequestError(404, f"sweep {sweep_id!r} has no traces yet "
                                    f"(state {record['state']})") from None

    def llc(self, sweep_id: str, **query: Any) -> dict[str, Any]:
        """The rows of ``rllc query --format json`` for this sweep."""
        record = self.record(Job.SWEEP, sweep_id)
        try:
            return jsonable(llc_query(record["store"], sweep_id, **query))
        except QueryError as err:
            raise RequestError(422, [{"loc": ["query"], "msg": str(err),
                                      "type": "value_error"}]) from None
        except StoreError:
            raise RequestError(404, f"sweep {sweep_id!r} has no traces yet "
                                    f"(state {record['state']})") from None

    def traces(self, sweep_id: str, variable: str, fmt: str, **filters: Any
               ) -> dict[str, Any] | bytes:
        """One trace variable of a selection: labelled JSON, or a ``.npy`` array."""
        if variable not in TRACE_VARIABLES:
            raise RequestError(422, [{"loc": ["query", "variable"], "type": "value_error",
                                      "msg": f"variable must be one of "
                                             f"{', '.join(TRACE_VARIABLES)}"}])
        _, ds = self._dataset(sweep_id)
        try:
            part = select(ds, **filters)[variable]
        except QueryError as err:
            raise RequestError(422, [{"loc": ["query"], "msg": str(err),
                                      "type": "value_error"}]) from None
        if part.size > self.settings.caps.max_trace_values:
            raise RequestError(413, f"the selection has {part.size} values, more than this "
                                    f"server's limit of {self.settings.caps.max_trace_values}; "
                                    "filter by checkpoint, component or dataset")
        values = np.asarray(part.values)
        if fmt == "npy":
            buf = io.BytesIO()
            np.save(buf, values, allow_pickle=False)
            return buf.getvalue()
        coords = {d: [jsonable(x.item() if hasattr(x, "item") else x)
                      for x in part[d].values] for d in part.dims}
        return {"sweep": sweep_id, "variable": variable, "dims": list(part.dims),
                "coords": coords, "values": jsonable(values.tolist())}

    def failures(self, sweep_id: str) -> dict[str, Any]:
        """Each failed cell with its error text."""
        record = self.record(Job.SWEEP, sweep_id)
        try:
            failed = open_store(record["store"], read_only=True).failed_cells(sweep_id)
        except StoreError:
            failed = {}
        rows = [key._asdict() | {"error": text} for key, text in sorted(failed.items())]
        return {"sweep": sweep_id, "failures": jsonable(rows)}

    # ---- tunes -------------------------------------------------------------------------

    def tune_status(self, tune_id: str) -> dict[str, Any]:
        record = self.record(Job.TUNE, tune_id)
        return self._summary(Job.TUNE, record) | {
            "store": record["store"], "error": record.get("error"),
            "submitted": record.get("submitted"), "finished": record.get("finished")}

    @staticmethod
    def _tune_progress(record: dict[str, Any]) -> dict[str, Any]:
        from rllc.store.layout import group_path
        from rllc.store.tuning import tuning_attrs

        out: dict[str, Any] = {"trials_done": 0, "trials_total": None, "best": None}
        try:
            store = open_store(record["store"], read_only=True)
            attrs = tuning_attrs(store, record["id"])
            done = store.read_array(group_path("tuning", record["id"]), "done")
        except StoreError:
            return out
        return out | {"trials_done": int(done.sum()), "trials_total": int(done.size),
                      "best": attrs.get("best")}

    def shutdown(self) -> None:
        self.runners.shutdown()


def _cancelled(record: dict[str, Any]) -> dict[str, Any] | None:
    if record.get("state") not in UNFINISHED:
        return None
    return record | {"state": State.CANCELLED.value, "finished": now()}


def _eta(record: dict[str, Any], progress: dict[str, Any]) -> float | None:
    """Seconds left at this run's rate so far (None before a cell of it finished)."""
    if record["state"] == State.DONE:
        return 0.0
    if record["state"] != State.RUNNING or not record.get("started"):
        return None
    ran = progress["cells_done"] - int(record.get("cells_done_at_start") or 0)
    left = progress["cells_total"] - progress["cells_done"] - progress["cells_failed"]
    if ran <= 0:
        return None
    elapsed = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(record["started"]))
    return round(elapsed.total_seconds() / ran * max(left, 0), 1)
