"""``rllc tune``'s input errors: exit 2, one line naming the field, before Ray starts."""

import subprocess
import sys

import pytest

RLLC = [sys.executable, "-m", "rllc.cli.main"]


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*RLLC, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--step-size-range", "1e-2,1e-4", "search.step_size: step_size range is empty or inverted"),
    ("--localization-range", "5,5", "search.localization: localization range is empty"),
    ("--nbeta-range", "0,10", "search.nbeta: nbeta range needs finite values > 0"),
    ("--step-size-range", "1e-4", "--step-size-range must be LO,HI"),
    ("--localization-range", "0", "search.localization: localization needs a finite value > 0"),
    ("--localization-range", "1,2,3", "--localization-range must be LO,HI (two numbers) or one"),
    ("--algorithm", "random", "search.algorithm"),
])
def test_bad_search_flags_exit_2_naming_the_field(flag, value, message):
    proc = run("tune", "dln", "--widths", "5,4,5", "--true-rank", "2", flag, value)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_an_unknown_search_parameter_in_a_spec_is_named(tmp_path):
    spec = tmp_path / "tune.yaml"
    spec.write_text("name: t\ncheckpoints: nowhere\ncomponents: ['0:0']\n"
                    "search: {step_size: [1e-5, 1e-1], temperature: [1, 2]}\n")
    proc = run("tune", str(spec))
    assert proc.returncode == 2, proc.stderr
    assert "search.temperature: unknown parameter 'temperature'" in proc.stderr


def test_tune_dln_needs_its_problem():
    proc = run("tune", "dln", "--widths", "5,4,5")
    assert proc.returncode == 2 and "--true-rank" in proc.stderr
