"""The model side of the baselines beside the rLLC: a component's loss and next-token
log-probabilities as functions of its own weights, and head ablations.

Curvature and Fisher estimators (``rllc.estimators.curvature``, ``.fisher``) are generic:
they take ``theta[d] → L`` and ``theta[d] → log p[N, V]``. ``ComponentFunctions`` builds
those for a component of an attention-only transformer on a token subset, with every
other weight at w*. For a head ``"L:H"`` (or ``"L:*"``) nothing below layer L depends on
theta, so the residual stream entering layer L is computed once per token subset and
shared by all heads of the layer (``LayerPrefixes``); each function call then runs only
blocks L… and the unembedding. The forward is the model's own (explicit-softmax attention
under ``torch.func``), so Hessian-vector products (forward-over-reverse) and per-token
gradients go through it unchanged.

Ablation scores (``head_ablations``) replace one head's output z_h [batch, pos, d_head]
(before W_O) on the same subset:

    zero:      z_h ← 0
    mean:      z_h ← mean over the subset's sequences of z_h, per position
    resample:  z_h ← z_h of another sequence of the subset (a seeded derangement)

and score L(ablated) − L(clean), the mean next-token loss difference per sequence, with
its standard error over sequences (sd / √sequences).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from rllc.estimators import frozen_state

from .components import component_selection, parse_component
from .transformer import AttentionOnlyTransformer

#: The ablation kinds, in the order they are reported.
ABLATIONS = ("zero", "mean", "resample")


@dataclass(frozen=True)
class ComponentFunctions:
    """A component's weights w* as ``theta0[d]``, and functions of them on a token subset."""

    theta0: Tensor  # [d]
    loss: Callable[[Tensor], Tensor]  # theta[d] → mean next-token cross-entropy (scalar)
    logprobs: Callable[[Tensor], Tensor]  # theta[d] → log p[N, V], N = sequences·(T − 1)
    targets: Tensor  # [N] the observed next tokens
    tokens_per_sequence: int  # T − 1: logprobs' rows per sequence, in order


class LayerPrefixes:
    """Residual streams entering each layer for one token subset, computed on first use:
    the frozen prefix shared by every component of that layer."""

    def __init__(self, model: AttentionOnlyTransformer, tokens: Tensor) -> None:
        self.model, self.tokens = model, tokens
        self._resid: dict[int, Tensor] = {}

    def sequence(self, i: int) -> LayerPrefixes:
        """The prefixes of sequence ``i`` alone: slices of the streams computed so far."""
        one = LayerPrefixes(self.model, self.tokens[i : i + 1])
        one._resid = {k: v[i : i + 1] for k, v in self._resid.items()}
        return one

    def before(self, layer: int) -> Tensor | None:
        """The stream [B, T, D] entering ``layer`` (None for layer 0: the forward starts
        at the embedding)."""
        if layer == 0:
            return None
        if layer not in self._resid:
            self._resid[layer] = self.model.residual_before(layer, self.tokens)
        return self._resid[layer]


def start_layer(component: str) -> int:
    """The first layer whose weights ``component`` holds (0 unless a head or layer)."""
    comp = parse_component(component)
    return comp.layer if comp.kind in ("head", "layer") else 0


def component_functions(model: AttentionOnlyTransformer, component: str,
                        prefixes: LayerPrefixes) -> ComponentFunctions:
    """``ComponentFunctions`` of ``component`` on ``prefixes.tokens``."""
    selection = component_selection(model, component)
    frozen = frozen_state(model)
    tokens = prefixes.tokens
    layer = start_layer(component)
    resid = prefixes.before(layer)
    kwargs = {} if resid is None else {"start_layer": layer, "resid": resid}

    def logits(theta: Tensor) -> Tensor:  # [B, T − 1, V]
        out = functional_call(model, selection.scatter(frozen, theta), (tokens,), kwargs)
        return out[:, :-1]

    targets = tokens[:, 1:].reshape(-1)

    def loss(theta: Tensor) -> Tensor:
        z = logits(theta)
        return F.cross_entropy(z.reshape(-1, z.shape[-1]), targets)

    def logprobs(theta: Tensor) -> Tensor:
        z = logits(theta)
        return z.reshape(-1, z.shape[-1]).log_softmax(-1)

    return ComponentFunctions(selection.gather(frozen).detach(), loss, logprobs, targets,
                              int(tokens.shape[1]) - 1)


def sequence_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    """Mean next-token cross-entropy of each sequence: [B]."""
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    return ce.mean(1)


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (n ≥ 2): each sequence takes
    another sequence's activation."""
    if n < 2:
        raise ValueError("resample ablation needs at least 2 sequences")
    rng = np.random.default_rng(seed)
    shift = rng.permutation(n)  # a random cycle through all n: i → next in the order
    perm = np.empty(n, dtype=np.int64)
    perm[shift] = np.roll(shift, -1)
    return perm


@torch.no_grad()
def head_ablations(model: AttentionOnlyTransformer, layer: int, heads: list[int],
                   prefixes: LayerPrefixes, seed: int = 0) -> dict[int, dict[str, float]]:
    """Zero, mean and resample ablation scores of heads ``heads`` of ``layer`` on
    ``prefixes.tokens`` (module docstring): ``{head: {zero, zero_stderr, mean, …}}``.

    The prefix below ``layer`` and the clean run (with every head's z of the layer) are
    computed once for all the heads."""
    tokens = prefixes.tokens
    B = int(tokens.shape[0])
    resid = prefixes.before(layer)
    kwargs = {} if resid is None else {"start_layer": layer, "resid": resid}
    seen: dict[str, Tensor] = {}

    def capture(z: Tensor) -> Tensor:  # z [B, H, T, k]
        seen["z"] = z
        return z

    clean = sequence_losses(model(tokens, z_patches={layer: capture}, **kwargs), tokens)
    z_all = seen["z"]
    perm = torch.as_tensor(derangement(B, seed), device=tokens.device)
    out: dict[int, dict[str, float]] = {}
    for h in heads:
        replacements = {
            "zero": torch.zeros_like(z_all[:, h]),
            "mean": z_all[:, h].mean(0, keepdim=True).expand_as(z_all[:, h]),
            "resample": z_all[perm, h],
        }
        scores: dict[str, float] = {}
        for kind in ABLATIONS:
            def patch(z: Tensor, new: Tensor = replacements[kind], h: int = h) -> Tensor:
                z = z.clone()
                z[:, h] = new
                return z

            ablated = sequence_losses(model(tokens, z_patches={layer: patch}, **kwargs), tokens)
            diff = (ablated - clean).double()
            scores[kind] = float(diff.mean())
            scores[f"{kind}_stderr"] = float(diff.std() / np.sqrt(B)) if B > 1 else float("nan")
        out[h] = scores
    return out
