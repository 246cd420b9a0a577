"""``rllc sweep plan|run|resume``: the CLI's contract on the tiny run (``tiny_run``),
without Ray (the Ray-backed runs are in tests/jobs/test_sweep.py)."""

from __future__ import annotations

import json
import os

import yaml
from typer.testing import CliRunner

from rllc.cli.main import app

SAMPLER = {"chains": 2, "draws": 10, "batch_size": 8, "nbeta": 10.0, "step_size": 1e-4,
           "localization": 100.0}


def spec(run_dir: str, store: str, **fields) -> dict:
    """3 checkpoints × heads 0:0, 0:1 × dyck × seeds 0, 1 = 12 cells of 2 × 10 steps."""
    return {
        "name": "tiny", "checkpoints": os.path.join(run_dir, "ckpt-*"), "components": ["0:*"],
        "datasets": ["dyck"], "seeds": [0, 1], "sampler": SAMPLER, "store": store,
        "data": {"n_sequences": 32}, "resources": {"max_workers": 2},
    } | fields


def test_cli_plan(tiny_run, tmp_path):
    runner = CliRunner()
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(tiny_run, str(tmp_path / "store"))))
    res = runner.invoke(app, ["sweep", "plan", str(path), "--json", "--no-timing"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert (out["cells"], out["sgld_steps"], out["estimated_seconds"]) == (12, 240, None)
    assert out["units"] == 3 * 2  # each (checkpoint, seed)'s two layer-0 heads batched
    res = runner.invoke(app, ["sweep", "plan", str(path)])
    assert res.exit_code == 0 and "12 cells" in res.stdout and "estimated" in res.stdout
    assert not (tmp_path / "store").exists()  # planning writes nothing


def test_cli_sweep_bad_specs_exit_2_with_one_line(tiny_run, tmp_path):
    runner = CliRunner()
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(tiny_run, "s", sampler=SAMPLER | {"chains": 0})))
    res = runner.invoke(app, ["sweep", "run", str(path), "--json"])
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: sampler.chains: chains must be ≥ 1, got 0"
    path.write_text(yaml.safe_dump(spec(tiny_run, "s", components=["0:*", "2:0"])))
    res = runner.invoke(app, ["sweep", "plan", str(path), "--no-timing"])
    assert res.exit_code == 2 and res.stderr.startswith("error: components: unknown head '2:0'")
    path.write_text("name: [unclosed\n")
    res = runner.invoke(app, ["sweep", "plan", str(path)])
    assert res.exit_code == 2 and "is not valid YAML or JSON" in res.stderr
    res = runner.invoke(app, ["sweep", "resume", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "spec file not found" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
