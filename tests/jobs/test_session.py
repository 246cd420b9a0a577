"""``CheckpointSession`` (``rllc.jobs.session``): a checkpoint of the tiny run sampled cell
by cell, as a sweep worker does, in plain torch (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from rllc.jobs.session import CheckpointSession
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
