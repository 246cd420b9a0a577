"""Records: one JSON document per group, ``reports/<id>`` (a demo's training curve, head
scores, stage times, which sweeps and tune it used) or ``service/<id>`` (the HTTP
service's registry, ``rllc.service.registry``), beside the sweeps and tunes.

A record holds what is neither a trace nor a per-cell metric but is still needed to
re-render a report from the store alone. The store does not look inside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .base import TraceStore
from .errors import UnknownGroupError
from .layout import GroupLayout, group_path

ATTR = "rllc"


def write_record(store: TraceStore, kind: str, record_id: str,
                 record: Mapping[str, Any]) -> None:
    """Create or replace the record ``<kind>/<record_id>`` (JSON-able values only)."""
    path = group_path(kind, record_id)
    doc = json.loads(json.dumps(dict(record), default=str))
    if store.exists(path):
        store.update_attrs(path, {ATTR: doc})
    else:
        store.create(path, GroupLayout(sizes={}, arrays={}, attrs={ATTR: doc}))


def read_record(store: TraceStore, kind: str, record_id: str) -> dict[str, Any]:
    """The record ``<kind>/<record_id>``, or ``UnknownGroupError`` naming those there are."""
    path = group_path(kind, record_id)
    attrs = store.read_attrs(path) if store.exists(path) else {}
    if ATTR not in attrs:
        known = list_records(store, kind)
        have = f"it has: {', '.join(known)}" if known else f"it has no {kind}"
        raise UnknownGroupError(f"no {kind} record {record_id!r} in store {store.uri} ({have})")
    return dict(attrs[ATTR])


def list_records(store: TraceStore, kind: str) -> list[str]:
    """Ids of the records of ``kind``, sorted."""
    return sorted(store.list(kind))
