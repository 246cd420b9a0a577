"""Backend-neutral description of one stored group: named dimensions, arrays, attributes.

A store holds groups at ``<kind>/<id>`` (``sweeps/<sweep_id>``, later ``tuning/<id>``).
Every array names its dimensions (Zarr v3 ``dimension_names``), so xarray reads a group
back as a labelled ``Dataset`` with no extra convention. Arrays are chunked with size 1
along the layout's ``unit_dims`` and whole along every other dimension: one index of the
unit dims (one sweep cell) is one chunk of each array, written by exactly one writer, so
concurrent writers of different cells never touch the same object.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Group kinds a store may hold; each is a top-level folder of the store. ``service``
#: holds the HTTP service's registry of submitted sweeps and tunes (``rllc.service``).
KINDS = ("sweeps", "tuning", "reports", "cache", "service")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def validate_id(group_id: str, what: str = "sweep id") -> str:
    """``group_id`` if it is letters, digits, ``-`` and ``_`` (docs/cli.md §4), else ``ValueError``."""
    if not isinstance(group_id, str) or not _ID.match(group_id):
        raise ValueError(
            f"{what} must be letters, digits, '-' and '_' (starting with a letter or digit), "
            f"got {group_id!r}"
        )
    return group_id


def group_path(kind: str, group_id: str) -> str:
    """Path of a group inside a store, e.g. ``group_path("sweeps", "demo") == "sweeps/demo"``."""
    if kind not in KINDS:
        raise ValueError(f"group kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return f"{kind}/{validate_id(group_id)}"


@dataclass(frozen=True)
class ArraySpec:
    """One array of a group.

    ``dtype`` is a numpy dtype name, or ``"str"`` for variable-length UTF-8 strings.
    ``values`` (coordinates) are written when the group is created; other arrays start
    at ``fill_value``, which also marks "not written yet" when read back.
    """

    dims: tuple[str, ...]
    dtype: str
    fill_value: Any
    values: np.ndarray | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupLayout:
    """Dimensions (name → length), arrays and attributes of a group to create.

    ``unit_dims`` are the dimensions along which chunks have size 1 (one writer per index).
    """

    sizes: Mapping[str, int]
    arrays: Mapping[str, ArraySpec]
    attrs: Mapping[str, Any]
    unit_dims: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, spec in self.arrays.items():
            unknown = [d for d in spec.dims if d not in self.sizes]
            if unknown:
                raise ValueError(f"array {name!r} uses undeclared dimensions {unknown}")
            if spec.values is not None and np.shape(spec.values) != self.shape(name):
                raise ValueError(
                    f"array {name!r}: values of shape {np.shape(spec.values)} do not match "
                    f"its dimensions {self.shape(name)}"
                )

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of array ``name``."""
        return tuple(self.sizes[d] for d in self.arrays[name].dims)

    def chunks(self, name: str) -> tuple[int, ...]:
        """Chunk shape of array ``name``: 1 along ``unit_dims``, whole elsewhere."""
        return tuple(
            1 if d in self.unit_dims else max(self.sizes[d], 1) for d in self.arrays[name].dims
        )
