"""The service's list of submitted sweeps and tunes, kept in the service's store.

Each submission is one record (``rllc.store.records``) of kind ``service``: id
``sweep-<id>`` or ``tune-<id>``, holding the spec as validated (JSON), the store it
writes to, its state and times. Because it lives in the store and not in the replica's
memory, a restarted service reads it back (``Registry.unfinished``) and continues the
sweeps that were queued or running; cancelled ones stay cancelled until resumed.

States: ``queued`` (accepted, no runner has started), ``running``, ``done`` (every cell
done), ``failed`` (the run ended with failed cells, or raised), ``cancelled``
(``DELETE``; finished cells stay). The replica and the sweep's runner both write the
record (the replica on submit, cancel and resume; the runner on start and end), each by
read-modify-write of one JSON document; ``Registry.update`` applies a change to the
latest version under a lock within one process.
"""

from __future__ import annotations

import datetime as dt
import enum
import threading
from collections.abc import Callable
from typing import Any

from rllc.store import UnknownGroupError, open_store
from rllc.store.records import list_records, read_record, write_record

KIND = "service"


class State(enum.StrEnum):
    """Where a submitted sweep (or tune) stands."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: States a restarted service continues on its own.
UNFINISHED = (State.QUEUED, State.RUNNING)


class Job(enum.StrEnum):
    """What a record describes; its id prefix."""

    SWEEP = "sweep"
    TUNE = "tune"


def now() -> str:
    """UTC time as ISO 8601, to the second (records' timestamps)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def record_id(job: Job, job_id: str) -> str:
    return f"{job.value}-{job_id}"


class Registry:
    """Records of one kind of job in the service's store (``store_uri``)."""

    def __init__(self, store_uri: str) -> None:
        self.store_uri = store_uri
        self.store = open_store(store_uri)
        self._lock = threading.Lock()

    def get(self, job: Job, job_id: str) -> dict[str, Any] | None:
        """The record of ``job_id``, or None if there is none."""
        try:
            return read_record(self.store, KIND, record_id(job, job_id))
        except UnknownGroupError:
            return None

    def put(self, job: Job, job_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Write ``record`` (stamped with ``updated``) as the record of ``job_id``."""
        record = {**record, "updated": now()}
        write_record(self.store, KIND, record_id(job, job_id), record)
        return record

    def update(self, job: Job, job_id: str,
               change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        """Apply ``change`` to the latest record (it returns the new one, or None to keep
        it as it is) and write it; ``KeyError`` if there is no record."""
        with self._lock:
            record = self.get(job, job_id)
            if record is None:
                raise KeyError(job_id)
            new = change(dict(record))
            return record if new is None else self.put(job, job_id, new)

    def ids(self, job: Job) -> list[str]:
        """Ids of the jobs of one kind, sorted."""
        prefix = f"{job.value}-"
        return [r.removeprefix(prefix) for r in list_records(self.store, KIND)
                if r.startswith(prefix)]

    def unfinished(self, job: Job) -> list[dict[str, Any]]:
        """Records that were queued or running: what a restarted service continues."""
        out = []
        for job_id in self.ids(job):
            record = self.get(job, job_id)
            if record is not None and record.get("state") in UNFINISHED:
                out.append(record)
        return out
