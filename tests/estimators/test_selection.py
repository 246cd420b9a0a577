import pytest
import torch

from rllc.estimators import (
    SelectionError,
    WeightSelection,
    select_all,
    select_parameters,
    select_slices,
)


def test_select_all_covers_every_parameter(mlp_problem):
    model, _ = mlp_problem
    sel = select_all(model)
    assert sel.names == sorted(n for n, _ in model.named_parameters())
    assert sel.size(model) == sum(p.numel() for p in model.parameters())


def test_patterns_and_unknown_pattern(mlp_problem):
    model, _ = mlp_problem
    assert select_parameters(model, ["*.bias"]).names == ["fc1.bias", "fc2.bias"]
    with pytest.raises(SelectionError, match="matches no parameter"):
        select_parameters(model, ["fc3.*"])


def test_slices_become_flat_indices(mlp_problem):
    model, _ = mlp_problem
    sel = select_slices(model, {"fc1.weight": (slice(1, 3),)})  # rows 1-2 of a [4, 3] matrix
    assert sel.entries["fc1.weight"].tolist() == [3, 4, 5, 6, 7, 8]
    assert sel.masks(model)["fc1.weight"].sum() == 6


def test_union_merges_indices():
    a = WeightSelection({"w": torch.tensor([0, 2])})
    b = WeightSelection({"w": torch.tensor([2, 5]), "v": None})
    u = a | b
    assert u.entries["w"].tolist() == [0, 2, 5]
    assert u.entries["v"] is None


def test_empty_and_unknown_selections_are_errors(mlp_problem):
    model, _ = mlp_problem
    with pytest.raises(SelectionError, match="empty"):
        WeightSelection({})
    with pytest.raises(SelectionError, match="empty"):
        WeightSelection({"fc1.weight": torch.tensor([], dtype=torch.long)})
    with pytest.raises(SelectionError, match="unknown parameter"):
        WeightSelection({"nope": None}).validate(model)
    with pytest.raises(SelectionError, match="outside"):
        WeightSelection({"fc1.bias": torch.tensor([4])}).validate(model)
