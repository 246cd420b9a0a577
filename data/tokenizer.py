"""Byte-level BPE tokenizer (HF ``tokenizers``) trained on the text corpora.

Id 0 is the special ``<|endoftext|>`` token that separates documents; ids 1..256 are the
byte alphabet, so any text (and any single bracket character) encodes. A tokenizer is
saved with each checkpoint as its JSON string (``Tokenizer.to_str()``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
N_SPECIAL = 1  # ids below this never appear in synthetic data


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Tokenizer:
    """Train a byte-level BPE with ``vocab_size`` tokens (≥ 257: special + 256 bytes)."""
    if vocab_size < 257 + N_SPECIAL - 1:
        raise ValueError(f"vocab_size must be ≥ 257 (1 special + 256 bytes), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer_from_json(text: str) -> Tokenizer:
    return Tokenizer.from_str(text)


def fingerprint(tok: Tokenizer) -> str:
    """SHA-256 (hex, 16 chars) of the tokenizer's JSON: a cache key."""
    return _fingerprint_of(tok.to_str())


@functools.lru_cache(maxsize=64)
def _fingerprint_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_documents(tok: Tokenizer, docs: Iterable[str]) -> np.ndarray:
    """One token stream: each document's ids followed by ``<|endoftext|>``. int32[n_tokens]."""
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(list(docs), add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eot)
    return np.asarray(ids, dtype=np.int32)


def bracket_ids(tok: Tokenizer, pairs: str = "()[]{}") -> list[tuple[int, int]]:
    """Token ids of single bracket characters as (open, close) pairs."""
    out = []
    for o, c in zip(pairs[::2], pairs[1::2], strict=True):
        ids = (tok.token_to_id(o), tok.token_to_id(c))
        if None in ids:
            raise ValueError(f"tokenizer has no single-character token for {o!r} or {c!r}")
        out.append(ids)
    return out
