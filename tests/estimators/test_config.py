import math

import pytest
from pydantic import ValidationError

from rllc.estimators import SGLDConfig


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("step_size", 0.0, "step_size"),
        ("step_size", -1e-3, "step_size"),
        ("step_size", math.nan, "step_size"),
        ("step_size", math.inf, "step_size"),
        ("localization", -1.0, "localization"),
        ("nbeta", 0.0, "nbeta"),
        ("chains", 0, "chains"),
        ("draws", 0, "draws"),
        ("batch_size", 0, "batch_size"),
        ("preconditioner", "adam", "preconditioner"),
        ("burnin", -1, "burnin"),
    ],
)
def test_bad_values_name_the_field(field, value, fragment):
    with pytest.raises(ValidationError) as err:
        SGLDConfig(**{field: value})
    assert fragment in str(err.value)


def test_burnin_must_leave_draws():
    with pytest.raises(ValidationError, match="burnin"):
        SGLDConfig(draws=10, burnin=10)


def test_unknown_field_is_rejected():
    with pytest.raises(ValidationError, match="stepsize"):
        SGLDConfig(stepsize=1e-3)


def test_nbeta_default_and_theory_value():
    assert SGLDConfig().resolve_nbeta(1000) == 30.0  # the paper's constant
    assert SGLDConfig(nbeta=None).resolve_nbeta(1000) == pytest.approx(1000 / math.log(1000))


def test_config_is_frozen():
    cfg = SGLDConfig()
    with pytest.raises(ValidationError):
        cfg.step_size = 1.0
