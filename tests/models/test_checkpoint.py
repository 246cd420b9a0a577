"""Checkpoints round-trip locally and on S3 (moto on loopback) and refuse tampering."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rllc.data.tokenizer import train_tokenizer
from rllc.models import AttentionOnlyTransformer, TransformerConfig
from rllc.models.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    step_of,
)
from rllc.store import files

CFG = TransformerConfig(n_layers=1, n_heads=2, d_model=8, d_head=4, n_ctx=8, d_vocab=260)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["hello world, hello (brackets) [and] {more}"] * 4, 260)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return AttentionOnlyTransformer(CFG)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_local_round_trip(tmp_path, model, tokenizer):
    run = str(tmp_path / "run")
    for step in (100, 0, 5):
        save_checkpoint(run, step, model, tokenizer, {"eval_loss": 1.5})
    ckpts = list_checkpoints(run)
    assert [step_of(c) for c in ckpts] == [0, 5, 100]
    loaded, tok, meta = load_checkpoint(ckpts[-1])
    assert _same(loaded, model) and loaded.cfg == CFG
    assert tok.to_str() == tokenizer.to_str()
    assert meta["step"] == 100 and meta["eval_loss"] == 1.5
    assert read_meta(ckpts[0])["step"] == 0


def test_tampered_weights_are_rejected(tmp_path, model, tokenizer):
    ckpt = save_checkpoint(str(tmp_path), 7, model, tokenizer)
    weights = Path(ckpt, "model.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256 .* modified or corrupted"):
        load_checkpoint(ckpt)


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "nope"))


@pytest.fixture
def s3(s3_bucket):
    """A run directory on the loopback S3 server (``tests/conftest.py``)."""
    return f"{s3_bucket}/runs/demo"


def test_s3_round_trip_and_tamper(s3, model, tokenizer):
    for step in (10, 2):
        save_checkpoint(s3, step, model, tokenizer)
    ckpts = list_checkpoints(s3)
    assert ckpts == [f"{s3}/ckpt-0000002", f"{s3}/ckpt-0000010"]
    loaded, _, meta = load_checkpoint(ckpts[1])
    assert _same(loaded, model) and meta["step"] == 10
    files.write_bytes(ckpts[1] + "/model.safetensors", b"not the weights")
    with pytest.raises(CheckpointError, match="modified or corrupted"):
        load_checkpoint(ckpts[1])
    with pytest.raises(FileNotFoundError):
        load_checkpoint(s3.replace("/demo", "/other") + "/ckpt-0000001")
