"""Sweep spec validation (``rllc.jobs.spec``): pure, no checkpoints read, no Ray."""

from __future__ import annotations

import json

import pytest

from rllc.jobs.spec import SpecError, load_spec, parse_spec
from rllc.kernels.precision import Precision

SAMPLER = {"chains": 2, "draws": 10, "nbeta": 10.0, "step_size": 1e-4}


def spec(**fields) -> dict:
    """A valid spec; parse_spec reads no checkpoint, so the paths need not exist."""
    return {
        "name": "tiny", "checkpoints": "unused/ckpt-*", "components": ["0:*"],
        "datasets": ["dyck"], "seeds": [0, 1], "sampler": SAMPLER, "store": "unused",
    } | fields


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sampler": SAMPLER | {"step_size": -1}}, "sampler.step_size: step_size (ε) must be"),
        ({"sampler": SAMPLER | {"burnin": 10}}, "sampler: burnin (10) must be smaller"),
        ({"sampler": "tuned:/no/such.json"}, "sampler: tuned sampler file not found"),
        ({"sampler": "fast"}, "sampler: expected a mapping of SGLD settings"),
        ({"name": "no spaces"}, "name: sweep id must be letters"),
        ({"components": ["1:x"]}, "components: malformed component '1:x'"),
        ({"components": []}, "components: List should have at least 1 item"),
        ({"datasets": ["nope"]}, "datasets: unknown dataset 'nope'"),
        ({"seeds": [0, 0]}, "seeds: duplicate seeds: 0"),
        ({"resources": {"max_workers": 0}}, "resources.max_workers: Input should be greater"),
        ({"resources": {"custom": {"GPU": 1}}}, "resources.custom: custom resources need"),
        ({"data": {"n_sequences": 0}}, "data.n_sequences: Input should be greater"),
        ({"compute": {"precision": "fp16"}}, "compute.precision: Input should be 'float32'"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"metrics": ["llc", "hessian"]}, "metrics: unknown metric 'hessian'; known metrics"),
        ({"metrics": []}, "metrics: metrics is empty"),
        ({"baselines": {"rank_tol": 2}}, "baselines.rank_tol: rank_tol must lie in (0, 1)"),
        ({"component_samplers": {"1:*": {"chains": 8}}},
         "component_samplers.1:*: only step_size, localization, nbeta may differ per "
         "component, not chains"),
        ({"component_samplers": {"1:*": {"step_size": 0}}},
         "component_samplers.1:*.step_size: step_size (ε) must be a finite number > 0"),
        ({"component_samplers": {"1:*": {"nbeta": -1}}},
         "component_samplers.1:*.nbeta: nbeta (nβ) must be"),
        ({"component_samplers": {"1:*": "fast"}},
         "component_samplers.1:*: expected a mapping of step_size, localization, nbeta"),
        ({"component_samplers": {"1:*": "tuned:/no/such.json"}},
         "component_samplers.1:*: tuned sampler file not found"),
        ({"component_samplers": ["1:*"]}, "component_samplers: Input should be a valid dict"),
    ],
)
def test_spec_errors_name_the_field(change, message):
    with pytest.raises(SpecError) as err:
        parse_spec(spec(**change))
    assert str(err.value).startswith(message), str(err.value)
    assert err.value.field == message.split(": ")[0]


def test_defaults_and_precision_type():
    parsed = parse_spec(spec(checkpoints="one/ckpt-0000001"))
    assert parsed.checkpoints == ["one/ckpt-0000001"]  # one string is a list of one
    assert parsed.compute.precision is Precision.FLOAT32 and parsed.compute.batch_heads
    low = parse_spec(spec(compute={"precision": "bfloat16"}))
    assert low.compute.precision is Precision.BFLOAT16
    assert low.model_dump(mode="json")["compute"]["precision"] == "bfloat16"


def test_tuned_sampler_reads_a_tune_result(tmp_path):
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"best": SAMPLER | {"draws": 7}, "objective": 0.1}))
    assert parse_spec(spec(sampler=f"tuned:{tuned}")).sampler.draws == 7
    tuned.write_text(json.dumps(SAMPLER | {"draws": 5}))  # the config itself
    assert parse_spec(spec(sampler=f"tuned:{tuned}")).sampler.draws == 5
    tuned.write_text("[1, 2]")
    with pytest.raises(SpecError, match=r"sampler: tuned sampler file .* does not hold"):
        parse_spec(spec(sampler=f"tuned:{tuned}"))


def test_load_spec_files(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec()))  # JSON is YAML
    assert load_spec(path).name == "tiny"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"spec: .* is not valid YAML or JSON"):
        load_spec(path)
    path.write_text("- a list\n")
    with pytest.raises(SpecError, match="spec: expected a mapping of sweep fields, got list"):
        load_spec(path)
    with pytest.raises(FileNotFoundError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")


def test_generated_dataset_is_a_dataset_name():
    assert parse_spec(spec(datasets=["generated", "dyck"])).datasets == ["generated", "dyck"]
    with pytest.raises(SpecError, match=r"datasets: unknown dataset 'generate'; valid names: "
                       r".*ngram, generated"):
        parse_spec(spec(datasets=["generate"]))


def test_component_samplers_first_matching_pattern_wins(tmp_path):
    """ε, γ, nβ per component pattern (fnmatch, mapping order); tuned: takes only those
    three fields of the tuned config; other cells keep the sweep's sampler."""
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"best": SAMPLER | {"step_size": 5e-4, "localization": 50.0,
                                                    "nbeta": 7.0, "draws": 99}}))
    parsed = parse_spec(spec(components=["0:*", "1:*", "all"], component_samplers={
        "0:1": {"nbeta": 3},
        "0:*": {"step_size": 3e-3, "localization": 300},
        "1:*": f"tuned:{tuned}",
    }))
    base = parsed.sampler
    assert parsed.sampler_for("0:1") == base.model_copy(update={"nbeta": 3.0})
    assert parsed.sampler_for("0:0") == base.model_copy(update={"step_size": 3e-3,
                                                               "localization": 300.0})
    assert parsed.sampler_for("1:0") == base.model_copy(update={
        "step_size": 5e-4, "localization": 50.0, "nbeta": 7.0})  # not draws
    assert parsed.sampler_for("all") == parsed.sampler_for(None) == base
    assert parsed.component_pattern("1:*") == "1:*" and parsed.component_pattern("all") is None
    assert list(parsed.model_dump(mode="json")["component_samplers"]) == ["0:1", "0:*", "1:*"]
    assert parse_spec(spec()).component_samplers == {}
