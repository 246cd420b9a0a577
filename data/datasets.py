"""Named datasets and the training mix, as token arrays ``[n_sequences, n_ctx]``.

Built-in sources: ``code``, ``prose`` (text, see ``rllc.data.text``; sequences are
windows at seeded random offsets of the split's token stream) and ``induction``, ``dyck``,
``ngram`` (synthetic, see ``rllc.data.synthetic``; the eval split uses seeds that
training never draws). ``train`` is the model's training mix (``DataMix``). Anything else
is a user corpus URI (``rllc.data.user``). ``generated`` (text sampled from the checkpoint
being measured, ``rllc.models.generate``) is a dataset name too, but needs the model: the
checkpoint session makes it (``rllc.jobs.session``), not ``load_dataset``.

Every array is a pure function of (tokenizer, mix, n_ctx, split, n_sequences, seed).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tokenizers import Tokenizer

from . import synthetic
from .sampling import windows
from .text import Split, check_split, code_documents, prose_documents
from .tokenizer import N_SPECIAL, bracket_ids, encode_documents, fingerprint
from .user import is_uri, user_dataset

TEXT_SOURCES = ("code", "prose")
SYNTHETIC_SOURCES = ("induction", "dyck", "ngram")
SOURCES = TEXT_SOURCES + SYNTHETIC_SOURCES
DATASETS = ("train", *SOURCES)
#: Text sampled from the checkpoint itself; made by ``rllc.jobs.session``, which has the model.
GENERATED = "generated"
#: Every dataset name a spec or command accepts: ``DATASETS`` and ``generated``.
DATASET_NAMES = (*DATASETS, GENERATED)

_EVAL_STREAM = 0xE7A1  # seed-stream tag of eval-split synthetic data (never used in training)


class DataMix(BaseModel):
    """The training mix: source shares and the generators' settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "code": 0.2, "prose": 0.1, "induction": 0.35, "dyck": 0.1, "ngram": 0.25,
        },
        description="Share of each source in every batch (normalised to sum 1).",
    )
    code_max_bytes: int = Field(4_000_000, ge=1000, description="Bytes of stdlib code used.")
    prose_max_bytes: int = Field(2_000_000, ge=1000, description="Bytes of prose used.")
    induction_min_span: int = Field(4, ge=1, description="Shortest repeated span.")
    induction_max_span: int | None = Field(
        None, ge=1, description="Longest repeated span (default n_ctx // 2)."
    )
    induction_periodic: bool = Field(
        True, description="Repeat the span to the end of the sequence (period random per "
        "sequence) rather than copying it once: a denser induction signal.",
    )
    induction_vocab: int | None = Field(
        None, ge=2, description="Draw induction tokens from the first this many ordinary "
        "ids only (null: the whole vocabulary).",
    )
    dyck_max_depth: int = Field(8, ge=1, description="Deepest bracket nesting.")
    ngram_order: int = Field(3, ge=2, description="n of the random n-gram model.")
    ngram_branching: int = Field(4, ge=1, description="Successors per n-gram context.")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown source(s) {unknown}; valid sources: {', '.join(SOURCES)}")
        if any(not (w >= 0) for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"weights must be ≥ 0 with a positive sum, got {v}")
        return {k: float(w) for k, w in v.items() if w > 0}

    def counts(self, n: int) -> dict[str, int]:
        """Sequences per source in a batch of n: largest-remainder rounding of n·share."""
        total = sum(self.weights.values())
        exact = {k: n * w / total for k, w in self.weights.items()}
        counts = {k: int(x) for k, x in exact.items()}
        by_rest = sorted(exact, key=lambda k: (counts[k] - exact[k], k))
        for k in by_rest[: n - sum(counts.values())]:
            counts[k] += 1
        return counts


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


_STREAMS: dict[tuple[str, str, str, int], np.ndarray] = {}  # (source, tokenizer, split, bytes)


def text_stream(name: str, tokenizer: Tokenizer, split: Split, mix: DataMix) -> np.ndarray:
    """The split's documents of ``code`` or ``prose`` as one token stream (cached)."""
    max_bytes = mix.code_max_bytes if name == "code" else mix.prose_max_bytes
    key = (name, fingerprint(tokenizer), split, max_bytes)
    if key not in _STREAMS:
        docs = (code_documents if name == "code" else prose_documents)(split, max_bytes)
        if len(_STREAMS) >= 16:
            _STREAMS.pop(next(iter(_STREAMS)))
        _STREAMS[key] = encode_documents(tokenizer, docs)
    return _STREAMS[key]


def source_batch(
    name: str,
    tokenizer: Tokenizer,
    n: int,
    n_ctx: int,
    split: Split,
    seed: int,
    mix: DataMix | None = None,
) -> np.ndarray:
    """n sequences of one built-in source. int64[n, n_ctx]."""
    mix = mix or DataMix()
    split = check_split(split)
    if split == "eval":
        seed = _seed(seed, _EVAL_STREAM)
    vocab = tokenizer.get_vocab_size()
    if name in TEXT_SOURCES:
        return windows(text_stream(name, tokenizer, split, mix), n, n_ctx, seed)
    if name == "induction":
        top = vocab if mix.induction_vocab is None else min(vocab, N_SPECIAL + mix.induction_vocab)
        return synthetic.induction_sequences(
            n, n_ctx, top, seed, min_span=mix.induction_min_span,
            max_span=mix.induction_max_span, low=N_SPECIAL, periodic=mix.induction_periodic,
        )
    if name == "dyck":
        return synthetic.dyck_sequences(
            n, n_ctx, bracket_ids(tokenizer), seed, max_depth=mix.dyck_max_depth
        )
    if name == "ngram":
        return synthetic.ngram_sequences(
            n, n_ctx, vocab, seed, order=mix.ngram_order, branching=mix.ngram_branching,
            low=N_SPECIAL,
        )
    raise ValueError(f"unknown source {name!r}; valid sources: {', '.join(SOURCES)}")


def mix_batch(
    mix: DataMix, tokenizer: Tokenizer, n: int, n_ctx: int, split: Split, seed: int
) -> np.ndarray:
    """n sequences of the mix, ``mix.counts(n)`` from each source, rows shuffled."""
    parts = [
        source_batch(name, tokenizer, k, n_ctx, split, _seed(seed, i), mix)
        for i, (name, k) in enumerate(sorted(mix.counts(n).items()))
        if k > 0
    ]
    out = np.concatenate(parts)
    return out[np.random.default_rng(_seed(seed, 99)).permutation(n)]


def load_dataset(
    name_or_uri: str,
    tokenizer: Tokenizer,
    n_ctx: int,
    split: Split = "eval",
    n_sequences: int = 256,
    seed: int = 0,
    mix: DataMix | dict | None = None,
) -> torch.Tensor:
    """Token sequences ``LongTensor[n_sequences, n_ctx]`` of a named dataset or a URI.

    Names: ``train`` (the training mix ``mix``, default ``DataMix()``; pass the
    checkpoint's ``meta["data"]`` to get the model's own mix), ``code``, ``prose``,
    ``induction``, ``dyck``, ``ngram``. Other strings are user-corpus URIs: a text file,
    a ``.npy`` token array or a Zarr array, local or ``s3://`` (see ``rllc.data.user``).
    """
    if n_sequences < 1 or n_ctx < 2:
        raise ValueError(f"need n_sequences ≥ 1 and n_ctx ≥ 2, got {n_sequences}, {n_ctx}")
    split = check_split(split)
    mix = DataMix.model_validate(mix) if isinstance(mix, dict) else (mix or DataMix())
    if name_or_uri == GENERATED:
        raise ValueError(
            "dataset 'generated' is sampled from the checkpoint being measured, so it needs "
            "a model: it is made by a checkpoint session (rllc.jobs.session."
            "CheckpointSession.dataset), not by load_dataset"
        )
    if name_or_uri == "train":
        arr = mix_batch(mix, tokenizer, n_sequences, n_ctx, split, seed)
    elif name_or_uri in SOURCES:
        arr = source_batch(name_or_uri, tokenizer, n_sequences, n_ctx, split, seed, mix)
    elif not is_uri(name_or_uri):
        raise ValueError(
            f"unknown dataset {name_or_uri!r}; valid names: {', '.join(DATASET_NAMES)}, "
            "or a path / s3:// URI of a text file, .npy or Zarr token array"
        )
    else:
        arr = user_dataset(name_or_uri, tokenizer, n_ctx, split, n_sequences, seed)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))
