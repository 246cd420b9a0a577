"""User corpora from S3 (moto on loopback): a text file, ``.npy`` and Zarr token arrays read
through ``rllc.data.load_dataset("s3://…")`` give exactly what the local copies give."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import zarr

from rllc.data import load_dataset, train_tokenizer
from rllc.store import files

TEXT = "def f(x):\n    return (x + 1) * [2]  # a comment, some prose\n" * 200
STREAM = (np.arange(4000, dtype=np.int32) * 7) % 250
ROWS = (np.arange(50 * 16).reshape(50, 16) % 250).astype(np.int64)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([TEXT], 300)


def _npy(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _zarr(target: str, arr: np.ndarray) -> None:
    z = zarr.create_array(store=target, shape=arr.shape, dtype=arr.dtype,
                          storage_options=files.storage_options(target))
    z[...] = arr


@pytest.fixture
def corpora(s3_bucket, tmp_path) -> dict[str, tuple[str, str]]:
    """Each corpus twice, ``(s3 URI, local path)``."""
    out = {}
    for name, data in (("corpus.txt", TEXT.encode()), ("stream.npy", _npy(STREAM)),
                       ("rows.npy", _npy(ROWS))):
        out[name] = (f"{s3_bucket}/corpora/{name}", str(tmp_path / name))
        for uri in out[name]:
            files.write_bytes(uri, data)
    for name, arr in (("stream.zarr", STREAM), ("rows.zarr", ROWS)):
        out[name] = (f"{s3_bucket}/corpora/{name}", str(tmp_path / name))
        for uri in out[name]:
            _zarr(uri, arr)
    return out


@pytest.mark.parametrize("name", ["corpus.txt", "stream.npy", "rows.npy", "stream.zarr",
                                  "rows.zarr"])
@pytest.mark.parametrize("split", ["train", "eval"])
def test_s3_corpus_equals_local(tok, corpora, name, split):
    remote, local = corpora[name]
    x = load_dataset(remote, tok, n_ctx=16, split=split, n_sequences=5, seed=3)
    assert x.shape == (5, 16) and x.dtype == torch.long
    assert torch.equal(x, load_dataset(local, tok, n_ctx=16, split=split, n_sequences=5, seed=3))
    if name.startswith("stream"):  # contiguous windows of the stream
        assert ((x[:, 1:] - x[:, :-1]) % 250 == 7).all()
    if name.startswith("rows"):  # whole rows, of the split's rows only
        picked = {int(np.flatnonzero((r.numpy() == ROWS).all(1))[0]) for r in x}
        assert all((i % 10 == 9) == (split == "eval") for i in picked)


def test_zarr_scheme_prefix(tok, corpora):
    remote, _ = corpora["stream.zarr"]
    a = load_dataset(remote, tok, 16, "train", 3, 0)
    assert torch.equal(a, load_dataset("zarr://" + remote, tok, 16, "train", 3, 0))


@pytest.mark.parametrize("name", ["missing.txt", "missing.npy", "missing.zarr"])
def test_missing_s3_corpus_is_file_not_found(tok, s3_bucket, name):
    uri = f"{s3_bucket}/corpora/{name}"
    with pytest.raises(FileNotFoundError, match=re.escape(uri)):
        load_dataset(uri, tok, 16)


def test_missing_local_zarr_is_file_not_found(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such Zarr array"):
        load_dataset(str(tmp_path / "nope.zarr"), tok, 16)
