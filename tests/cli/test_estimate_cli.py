import json
import subprocess
import sys

import pytest

RLLC = [sys.executable, "-m", "rllc.cli.main"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RLLC, *args], capture_output=True, text=True, timeout=300)


#: λ̂ − λ of (4, 3, 8), r = 1 with the default DLN sampler: 8.728 ± 0.039 against λ = 8.5
#: (tests/estimators/test_dln.py's CASES, where it is measured).
BIAS_4_3_8_R1 = 8.728 - 8.5


def test_estimate_dln_json_is_the_last_line_and_near_the_exact_llc():
    """A shorter run than the validation's (16 chains × 200 kept draws, ≈ 3 s), with the
    rest of the default DLN sampler: λ̂ within 4 of its standard errors of λ + the
    documented bias (measured: 8.646 ± 0.127), so a CLI that sampled something else
    (another nβ, step size or loss) fails."""
    proc = run("estimate", "dln", "--widths", "4,3,8", "--true-rank", "1",
               "--draws", "300", "--burnin", "100", "--chains", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("llc_mean", "llc_std", "llc_stderr", "true_llc", "chains", "draws",
                "diverged_chains", "seconds"):
        assert key in out
    assert out["true_llc"] == 8.5 and out["chains"] == 16 and out["draws"] == 200
    assert (out["nbeta"], out["diverged_chains"]) == (1000.0, 0)
    assert 0 < out["llc_stderr"] < 0.3, out  # a real standard error, not 0 or NaN
    expected = out["true_llc"] + BIAS_4_3_8_R1
    assert abs(out["llc_mean"] - expected) <= 4 * out["llc_stderr"], out
    # the default measures the step-size systematic: λ̂ is the ε/2 run's
    assert out["burnin"] == 100 and out["step_size"] == 2e-5
    assert out["llc_systematic"] >= 0
    assert out["llc_total"] ** 2 == pytest.approx(out["llc_stderr"] ** 2
                                                  + out["llc_systematic"] ** 2)


def test_estimate_dln_without_systematic_and_with_an_automatic_burnin():
    proc = run("estimate", "dln", "--widths", "3,2,8", "--true-rank", "0", "--draws", "200",
               "--chains", "4", "--no-systematic", "--burnin", "auto", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["llc_systematic"] is None and out["step_size"] == 4e-5
    assert 0 <= out["burnin"] <= 100 and out["draws"] == 200 - out["burnin"]
    proc = run("estimate", "dln", "--widths", "3,2,8", "--true-rank", "0", "--burnin", "x")
    assert proc.returncode == 2 and "burnin" in proc.stderr, proc.stderr


def test_bad_input_exits_2_with_one_line():
    for args in (["--step-size", "-1"], ["--true-rank", "9"], ["--widths", "4,x"]):
        base = {"--widths": "4,3,8", "--true-rank": "1"}
        base.update(dict(zip(args[::2], args[1::2], strict=True)))
        flat = [t for kv in base.items() for t in kv]
        proc = run("estimate", "dln", *flat)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
        assert "Traceback" not in proc.stderr
