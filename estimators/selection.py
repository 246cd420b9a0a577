"""Weight selections: which numbers of a model the sampler moves (weight-refined LLC).

A selection maps parameter names to the flat indices of the entries that are sampled;
``None`` means the whole parameter. Every other number stays frozen at w*. Slices let one
attention head's rows of a fused QKV matrix be sampled while the rest of it stays fixed.
Selections compose with ``|`` (union), so a model-specific mapping (e.g. ``"1:7"`` →
rows of ``W_qkv`` and ``W_O``, in ``rllc.models``) only has to produce index sets.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn


class SelectionError(ValueError):
    """A selection names unknown parameters, indexes out of range, or selects nothing."""


@dataclass(frozen=True)
class WeightSelection:
    """Sampled entries per parameter: ``name → flat indices`` (``None`` = whole tensor).

    Indices are sorted, unique, int64 tensors on the CPU. Build with ``select_all``,
    ``select_parameters``, ``select_slices`` or ``WeightSelection.from_masks``; check against
    a model with ``validate``.
    """

    entries: Mapping[str, torch.Tensor | None]

    def __post_init__(self) -> None:
        if not self.entries:
            raise SelectionError("empty selection: no weights would be sampled")
        clean: dict[str, torch.Tensor | None] = {}
        for name, idx in self.entries.items():
            if idx is not None:
                idx = torch.as_tensor(idx, dtype=torch.long).flatten().unique(sorted=True)
                if idx.numel() == 0:
                    raise SelectionError(f"selection of parameter {name!r} is empty")
            clean[name] = idx
        object.__setattr__(self, "entries", dict(sorted(clean.items())))

    @classmethod
    def from_masks(cls, masks: Mapping[str, torch.Tensor]) -> WeightSelection:
        """From boolean masks shaped like the parameters (True = sampled)."""
        entries = {}
        for name, mask in masks.items():
            if mask.dtype != torch.bool:
                raise SelectionError(f"mask for {name!r} must be boolean, got {mask.dtype}")
            entries[name] = None if bool(mask.all()) else mask.flatten().nonzero().flatten()
        return cls(entries)

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def __or__(self, other: WeightSelection) -> WeightSelection:
        merged: dict[str, torch.Tensor | None] = dict(self.entries)
        for name, idx in other.entries.items():
            if name not in merged:
                merged[name] = idx
            elif merged[name] is None or idx is None:
                merged[name] = None
            else:
                merged[name] = torch.cat([merged[name], idx])
        return WeightSelection(merged)

    def validate(self, model: nn.Module) -> None:
        """Raise ``SelectionError`` if a name is unknown or an index is out of range."""
        params = dict(model.named_parameters())
        unknown = [n for n in self.entries if n not in params]
        if unknown:
            known = ", ".join(list(params)[:12]) + (", ..." if len(params) > 12 else "")
            raise SelectionError(
                f"selection names unknown parameter(s) {unknown}; the model has: {known}"
            )
        for name, idx in self.entries.items():
            numel = params[name].numel()
            if idx is not None and (int(idx.min()) < 0 or int(idx.max()) >= numel):
                raise SelectionError(
                    f"selection of {name!r} indexes outside its {numel} entries"
                )

    def size(self, model: nn.Module) -> int:
        """Number of sampled scalars (d of the refined posterior)."""
        params = dict(model.named_parameters())
        return sum(
            params[n].numel() if idx is None else idx.numel() for n, idx in self.entries.items()
        )

    def gather(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The selected entries of ``state`` (parameters by name), flattened in selection
        order: ``theta[d]``, the vector the samplers and curvature estimators move."""
        return torch.cat([_flat(state[n], idx) for n, idx in self.entries.items()])

    def scatter(self, state: Mapping[str, torch.Tensor],
                theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``state`` with the selected entries replaced by ``theta[d]`` (the inverse of
        ``gather``), out of place and differentiable in ``theta`` (also under
        ``torch.func`` transforms); every other entry stays as it is."""
        params = dict(state)
        sizes = [params[n].numel() if idx is None else idx.numel()
                 for n, idx in self.entries.items()]
        for (name, idx), part in zip(self.entries.items(), theta.split(sizes), strict=True):
            base = params[name]
            if idx is None:
                params[name] = part.view(base.shape)
            else:
                idx = idx.to(base.device)
                params[name] = base.reshape(-1).index_put((idx,), part).view(base.shape)
        return params

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Boolean masks shaped like each selected parameter."""
        params = dict(model.named_parameters())
        out = {}
        for name, idx in self.entries.items():
            p = params[name]
            if idx is None:
                out[name] = torch.ones_like(p, dtype=torch.bool, device="cpu")
            else:
                m = torch.zeros(p.numel(), dtype=torch.bool)
                m[idx] = True
                out[name] = m.view(p.shape)
        return out


def _flat(t: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    return t.reshape(-1) if idx is None else t.reshape(-1)[idx.to(t.device)]


def select_all(model: nn.Module) -> WeightSelection:
    """Every trainable parameter, whole: the unrefined LLC."""
    return WeightSelection({n: None for n, p in model.named_parameters() if p.requires_grad})


def select_parameters(model: nn.Module, patterns: Iterable[str]) -> WeightSelection:
    """Whole parameters whose names match any glob pattern (``"blocks.0.*"``, ``"*.bias"``).

    A pattern that matches nothing is an error: a typo must not silently shrink the
    selection.
    """
    names = [n for n, _ in model.named_parameters()]
    entries: dict[str, torch.Tensor | None] = {}
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise SelectionError(f"pattern {pattern!r} matches no parameter of the model")
        entries.update({n: None for n in hits})
    if not entries:
        raise SelectionError("empty selection: no patterns given")
    return WeightSelection(entries)


def select_slices(
    model: nn.Module, slices: Mapping[str, tuple[slice | int | torch.Tensor, ...]]
) -> WeightSelection:
    """Sub-blocks of parameters by numpy-style index tuples, e.g. rows 32:64 of a matrix:
    ``{"attn.W_qkv": (slice(32, 64),)}``."""
    params = dict(model.named_parameters())
    masks = {}
    for name, index in slices.items():
        if name not in params:
            raise SelectionError(f"selection names unknown parameter {name!r}")
        m = torch.zeros(params[name].shape, dtype=torch.bool)
        m[index] = True
        if not m.any():
            raise SelectionError(f"slice {index!r} of {name!r} selects nothing")
        masks[name] = m
    return WeightSelection.from_masks(masks)
