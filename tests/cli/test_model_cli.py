"""``rllc estimate model``: one cell of a trained checkpoint (the tiny run, ``tiny_run``)
from the command line."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from rllc.cli.main import app, main

ARGS = ["estimate", "model", "--component", "1:0", "--dataset", "dyck",
        "--sequences", "16", "--chains", "2", "--draws", "8", "--batch-size", "8",
        "--nbeta", "10", "--step-size", "1e-4", "--threads", "1", "--json"]


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_cli_estimate_model(tiny_run):
    runner = CliRunner()
    args = [*ARGS[:2], tiny_run, *ARGS[2:]]  # a run directory: its newest checkpoint
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = last_json(res.stdout)
    assert out["checkpoint"].endswith("ckpt-0000004") and out["step"] == 4
    assert {"llc_mean", "llc_std", "llc_stderr", "chains", "draws", "diverged_chains",
            "seconds"} <= set(out)
    assert (out["chains"], out["draws"]) == (2, 8) and np.isfinite(out["llc_mean"])
    assert (out["path"], out["precision"]) == ("fast", "float32")
    res = runner.invoke(app, [*args, "--precision", "bfloat16"])
    assert res.exit_code == 0, res.output
    low = last_json(res.stdout)
    assert low["precision"] == "bfloat16" and np.isfinite(low["llc_mean"])


def test_cli_estimate_model_on_generated_text(tiny_run):
    """``--dataset generated``: text sampled from the checkpoint itself (no cache)."""
    args = [*ARGS[:2], tiny_run, *ARGS[2:]]
    args[args.index("dyck")] = "generated"
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = last_json(res.stdout)
    assert out["dataset"] == "generated" and np.isfinite(out["llc_mean"])


def test_cli_estimate_model_bad_input_exits_2(tiny_run):
    runner = CliRunner()
    res = runner.invoke(app, [*ARGS[:2], tiny_run, "--component", "7:0"])
    assert res.exit_code == 2 and "unknown head '7:0'" in res.stderr
    res = runner.invoke(app, [*ARGS[:2], tiny_run, "--component", "1:0", "--dataset", "nope"])
    assert res.exit_code == 2 and "unknown dataset 'nope'" in res.stderr


def test_bad_flag_value_is_one_line(tiny_run, monkeypatch, capsys):
    """A value click rejects goes through ``main``: one line naming the flag, exit 2."""
    monkeypatch.setattr(sys, "argv", ["rllc", *ARGS[:2], tiny_run, "--precision", "fp16"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: Invalid value for '--precision': "), err
    assert "'fp16'" in err and "'float32', 'bfloat16', 'int8'" in err
    assert len(err.strip().splitlines()) == 1, err
