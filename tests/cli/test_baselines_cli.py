"""``rllc baselines``: one component's baselines on the tiny run, and clean exits for bad
input (exit 2, the flag or value named, no traceback)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rllc.cli.main import app

FAST = ["--dataset", "dyck", "--sequences", "3", "--probes", "4"]


def test_baselines_json(tiny_run):
    res = CliRunner().invoke(app, ["baselines", tiny_run, "--component", "0:1",
                                   "--metrics", "hessian_trace,ablation", *FAST, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["component"] == "0:1" and out["metrics"] == ["hessian_trace", "ablation"]
    assert out["hessian_trace_stderr"] > 0 and not out["hessian_trace_exact"]
    assert set(out["ablation"]) == {"zero", "zero_stderr", "mean", "mean_stderr", "resample",
                                    "resample_stderr"}
    assert "fisher_trace" not in out and set(out["metric_seconds"]) == {"hessian_trace",
                                                                         "ablation"}
    human = CliRunner().invoke(app, ["baselines", tiny_run, "--component", "embed",
                                     "--metrics", "ablation", *FAST])
    assert human.exit_code == 0 and "n/a (heads only)" in human.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--component", "0:0", "--metrics", "hessian,ablation"],
         "error: --metrics: unknown metric 'hessian'"),
        (["--component", "0:0", "--rank-tol", "2"], "error: --rank-tol: rank_tol must lie in"),
        (["--component", "0:0", "--sequences", "1"], "error: --sequences: Input should be"),
        (["--component", "7:0"], "error: unknown head '7:0'"),
        (["--component", "0:0", "--dataset", "nope"], "error: unknown dataset 'nope'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_run, args, message):
    res = CliRunner().invoke(app, ["baselines", tiny_run, *args, "--json"])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(message), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_missing_checkpoint_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["baselines", str(tmp_path / "none"), "--component", "0:0"])
    assert res.exit_code == 2 and res.stderr.startswith("error: ")
