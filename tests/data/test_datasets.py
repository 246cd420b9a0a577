"""Named datasets, the training mix, fixed splits and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rllc.data import DATASETS, DataMix, load_dataset, train_tokenizer
from rllc.data.text import code_documents, prose_documents, split_of

MIX = DataMix(code_max_bytes=60_000, prose_max_bytes=30_000)


@pytest.fixture(scope="module")
def tok():
    docs = code_documents("train", MIX.code_max_bytes) + prose_documents("train", MIX.prose_max_bytes)
    return train_tokenizer(docs, 300)


def test_splits_are_fixed_and_disjoint():
    assert split_of("a.py") == split_of("a.py")
    names = [f"file{i}.py" for i in range(2000)]
    share = sum(split_of(n) == "eval" for n in names) / len(names)
    assert 0.05 < share < 0.15
    train, ev = set(code_documents("train", 200_000)), set(code_documents("eval", 200_000))
    assert train and ev and not {d for d in train & ev if len(d) > 1000}  # only trivial files coincide
    assert prose_documents("eval", 100_000)


@pytest.mark.parametrize("name", DATASETS)
def test_every_named_dataset(tok, name):
    x = load_dataset(name, tok, n_ctx=16, split="eval", n_sequences=8, seed=1, mix=MIX)
    assert x.shape == (8, 16) and x.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) < tok.get_vocab_size()
    again = load_dataset(name, tok, n_ctx=16, split="eval", n_sequences=8, seed=1, mix=MIX)
    assert torch.equal(x, again)
    train = load_dataset(name, tok, n_ctx=16, split="train", n_sequences=8, seed=1, mix=MIX)
    assert not torch.equal(x, train)


def test_mix_counts_follow_weights():
    mix = DataMix(weights={"code": 1, "induction": 2, "dyck": 1})
    assert mix.counts(8) == {"code": 2, "induction": 4, "dyck": 2}
    assert sum(DataMix().counts(31).values()) == 31


def test_bad_names_list_valid_ones(tok):
    with pytest.raises(ValueError, match=r"unknown dataset .wikitext.*train, code, prose"):
        load_dataset("wikitext", tok, 16)
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("code", tok, 16, split="test")
    with pytest.raises(ValueError, match="unknown source"):
        DataMix(weights={"pile": 1.0})


def test_user_corpora(tok, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("def f(x):\n    return (x + 1) * [2]\n" * 200)
    x = load_dataset(str(text), tok, n_ctx=16, split="train", n_sequences=4, seed=0)
    assert x.shape == (4, 16)
    arr = np.arange(4000, dtype=np.int32) % 300
    np.save(tmp_path / "tokens.npy", arr)
    y = load_dataset(str(tmp_path / "tokens.npy"), tok, 16, "eval", 3, 0)
    assert y.shape == (3, 16) and ((y[:, 1:] - y[:, :-1]) % 300 == 1).all()  # contiguous windows
    rows = np.arange(50 * 16).reshape(50, 16) % 300
    np.save(tmp_path / "rows.npy", rows)
    z = load_dataset(str(tmp_path / "rows.npy"), tok, 16, "train", 5, 0)
    assert all(any(torch.equal(r, torch.from_numpy(q)) for q in rows) for r in z)
    import zarr

    z = zarr.create_array(store=str(tmp_path / "tokens.zarr"), shape=(2000,), dtype="int32")
    z[:] = np.arange(2000) % 300
    w = load_dataset(str(tmp_path / "tokens.zarr"), tok, 16, "train", 3, 0)
    assert w.shape == (3, 16) and ((w[:, 1:] - w[:, :-1]) % 300 == 1).all()
    with pytest.raises(FileNotFoundError):
        load_dataset(str(tmp_path / "missing.txt"), tok, 16)
    bad = np.full(100, 999)
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        load_dataset(str(tmp_path / "bad.npy"), tok, 16)
