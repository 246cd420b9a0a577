"""``rllc.models.generate.sample_sequences``: text sampled from a model itself (the
``generated`` dataset)."""

from __future__ import annotations

import pytest
import torch

from rllc.data.tokenizer import N_SPECIAL
from rllc.models.checkpoint import load_checkpoint
from rllc.models.generate import sample_sequences
from rllc.models.transformer import AttentionOnlyTransformer, TransformerConfig, lm_loss


@pytest.fixture(scope="module")
def model(tiny_run) -> AttentionOnlyTransformer:
    return load_checkpoint(tiny_run + "/ckpt-0000004", "cpu")[0]


def test_seeded_shape_dtype_and_range(model):
    x = sample_sequences(model, 6, 12, seed=3)
    assert x.shape == (6, 12) and x.dtype == torch.long and x.device.type == "cpu"
    assert int(x.min()) >= 0 and int(x.max()) < model.cfg.d_vocab
    assert int(x[:, 0].min()) >= N_SPECIAL  # the opening token is an ordinary id
    assert torch.equal(x, sample_sequences(model, 6, 12, seed=3))
    assert not torch.equal(x, sample_sequences(model, 6, 12, seed=4))
    first = torch.tensor([5, 6, 7, 8, 9, 10])
    y = sample_sequences(model, 6, 12, seed=3, first=first)
    assert torch.equal(y[:, 0], first)
    with pytest.raises(ValueError, match=r"n_ctx must lie in \[2, 32\]"):
        sample_sequences(model, 2, 33, seed=0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        sample_sequences(model, 2, 8, seed=0, temperature=0.0)
    with pytest.raises(ValueError, match=r"first must have shape \[2\]"):
        sample_sequences(model, 2, 8, seed=0, first=torch.tensor([1, 2, 3]))


def test_restores_the_training_flag(model):
    model.train()
    sample_sequences(model, 2, 4, seed=0)
    assert model.training
    model.eval()
    sample_sequences(model, 2, 4, seed=0)
    assert not model.training


def test_samples_the_model_itself():
    """A tiny model trained on "next token = this token + 1 (mod V)" puts out that
    pattern; its samples have a far lower loss under it than uniform-random tokens."""
    torch.manual_seed(0)
    v, n_ctx = 12, 10
    net = AttentionOnlyTransformer(TransformerConfig(n_layers=1, n_heads=2, d_model=32,
                                                     d_head=8, n_ctx=n_ctx, d_vocab=v))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        start = torch.randint(N_SPECIAL, v, (32, 1), generator=g)
        batch = (start + torch.arange(n_ctx)) % v
        opt.zero_grad()
        lm_loss(net(batch), batch).backward()
        opt.step()
    x = sample_sequences(net, 64, n_ctx, seed=0)
    follows = (x[:, 1:] == (x[:, :-1] + 1) % v).float().mean()
    assert follows > 0.9
    uniform = torch.randint(N_SPECIAL, v, (64, n_ctx), generator=g)
    with torch.no_grad():
        own, rand = float(lm_loss(net(x), x)), float(lm_loss(net(uniform), uniform))
    assert own < 0.5 * rand, (own, rand)
    cold = sample_sequences(net, 64, n_ctx, seed=0, temperature=0.05)  # nearly greedy
    assert (cold[:, 1:] == (cold[:, :-1] + 1) % v).all()
