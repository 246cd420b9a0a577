"""The tiny sweep spec shared by the sweep tests (plan, session, Ray driver): a factory
bound to the session's ``tiny_run`` (tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

#: A fast sampler and loss dataset for the tiny model: 2 chains × 10 draws per cell.
SAMPLER = {
    "chains": 2, "draws": 10, "batch_size": 8, "nbeta": 10.0, "step_size": 1e-4,
    "localization": 100.0,
}
DATA = {"n_sequences": 32}


class SpecFactory:
    """``make_spec(store, **fields)``: a tiny sweep spec over ``tiny_run``, 3 checkpoints
    × heads 0:0, 0:1 × dyck × seeds 0, 1 = 12 cells, with ``fields`` replacing its own.
    ``SAMPLER`` and ``DATA`` are its sampler and data mappings, to extend."""

    SAMPLER = SAMPLER
    DATA = DATA

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def __call__(self, store: str, **fields: Any) -> dict[str, Any]:
        spec = {
            "name": "tiny",
            "checkpoints": os.path.join(self.run_dir, "ckpt-*"),
            "components": ["0:*"],
            "datasets": ["dyck"],
            "seeds": [0, 1],
            "sampler": SAMPLER,
            "store": store,
            "data": DATA,
            "resources": {"max_workers": 2},
        }
        return spec | fields


@pytest.fixture(scope="session")
def make_spec(tiny_run) -> Callable[..., dict[str, Any]]:
    return SpecFactory(tiny_run)
