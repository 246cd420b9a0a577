"""Head scores find the behaviours they name, and classes follow the scores."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from rllc.data.synthetic import matching_brackets
from rllc.data.tokenizer import bracket_ids, train_tokenizer
from rllc.models import AttentionOnlyTransformer, TransformerConfig
from rllc.models.heads import classify, head_scores

CFG = TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=4, n_ctx=48, d_vocab=300)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["(a) [b] {c} " * 20], 300)


class IdealHeads(AttentionOnlyTransformer):
    """0:0 previous-token, 0:1 current-token, 1:0 induction, 1:1 bracket-matching."""

    pairs: ClassVar[list[tuple[int, int]]] = []

    def attention_patterns(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        pat = torch.zeros(2, B, 2, T, T)
        match = matching_brackets(tokens.numpy(), self.pairs)
        for b in range(B):
            row = tokens[b].tolist()
            for t in range(T):
                pat[0, b, 0, t, max(t - 1, 0)] = 1
                pat[0, b, 1, t, t] = 1
                earlier = [k for k in range(1, t + 1) if row[k - 1] == row[t] and k - 1 < t]
                pat[1, b, 0, t, earlier[-1] if earlier else t] = 1
                pat[1, b, 1, t, match[b, t] if match[b, t] >= 0 else 0] = 1  # else "rest" on 0
        return pat


def test_ideal_heads_score_one_on_their_behaviour(tok):
    IdealHeads.pairs = bracket_ids(tok)
    scores = {s.head: s for s in head_scores(IdealHeads(CFG), tok, n_sequences=16)}
    assert scores["0:0"].prev_token == 1.0 and scores["0:0"].kind == "previous-token"
    assert scores["0:1"].current_token == 1.0 and scores["0:1"].kind == "current-token"
    assert scores["1:0"].induction > 0.9 and scores["1:0"].kind == "induction"
    assert scores["1:1"].bracket == 1.0 and scores["1:1"].kind == "bracket"
    # A previous-token head gets no bracket credit for "()" pairs (distance ≥ 2 only).
    assert scores["0:0"].bracket == 0.0
    assert set(scores["0:0"].as_dict()) == {
        "head", "prev_token", "current_token", "induction", "bracket", "class"}


def test_untrained_model_is_all_multigram(tok):
    torch.manual_seed(0)
    scores = head_scores(AttentionOnlyTransformer(CFG), tok, n_sequences=8)
    assert [s.head for s in scores] == ["0:0", "0:1", "1:0", "1:1"]
    assert all(s.kind == "multigram" for s in scores)
    assert all(0 <= s.prev_token < 0.3 for s in scores)


def test_without_tokenizer_bracket_is_nan():
    scores = head_scores(AttentionOnlyTransformer(CFG), None, n_sequences=4)
    assert all(np.isnan(s.bracket) for s in scores)


@pytest.mark.parametrize(
    "scores,expected",
    [((0.9, 0.0, 0.1, 0.0), "previous-token"), ((0.1, 0.5, 0.2, 0.0), "current-token"),
     ((0.3, 0.0, 0.6, 0.1), "induction"), ((0.0, 0.0, 0.1, 0.4), "bracket"),
     ((0.2, 0.2, 0.2, 0.2), "multigram")],
)
def test_classify_by_highest_score(scores, expected):
    assert classify(*scores) == expected
