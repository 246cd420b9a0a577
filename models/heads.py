"""Per-head behavioural scores and head classes (the paper's Appendix B, by scores only).

All scores are mean attention weights A[query → key] of one head, in [0, 1], over the
positions where the key is the "right" one for the behaviour:

- previous-token: A[t → t−1], t ≥ 1, on held-out repeated random sequences;
- current-token:  A[t → t],   t ≥ 1, on the same sequences;
- induction:      A[d+j → s+j+1], j = 1 … ℓ−1, where a span x[s:s+ℓ] reappears at d
  (``rllc.data.synthetic.induction_sequences``, random ℓ, s, d: no fixed period);
- bracket:        A[t → m(t)] at closing brackets t of Dyck sequences, m(t) the matching
  opening bracket, counting only t − m(t) ≥ 2 (so a previous-token head, which finds
  the match of "()" for free, does not score).

A head's class is the behaviour of its highest score if that score is ≥ ``threshold``,
else ``multigram`` (the paper's catch-all for heads memorising n-grams and skip n-grams).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor

from rllc.data.synthetic import dyck_sequences, induction_sequences, matching_brackets
from rllc.data.tokenizer import N_SPECIAL, bracket_ids

from .transformer import AttentionOnlyTransformer

BEHAVIOURS = ("previous-token", "current-token", "induction", "bracket")
CLASSES = (*BEHAVIOURS, "multigram")
SCORE_SEED = 0x5C0E  # seed of the held-out scoring sequences, never drawn in training


@dataclass(frozen=True)
class HeadScore:
    """Scores of one head ``"L:H"`` and its class."""

    head: str
    prev_token: float
    current_token: float
    induction: float
    bracket: float
    kind: str

    def as_dict(self) -> dict[str, float | str]:
        """The CLI's JSON form: keys ``head, prev_token, current_token, induction,
        bracket, class``."""
        d = asdict(self)
        d["class"] = d.pop("kind")
        return d


def classify(
    prev_token: float, current_token: float, induction: float, bracket: float,
    threshold: float = 0.3,
) -> str:
    """The behaviour with the highest score if it reaches ``threshold``, else multigram."""
    scores = dict(zip(BEHAVIOURS, (prev_token, current_token, induction, bracket), strict=True))
    best = max(scores, key=lambda k: scores[k])
    return best if scores[best] >= threshold else "multigram"


def _patterns(model: AttentionOnlyTransformer, tokens: Tensor, chunk: int = 16) -> Tensor:
    """Attention patterns [layer, batch, head, query, key], computed in chunks."""
    return torch.cat([model.attention_patterns(t) for t in tokens.split(chunk)], dim=1)


def _mean_at(patterns: Tensor, b: np.ndarray, q: np.ndarray, k: np.ndarray) -> Tensor:
    """Mean of patterns[:, b_i, :, q_i, k_i] over i → [layer, head] (NaN if no i)."""
    if len(b) == 0:
        return torch.full(patterns.shape[:1] + patterns.shape[2:3], float("nan"))
    b_, q_, k_ = (torch.as_tensor(a, dtype=torch.long) for a in (b, q, k))
    return patterns[:, b_, :, q_, k_].mean(dim=0)  # advanced dims lead: [i, layer, head]


def repeated_sequences(
    n: int, n_ctx: int, vocab_size: int, seed: int = SCORE_SEED, alphabet: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out induction-test sequences and their (ℓ, s, d) spans, ℓ ≥ 4; tokens from
    the first ``alphabet`` ordinary ids (default: all of them)."""
    top = vocab_size if alphabet is None else min(vocab_size, N_SPECIAL + alphabet)
    return induction_sequences(  # type: ignore[return-value]
        n, n_ctx, top, seed, min_span=4, low=N_SPECIAL, return_spans=True
    )


def behaviour_scores(
    model: AttentionOnlyTransformer,
    tokenizer: Tokenizer | None = None,
    n_sequences: int = 64,
    seed: int = SCORE_SEED,
    alphabet: int | None = None,
) -> dict[str, Tensor]:
    """Scores ``[layer, head]`` per behaviour: keys prev_token, current_token, induction,
    bracket (bracket is NaN without a tokenizer, which names the bracket tokens).
    ``alphabet``: the induction data's token range (``DataMix.induction_vocab``)."""
    cfg = model.cfg
    T = cfg.n_ctx
    x, spans = repeated_sequences(n_sequences, T, cfg.d_vocab, seed, alphabet)
    was_training = model.training
    model.eval()
    try:
        pat = _patterns(model, torch.from_numpy(x))
        b, t = np.meshgrid(np.arange(n_sequences), np.arange(1, T), indexing="ij")
        b, t = b.ravel(), t.ravel()
        scores = {"prev_token": _mean_at(pat, b, t, t - 1), "current_token": _mean_at(pat, b, t, t)}
        ib, iq, ik = [], [], []
        for i, (length, s, d) in enumerate(spans.tolist()):
            j = np.arange(1, length)
            ib.append(np.full(j.size, i)), iq.append(d + j), ik.append(s + j + 1)
        scores["induction"] = _mean_at(pat, *(np.concatenate(a) for a in (ib, iq, ik)))
        del pat
        if tokenizer is None:
            scores["bracket"] = torch.full_like(scores["induction"], float("nan"))
        else:
            pairs = bracket_ids(tokenizer)
            dyck = dyck_sequences(n_sequences, T, pairs, seed)
            match = matching_brackets(dyck, pairs)
            pos = np.arange(T)[None, :]
            db, dq = np.nonzero((match >= 0) & (pos - match >= 2))
            pat = _patterns(model, torch.from_numpy(dyck))
            scores["bracket"] = _mean_at(pat, db, dq, match[db, dq])
    finally:
        model.train(was_training)
    return scores


def head_scores(
    model: AttentionOnlyTransformer,
    tokenizer: Tokenizer | None = None,
    n_sequences: int = 64,
    seed: int = SCORE_SEED,
    threshold: float = 0.3,
    alphabet: int | None = None,
) -> list[HeadScore]:
    """Every head's scores and class, layer-major (``"0:0"``, ``"0:1"``, …)."""
    s = behaviour_scores(model, tokenizer, n_sequences, seed, alphabet)
    out = []
    for layer in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            v = {k: float(s[k][layer, h]) for k in ("prev_token", "current_token", "induction", "bracket")}
            kind = classify(**{k: (0.0 if np.isnan(x) else x) for k, x in v.items()},
                            threshold=threshold)
            out.append(HeadScore(head=f"{layer}:{h}", kind=kind, **v))
    return out
