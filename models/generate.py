"""Text sampled from a model itself: the ``generated`` loss dataset.

The rLLC of a component on ``generated`` data measures the loss landscape on the
distribution the checkpoint itself puts out, rather than on a corpus: data on which the
model is, by construction, as good as it can be (its own samples), so that what λ̂ sees
is the geometry of what the model does, not of what it fails to fit. A sweep makes it
per checkpoint (``rllc.jobs.session.CheckpointSession.dataset("generated")``), caching
the tokens in the sweep's store so that a resumed sweep sees the same ones.

Sampling is deterministic for a fixed seed whatever the device: the model's logits are
turned into probabilities in float64 on the CPU and every draw uses one CPU
``torch.Generator``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rllc.data.tokenizer import N_SPECIAL

from .transformer import AttentionOnlyTransformer


def sample_sequences(
    model: AttentionOnlyTransformer,
    n: int,
    n_ctx: int,
    seed: int,
    temperature: float = 1.0,
    first: Tensor | None = None,
) -> Tensor:
    """``n`` sequences of ``n_ctx`` tokens sampled autoregressively from ``model``.

    Args:
        model: the model to sample from (its own weights, in eval mode while sampling;
            its training flag is restored afterwards).
        n: sequences, sampled as one batch.
        n_ctx: tokens per sequence, 2 ≤ n_ctx ≤ the model's context length.
        seed: seed of the CPU generator behind every draw (the same seed gives the same
            tokens, on any device, up to the float rounding of the logits).
        temperature: the logits are divided by it before the softmax (1: the model's own
            distribution; > 0).
        first: the opening tokens ``LongTensor[n]`` (or a prefix ``[n, k]``, k < n_ctx);
            default: one token per sequence drawn uniformly from the ordinary (non-special)
            token ids with the same generator.

    Returns:
        ``LongTensor[n, n_ctx]`` on the CPU.
    """
    cfg = model.cfg
    if n < 1:
        raise ValueError(f"n (sequences) must be ≥ 1, got {n}")
    if not 2 <= n_ctx <= cfg.n_ctx:
        raise ValueError(f"n_ctx must lie in [2, {cfg.n_ctx}] (the model's context length), "
                         f"got {n_ctx}")
    if not (temperature > 0 and temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    g = torch.Generator().manual_seed(int(seed))
    if first is None:
        if cfg.d_vocab <= N_SPECIAL:
            raise ValueError(f"the model's vocabulary ({cfg.d_vocab}) has no ordinary ids")
        prefix = torch.randint(N_SPECIAL, cfg.d_vocab, (n, 1), generator=g)
    else:
        prefix = torch.as_tensor(first, dtype=torch.long).cpu()
        prefix = prefix[:, None] if prefix.dim() == 1 else prefix
        if prefix.dim() != 2 or prefix.shape[0] != n or not 1 <= prefix.shape[1] < n_ctx:
            raise ValueError(f"first must have shape [{n}] or [{n}, k] with 1 ≤ k < {n_ctx}, "
                             f"got {list(prefix.shape)}")
        if int(prefix.min()) < 0 or int(prefix.max()) >= cfg.d_vocab:
            raise ValueError(f"first holds token ids outside [0, {cfg.d_vocab})")
    device = next(model.parameters()).device
    out = torch.empty(n, n_ctx, dtype=torch.long)
    out[:, : prefix.shape[1]] = prefix
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for t in range(prefix.shape[1], n_ctx):
                logits = model(out[:, :t].to(device))[:, -1]  # [n, d_vocab]
                probs = torch.softmax(logits.cpu().double() / temperature, dim=-1)
                out[:, t] = torch.multinomial(probs, 1, generator=g)[:, 0]
    finally:
        model.train(was_training)
    return out
