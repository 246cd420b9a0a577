"""User corpora by URI: text files, ``.npy`` token arrays and Zarr token arrays.

A URI is a local path (optionally ``file://``) or ``s3://bucket/key`` (read through
``rllc.store.files``: endpoint and credentials from the usual AWS variables). By form:

- ``*.npy``: int array, either a 1-D token stream or 2-D ``[rows, length]``;
- ``*.zarr`` (or ``zarr://…``): a Zarr array, same shapes as ``.npy``;
- anything else: UTF-8 text, tokenized with the model's tokenizer.

Fixed splits: a stream's first 90% is ``train`` and its last 10% ``eval``; of 2-D arrays
with rows of exactly ``n_ctx`` tokens, rows 9, 19, 29, … are ``eval``. Other 2-D arrays
are read as one stream, row after row. Sequences are seeded draws from the split.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from rllc.store import files

from .sampling import windows
from .text import Split, check_split
from .tokenizer import encode_documents


def is_uri(text: str) -> bool:
    """Whether ``text`` looks like a path or URI rather than a dataset name."""
    return (
        text.startswith(("s3://", "file://", "zarr://"))
        or "/" in text or "." in text or os.sep in text or Path(text).exists()
    )


def _is_zarr(uri: str) -> bool:
    return uri.startswith("zarr://") or uri.rstrip("/").endswith(".zarr")


def _load_array(uri: str) -> np.ndarray:
    if _is_zarr(uri):
        import zarr

        target = uri.removeprefix("zarr://")
        if not files.is_remote(target):
            target = files.local_path(target)
        try:
            array = zarr.open_array(
                target, mode="r", storage_options=files.storage_options(target)
            )
        except FileNotFoundError as err:  # zarr's ArrayNotFoundError is one
            raise FileNotFoundError(f"no such Zarr array: {target}") from err
        return np.asarray(array[...])
    return np.load(io.BytesIO(files.read_bytes(uri)), allow_pickle=False)


def user_tokens(uri: str, tokenizer: Tokenizer, n_ctx: int, split: Split) -> np.ndarray:
    """The split of a user corpus: a 1-D stream, or 2-D rows of exactly n_ctx tokens."""
    split = check_split(split)
    uri = uri.removeprefix("file://")
    if uri.endswith(".npy") or _is_zarr(uri):
        arr = _load_array(uri)
        if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"{uri}: expected a 1-D or 2-D integer token array, got {arr.dtype} {arr.shape}"
            )
        vocab = tokenizer.get_vocab_size()
        if arr.size and (arr.min() < 0 or arr.max() >= vocab):
            raise ValueError(
                f"{uri}: token ids outside the vocabulary 0..{vocab - 1} "
                f"(found {arr.min()}..{arr.max()})"
            )
        if arr.ndim == 2 and arr.shape[1] == n_ctx:
            is_eval = np.arange(arr.shape[0]) % 10 == 9
            return arr[is_eval if split == "eval" else ~is_eval].astype(np.int64)
        stream = arr.reshape(-1)
    else:
        text = files.read_bytes(uri).decode("utf-8", errors="replace")
        stream = encode_documents(tokenizer, [text])
    cut = int(len(stream) * 0.9)
    return (stream[:cut] if split == "train" else stream[cut:]).astype(np.int64)


def user_dataset(
    uri: str, tokenizer: Tokenizer, n_ctx: int, split: Split, n_sequences: int, seed: int
) -> np.ndarray:
    """``n_sequences`` seeded sequences of n_ctx tokens from a user corpus' split."""
    data = user_tokens(uri, tokenizer, n_ctx, split)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x05E2]))
    if data.ndim == 2:
        if len(data) == 0:
            raise ValueError(f"{uri}: the {split} split has no rows")
        return data[rng.integers(0, len(data), size=n_sequences)]
    if data.size < n_ctx:
        raise ValueError(
            f"{uri}: the {split} split has {data.size} tokens, fewer than n_ctx={n_ctx}"
        )
    return windows(data, n_sequences, n_ctx, int(rng.integers(2**62)))
