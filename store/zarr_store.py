"""Zarr v3 backends of ``TraceStore``: a local directory, or ``s3://bucket/prefix`` via s3fs.

Both are one ``ZarrTraceStore`` over a zarr ``Store`` (``LocalStore`` / ``FsspecStore``);
only how that store is opened differs. S3 settings come from the usual AWS environment
(``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``), read
by ``rllc.store.files.storage_options`` as for every other S3 access.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import numpy as np
import xarray as xr
import zarr
from zarr.core.group import GroupMetadata
from zarr.errors import ArrayNotFoundError, GroupNotFoundError, NodeTypeValidationError

from . import files
from .base import DEFAULT_STORE, TraceStore
from .errors import StoreError, StoreNotFoundError
from .layout import GroupLayout

_MISSING = (GroupNotFoundError, ArrayNotFoundError, NodeTypeValidationError, FileNotFoundError)


class ZarrTraceStore(TraceStore):
    """A ``TraceStore`` over any zarr v3 ``Store``; subclasses say how to open it."""

    def __init__(self, uri: str, zstore: zarr.abc.store.Store, *, read_only: bool) -> None:
        super().__init__(uri, read_only=read_only)
        self.zstore = zstore
        self._arrays: dict[tuple[str, str], zarr.Array] = {}

    def _group(self, path: str, mode: str = "r") -> zarr.Group:
        return zarr.open_group(self.zstore, path=path, mode=mode, zarr_format=3)

    def exists(self, path: str) -> bool:
        try:
            self._group(path)
        except _MISSING:
            return False
        return True

    def list(self, prefix: str = "") -> builtins.list[str]:
        try:
            group = self._group(prefix)
        except _MISSING:
            return []
        return sorted(group.group_keys())

    def read(self, path: str) -> xr.Dataset:
        # chunks=None: lazily indexed numpy-backed variables, no dask needed.
        return xr.open_dataset(
            self.zstore,
            engine="zarr",
            group=path or None,
            consolidated=False,
            zarr_format=3,
            chunks=None,
        )

    def read_attrs(self, path: str) -> dict[str, Any]:
        return dict(self._group(path).attrs)

    def read_array(self, path: str, name: str) -> np.ndarray:
        return np.asarray(self._array(path, name)[...])

    def _array(self, path: str, name: str) -> zarr.Array:
        """A cached handle on array ``name`` of group ``path``. Safe to cache: array
        metadata is written once, when the group is created (``_create`` clears it)."""
        handle = self._arrays.get((path, name))
        if handle is None:
            mode = "r" if self.read_only else "r+"
            handle = self._arrays[path, name] = self._group(path, mode)[name]
        return handle

    def _create(self, path: str, layout: GroupLayout) -> None:
        # Every node's metadata is built in memory first, then written in one concurrent
        # batch: creating arrays one by one re-checks every parent group per array, which
        # costs a dozen round trips each on S3.
        scratch = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
        nodes: dict[str, Any] = {path: GroupMetadata(zarr_format=3)}  # attrs come last
        for name, spec in layout.arrays.items():
            nodes[f"{path}/{name}"] = scratch.create_array(
                name,
                shape=layout.shape(name),
                chunks=layout.chunks(name),
                dtype=str if spec.dtype == "str" else spec.dtype,
                fill_value=spec.fill_value,
                dimension_names=spec.dims,
                attributes=dict(spec.attrs),
            ).metadata
        existed = self.exists(path)  # an incomplete earlier attempt: replace its nodes
        self._arrays = {k: v for k, v in self._arrays.items() if k[0] != path}
        created = dict(zarr.create_hierarchy(store=self.zstore, nodes=nodes, overwrite=existed))

        def fill(name: str) -> None:
            created[f"{path}/{name}"][...] = layout.arrays[name].values

        _each(fill, [n for n, spec in layout.arrays.items() if spec.values is not None])
        self._group(path, "r+").attrs.update(dict(layout.attrs))  # last: marks it complete

    def _update_attrs(self, path: str, attrs: Mapping[str, Any]) -> None:
        self._group(path, "r+").attrs.update(dict(attrs))

    def _write(self, path: str, values: Mapping[str, Any], region: Mapping[str, int]) -> None:
        def write(name: str) -> None:
            array = self._array(path, name)
            dims = array.metadata.dimension_names or ()
            unknown = sorted(set(region) - set(dims))
            if unknown:
                raise ValueError(f"array {name!r} has dims {dims}, not {', '.join(unknown)}")
            # One index per region dim; with the layout's unit chunks this selection is
            # exactly one whole chunk, so zarr writes it without reading it first.
            array[tuple(region.get(d, slice(None)) for d in dims)] = values[name]

        _each(write, list(values))


def _each(fn: Callable[[str], None], names: builtins.list[str]) -> None:
    """``fn(name)`` for every name, concurrently: each is one or a few independent object
    requests, and on S3 latency, not bandwidth, is what costs. Errors propagate."""
    if len(names) <= 1:
        for name in names:
            fn(name)
        return
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        for future in [pool.submit(fn, name) for name in names]:
            future.result()


class LocalTraceStore(ZarrTraceStore):
    """Traces in a local directory (created on the first write)."""

    def __init__(self, root: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.root = Path(root).expanduser()
        zstore = zarr.storage.LocalStore(self.root, read_only=read_only)
        super().__init__(str(root), zstore, read_only=read_only)

    def with_read_only(self) -> Self:
        return type(self)(self.root, read_only=True)


class S3TraceStore(ZarrTraceStore):
    """Traces under ``s3://bucket/prefix``; endpoint, credentials, region from AWS env."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        if not url.startswith("s3://") or not url[5:].strip("/"):
            raise ValueError(f"an S3 store URI looks like s3://bucket/prefix, got {url!r}")
        self.url = url.rstrip("/")
        zstore = zarr.storage.FsspecStore.from_url(
            self.url, storage_options=files.storage_options(self.url), read_only=read_only
        )
        super().__init__(self.url, zstore, read_only=read_only)

    def with_read_only(self) -> Self:
        return type(self)(self.url, read_only=True)


def open_store(
    uri: str | os.PathLike[str] = DEFAULT_STORE, read_only: bool = False
) -> ZarrTraceStore:
    """Open a trace store by URI: a local path (or ``file://``) or ``s3://bucket/prefix``.

    A read-only store must already exist (``StoreNotFoundError`` otherwise); a writable
    one is created by its first write.
    """
    text = os.fspath(uri)
    if text.startswith("s3://"):
        store: ZarrTraceStore = S3TraceStore(text, read_only=read_only)
    elif "://" in text and not text.startswith("file://"):
        scheme = text.split("://", 1)[0]
        raise StoreError(
            f"unsupported store URI scheme {scheme!r} in {text!r}: use a local path or "
            "s3://bucket/prefix"
        )
    else:
        store = LocalTraceStore(text.removeprefix("file://"), read_only=read_only)
    if read_only:
        try:
            found = store.exists("")
        except OSError as err:  # e.g. S3 bucket missing or unreachable
            raise StoreNotFoundError(f"cannot open store {text}: {err}") from err
        if not found:
            raise StoreNotFoundError(f"no rllc store at {text} (no Zarr group at its root)")
    return store
