"""Synthetic token corpora, generated directly in token-id space from a seed.

Each generator is a pure function of ``(n, n_ctx, ..., seed)`` returning ``int64[n, n_ctx]``
numpy arrays, so every split and every call is reproducible without storing data.
Ids below ``low`` are left out of the random tokens (they are the tokenizer's special
tokens, see ``rllc.data.tokenizer``).

- ``induction_sequences``: uniform random tokens with one span copied later on (or, with
  ``periodic=True``, repeated to the end). Span length ℓ, source s and destination d are
  drawn per sequence, so the copy's offset varies and no fixed-period positional shortcut
  predicts it: only an induction circuit ("find the earlier occurrence of my token,
  predict what followed it") does.
- ``dyck_sequences``: prefixes of random Dyck words over k bracket pairs (nested,
  well-matched brackets), as single-bracket tokens.
- ``ngram_sequences``: samples of a sparse random n-gram model: each (n−1)-token context
  has only ``branching`` possible successors, with geometric probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def induction_spans(
    n: int, n_ctx: int, min_span: int, max_span: int, rng: np.random.Generator
) -> np.ndarray:
    """Per sequence (ℓ, s, d): span length, source start and copy start, with
    ℓ ~ U{min_span..max_span}, s ~ U{0..n_ctx−2ℓ}, d ~ U{s+ℓ..n_ctx−ℓ} (no overlap).
    Returns ``int64[n, 3]``."""
    max_span = min(max_span, n_ctx // 2)
    if not 1 <= min_span <= max_span:
        raise ValueError(
            f"need 1 ≤ min_span ≤ min(max_span, n_ctx // 2), got min_span={min_span}, "
            f"max_span={max_span}, n_ctx={n_ctx}"
        )
    length = rng.integers(min_span, max_span + 1, size=n)
    src = (rng.random(n) * (n_ctx - 2 * length + 1)).astype(np.int64)
    dst = src + length + (rng.random(n) * (n_ctx - src - 2 * length + 1)).astype(np.int64)
    return np.stack([length, src, dst], axis=1)


def induction_sequences(
    n: int,
    n_ctx: int,
    vocab_size: int,
    seed: int,
    *,
    min_span: int = 4,
    max_span: int | None = None,
    low: int = 1,
    periodic: bool = False,
    return_spans: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Random tokens ``x ~ U{low..vocab_size−1}`` with ``x[d:d+ℓ] = x[s:s+ℓ]``.

    Tokens at d+1 … d+ℓ−1 are predictable by induction (ℓ−1 of n_ctx positions). With
    ``periodic=True`` the span instead repeats from s to the end,
    ``x[t] = x[s + (t − s) mod ℓ]`` for t ≥ s (period ℓ random per sequence, so still no
    fixed-period shortcut), making most positions predictable by induction: a denser
    training signal. With ``return_spans`` also returns the ``[n, 3]`` array of
    (ℓ, s, d) used by head scores. ``max_span`` defaults to n_ctx // 2.
    """
    rng = _rng(seed, 1)
    x = rng.integers(low, vocab_size, size=(n, n_ctx), dtype=np.int64)
    spans = induction_spans(n, n_ctx, min_span, max_span or n_ctx // 2, rng)
    offs = np.arange(n_ctx)
    length, src, dst = (spans[:, i : i + 1] for i in range(3))
    if periodic:
        spans[:, 2] = spans[:, 1] + spans[:, 0]
        source = np.where(offs >= src, src + (offs - src) % length, offs)  # [n, n_ctx]
        x = np.take_along_axis(x, source, axis=1)
    else:
        in_copy = (offs >= dst) & (offs < dst + length)  # [n, n_ctx]
        rows, cols = np.nonzero(in_copy)
        x[rows, cols] = x[rows, cols - (dst - src)[rows, 0]]
    return (x, spans) if return_spans else x


def dyck_sequences(
    n: int,
    n_ctx: int,
    brackets: Sequence[tuple[int, int]],
    seed: int,
    *,
    max_depth: int = 8,
    p_open: float = 0.5,
) -> np.ndarray:
    """Prefixes of random Dyck words: each step opens a random bracket type with
    probability ``p_open`` (always at depth 0, never at ``max_depth``), else closes the
    innermost open bracket. ``brackets`` are (open_id, close_id) token pairs."""
    if not brackets:
        raise ValueError("dyck_sequences needs at least one (open, close) bracket pair")
    opens = np.array([b[0] for b in brackets], dtype=np.int64)
    closes = np.array([b[1] for b in brackets], dtype=np.int64)
    rng = _rng(seed, 2)
    out = np.empty((n, n_ctx), dtype=np.int64)
    stack = np.zeros((n, max_depth), dtype=np.int64)  # bracket types of open brackets
    depth = np.zeros(n, dtype=np.int64)
    rows = np.arange(n)
    for t in range(n_ctx):
        kind = rng.integers(0, len(brackets), size=n)
        want_open = rng.random(n) < p_open
        do_open = (depth == 0) | ((depth < max_depth) & want_open)
        top = stack[rows, np.maximum(depth - 1, 0)]
        out[:, t] = np.where(do_open, opens[kind], closes[top])
        stack[rows, np.minimum(depth, max_depth - 1)] = np.where(
            do_open, kind, stack[rows, np.minimum(depth, max_depth - 1)]
        )
        depth = np.where(do_open, depth + 1, depth - 1)
    return out


def matching_brackets(tokens: np.ndarray, brackets: Sequence[tuple[int, int]]) -> np.ndarray:
    """For each position of ``tokens`` [n, T], the position of the opening bracket that a
    closing bracket there matches, else −1. Returns ``int64[n, T]``."""
    open_of = {c: o for o, c in brackets}
    opens = {o for o, _ in brackets}
    match = np.full(tokens.shape, -1, dtype=np.int64)
    for i, row in enumerate(tokens.tolist()):
        stack: list[tuple[int, int]] = []
        for t, tok in enumerate(row):
            if tok in opens:
                stack.append((tok, t))
            elif tok in open_of and stack and stack[-1][0] == open_of[tok]:
                match[i, t] = stack.pop()[1]
            elif tok in open_of:
                stack.clear()  # unmatched closer: nothing before it can match any more
    return match


def ngram_sequences(
    n: int,
    n_ctx: int,
    vocab_size: int,
    seed: int,
    *,
    order: int = 3,
    branching: int = 4,
    low: int = 1,
    model_seed: int = 0,
) -> np.ndarray:
    """Samples of a sparse random n-gram model over ids ``low..vocab_size−1``.

    The model is a mixture of sparse skip-bigrams (fixed by ``model_seed``): for each lag
    i = 1 … n−1 a table S_i maps a token to ``branching`` successors, and

        p(x_{t+1} | x_{t−n+2} … x_t) = Σ_i (1/(n−1)) Σ_j 2^{−j}/Z · [x_{t+1} = S_i(x_{t+1−i})_j]

    i.e. pick a lag i uniformly, then successor j of the token i positions back with
    probability ∝ 2^{−j}. The support has at most (n−1)·branching tokens. Predicting it
    well needs the current token (direct path) and the previous ones (previous-token
    heads), a log-additive structure an attention-only model can represent. The first
    n−1 tokens are uniform.
    """
    if order < 2 or branching < 1:
        raise ValueError(f"need order ≥ 2 and branching ≥ 1, got {order}, {branching}")
    m = vocab_size - low
    tables = _rng(model_seed, 3, order, branching, m).integers(
        0, m, size=(order - 1, m, branching)
    )
    probs = 0.5 ** np.arange(branching)
    probs /= probs.sum()
    rng = _rng(seed, 4)
    x = np.empty((n, n_ctx), dtype=np.int64)
    x[:, : order - 1] = rng.integers(0, m, size=(n, min(order - 1, n_ctx)))
    lag = rng.integers(1, order, size=(n, n_ctx))
    choice = rng.choice(branching, size=(n, n_ctx), p=probs)
    rows = np.arange(n)
    for t in range(order - 1, n_ctx):
        x[:, t] = tables[lag[:, t] - 1, x[rows, t - lag[:, t]], choice[:, t]]
    return x + low
