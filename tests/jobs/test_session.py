"""``CheckpointSession`` (``rllc.jobs.session``): a checkpoint of the tiny run sampled cell
by cell, as a sweep worker does, in plain torch (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from rllc.jobs.session import CheckpointSession, generated_seed
from rllc.jobs.spec import ComputeOptions, DataOptions, parse_spec
from rllc.kernels.precision import Precision


@pytest.fixture(scope="module")
def checkpoint(tiny_run) -> str:
    return tiny_run + "/ckpt-0000004"


def test_session_samples_a_layer_as_one_batch_in_either_precision(make_spec, checkpoint):
    """``sample_many``: a layer's heads in one fast-path batch, each head's traces as
    when sampled alone (rtol 1e-6: float reassociation only); other components on the
    general path. In bfloat16, L_n(w*) is taken in bfloat16 too and λ̂ stays within a
    few standard errors of float32's."""
    cfg = parse_spec(make_spec("s")).sampler.model_copy(update={"draws": 20})
    exact = CheckpointSession(checkpoint, DataOptions(**make_spec.DATA), device="cpu")
    many = exact.sample_many(["1:0", "1:1", "embed"], "dyck", cfg)
    assert list(many) == ["1:0", "1:1", "embed"]
    assert many["1:0"].extra["batch_heads"] == ["1:0", "1:1"]
    assert many["embed"].extra["path"] == "general"
    alone = exact.sample("1:1", "dyck", cfg)
    np.testing.assert_allclose(many["1:1"].loss, alone.loss, rtol=1e-6)
    assert alone.init_loss == many["1:1"].init_loss == many["embed"].init_loss  # cached once
    bf16 = CheckpointSession(checkpoint, DataOptions(**make_spec.DATA), device="cpu",
                             compute=ComputeOptions(precision="bfloat16"))
    assert bf16.compute.precision is Precision.BFLOAT16
    low = bf16.sample("1:1", "dyck", cfg)
    assert low.extra["precision"] == Precision.BFLOAT16
    assert low.init_loss != alone.init_loss
    assert abs(low.init_loss - alone.init_loss) < 1e-2 * alone.init_loss
    a, b = alone.llc(), low.llc()
    assert abs(a.llc_mean - b.llc_mean) <= 3 * np.hypot(a.llc_stderr, b.llc_stderr) + 0.05


def test_session_checks_the_context_length(checkpoint):
    with pytest.raises(ValueError, match=r"data.n_ctx \(4096\) exceeds the context length"):
        CheckpointSession(checkpoint, DataOptions(n_sequences=4, n_ctx=4096), device="cpu")
    session = CheckpointSession(checkpoint, DataOptions(n_sequences=4), device="cpu")
    assert session.step == 4
    tokens = session.dataset("dyck")
    assert tokens.shape == (4, session.model.cfg.n_ctx)
    assert session.dataset("dyck") is tokens  # drawn once


def test_generated_dataset_is_sampled_from_the_model_and_cached(checkpoint, tmp_path):
    """``dataset("generated")``: sequences sampled from the checkpoint itself, written once
    to the cache and read back, identical, by a fresh session (a resumed sweep)."""
    from pathlib import Path

    import torch

    from rllc.data import load_dataset
    from rllc.models.generate import sample_sequences

    cache = str(tmp_path / "cache" / "datasets")
    data = DataOptions(n_sequences=6, n_ctx=12, seed=2)
    first = CheckpointSession(checkpoint, data, device="cpu", cache=cache)
    tokens = first.dataset("generated")
    assert tokens.shape == (6, 12) and tokens.dtype == torch.long
    assert first.dataset("generated") is tokens  # drawn once per session
    path = first.generated_uri()
    assert path.startswith(cache) and path.endswith(f"generated-{first.generated_key()}.npy")
    assert np.array_equal(np.load(path), tokens.numpy())
    stamp = Path(path).stat().st_mtime_ns
    again = CheckpointSession(checkpoint, data, device="cpu", cache=cache)
    assert torch.equal(again.dataset("generated"), tokens)
    assert Path(path).stat().st_mtime_ns == stamp  # read, not written again
    # what the cache holds is what the session samples without one
    alone = CheckpointSession(checkpoint, data, device="cpu").dataset("generated")
    assert torch.equal(alone, tokens)
    assert torch.equal(tokens, sample_sequences(first.model, 6, 12, seed=generated_seed(2)))
    other = CheckpointSession(checkpoint, data.model_copy(update={"seed": 3}), device="cpu",
                              cache=cache)
    assert other.generated_uri() != path and not torch.equal(other.dataset("generated"),
                                                              tokens)
    with pytest.raises(ValueError, match="'generated' is sampled from the checkpoint"):
        load_dataset("generated", first.tokenizer, 12)
