"""Seeded fixed-length sequences from a token stream (shared by the built-in text sources
of ``rllc.data.datasets`` and the user corpora of ``rllc.data.user``)."""

from __future__ import annotations

import numpy as np


def windows(stream: np.ndarray, n: int, n_ctx: int, seed: int) -> np.ndarray:
    """n windows of n_ctx tokens at seeded uniform offsets of ``stream``. int64[n, n_ctx]."""
    if stream.size < n_ctx:
        raise ValueError(f"token stream of {stream.size} tokens is shorter than n_ctx={n_ctx}")
    starts = np.random.default_rng(seed).integers(0, stream.size - n_ctx + 1, size=n)
    return stream[starts[:, None] + np.arange(n_ctx)].astype(np.int64)
