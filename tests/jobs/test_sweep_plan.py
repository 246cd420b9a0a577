"""The pure sweep plan (``rllc.jobs.sweep_plan``): ``resolve`` against the tiny run's
checkpoint metadata, ``SweepPlan.units`` and ``SweepPlan.summary``. No SGLD, no Ray."""

from __future__ import annotations

import json
import os

import pytest

from rllc.jobs.spec import SpecError, parse_spec
from rllc.jobs.sweep_plan import resolve


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"checkpoints": "/no/such/run/ckpt-*"}, "checkpoints: no checkpoint matches"),
        ({"checkpoints": ["/no/such/run"]}, "checkpoints: no checkpoint at '/no/such/run'"),
        ({"components": ["0:*", "2:0"]}, "components: unknown head '2:0'"),
        ({"components": ["blocks.9.*"]}, "components: "),
        ({"datasets": ["/no/such/tokens.npy"]}, "datasets: no such file"),
        ({"data": {"n_sequences": 32, "n_ctx": 4096}},
         "data.n_ctx: 4096 exceeds the context length"),
        ({"component_samplers": {"1:*": {"nbeta": 3}}},
         "component_samplers.1:*: pattern '1:*' is the first match of none"),
        ({"component_samplers": {"0:*": {"nbeta": 3}, "0:1": {"nbeta": 4}}},
         "component_samplers.0:1: pattern '0:1' is the first match of none"),
    ],
)
def test_resolve_errors_name_the_field(make_spec, change, message):
    with pytest.raises(SpecError) as err:
        resolve(parse_spec(make_spec("unused", **change)))
    assert str(err.value).startswith(message), str(err.value)


def test_summary_counts_cells_and_steps(make_spec, tiny_run, tmp_path):
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"best": make_spec.SAMPLER | {"draws": 7}, "objective": 0.1}))
    store = str(tmp_path / "store")
    p = resolve(parse_spec(make_spec(
        store, components=["0:*", "1:1", "all", "0:0"], datasets=["dyck", "train"],
        sampler=f"tuned:{tuned}",
    )))
    out = p.summary()
    assert [os.path.basename(c) for c in out["checkpoints"]] == [
        "ckpt-0000000", "ckpt-0000001", "ckpt-0000004"]
    assert out["steps"] == [0, 1, 4]
    assert out["components"] == ["0:0", "0:1", "1:1", "all"]  # 0:* split, 0:0 once
    assert out["cells"] == p.cells == 3 * 4 * 2 * 2
    assert out["sgld_steps"] == out["cells"] * 2 * 7 * 1  # cells × chains × draws × spd
    assert (out["chains"], out["draws"], out["steps_per_draw"]) == (2, 7, 1)
    # heads 0:0 and 0:1 share a unit per (checkpoint, dataset, seed); 1:1 and all alone
    assert out["units"] == 3 * 2 * 2 * 3
    assert out["estimated_seconds"] is None  # the pure plan times nothing
    assert (out["sweep"], out["store"]) == ("tiny", store)
    # A run directory expands to the same checkpoints; expand_layers=False keeps "0:*".
    same = resolve(parse_spec(make_spec("s", checkpoints=[tiny_run], expand_layers=False)))
    assert list(same.grid.checkpoints) == out["checkpoints"]
    assert same.grid.components == ("0:*",)


def test_relative_paths_become_absolute(make_spec, tiny_run, tmp_path, monkeypatch):
    """Ray workers need not share the driver's working directory."""
    monkeypatch.chdir(tiny_run)
    p = resolve(parse_spec(make_spec("store", checkpoints="ckpt-*")))
    assert p.store == os.path.join(tiny_run, "store")
    assert all(c.startswith(tiny_run + os.sep) for c in p.grid.checkpoints)


def test_units_batch_a_layers_heads(make_spec, tiny_run):
    """Heads of one layer sharing checkpoint, dataset and seed form one unit; whole-layer
    or named components stay cells of their own; batch_heads=False makes every cell one."""
    spec = make_spec("s", components=["0:*", "1:1", "all"], seeds=[0],
                     checkpoints=[tiny_run + "/ckpt-0000004"], datasets=["dyck", "train"])
    p = resolve(parse_spec(spec))
    units = p.units(p.grid.cells())
    assert sorted(len(u) for u in units) == [1, 1, 1, 1, 2, 2]
    assert sorted(tuple(k.component for k in u) for u in units if len(u) == 2) == [
        ("0:0", "0:1")] * 2
    assert all(len({(k.checkpoint, k.dataset, k.seed) for k in u}) == 1 for u in units)
    assert sorted(k for u in units for k in u) == sorted(p.grid.cells())
    single = resolve(parse_spec(spec | {"compute": {"batch_heads": False}}))
    assert all(len(u) == 1 for u in single.units(single.grid.cells()))
    kept = resolve(parse_spec(spec | {"expand_layers": False}))
    kept_units = kept.units(kept.grid.cells())
    assert len(kept_units) == 6 and all(len(u) == 1 for u in kept_units)


def test_units_split_heads_whose_sampler_settings_differ(make_spec, tiny_run):
    """component_samplers: a cell's config is the first matching pattern's; heads of one
    layer with different settings are sampled in different units, heads with the same
    ones (even under two patterns) in one."""
    spec = make_spec("s", components=["0:*", "1:*"], seeds=[0],
                     checkpoints=[tiny_run + "/ckpt-0000004"],
                     component_samplers={"0:1": {"step_size": 3e-4}, "1:0": {"nbeta": 5},
                                         "1:*": {"nbeta": 5}})
    p = resolve(parse_spec(spec))
    units = sorted(tuple(k.component for k in u) for u in p.units(p.grid.cells()))
    assert units == [("0:0",), ("0:1",), ("1:0", "1:1")]
    assert p.cell_config(3, "0:1") == p.config.model_copy(update={"step_size": 3e-4,
                                                                  "seed": 3})
    assert p.cell_config(3, "1:1").nbeta == 5 and p.cell_config(3, "0:0").nbeta == 10
    assert p.cell_config(3) == p.config.model_copy(update={"seed": 3})
