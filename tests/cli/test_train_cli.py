"""``rllc train`` and ``rllc heads``: JSON output, bad input (exit 2, one line), and
``--quick``."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from rllc.cli.main import app
from rllc.jobs.train import QUICK, train

TINY = QUICK.model_copy(update={"steps": 12, "log_checkpoints": 3, "eval_sequences": 8})


def test_cli_train_and_heads_json(tmp_path):
    runner = CliRunner()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps(TINY.model_dump(mode="json")))
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(cfg), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"run", "checkpoints", "final_step", "eval_loss", "seconds"} <= set(payload)
    assert payload["final_step"] == 12 and payload["checkpoints"][-1].endswith("ckpt-0000012")

    res = runner.invoke(app, ["heads", payload["checkpoints"][-1], "--json"])
    assert res.exit_code == 0, res.output
    heads = json.loads(res.stdout.strip().splitlines()[-1])["heads"]
    assert [h["head"] for h in heads] == ["0:0", "0:1", "1:0", "1:1"]
    for h in heads:
        assert {"prev_token", "current_token", "induction", "bracket", "class"} <= set(h)
        assert 0 <= h["prev_token"] <= 1

    res = runner.invoke(app, ["heads", str(out)])  # a run directory: its newest checkpoint
    assert res.exit_code == 0 and "ckpt-0000012" in res.stdout


@pytest.mark.parametrize(
    "args,msg",
    [(["train", "missing.yaml"], "config file not found"),
     (["heads", "no/such/ckpt"], "no checkpoint"),
     (["heads", ".", "--threshold", "2"], "--threshold")],
)
def test_cli_bad_input_exits_2(tmp_path, monkeypatch, args, msg):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert msg in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_rejects_invalid_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("lr: -1\n")
    res = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "lr" in res.stderr


def test_cli_tampered_checkpoint_exits_2(tmp_path):
    result = train(TINY, str(tmp_path), progress=False)
    weights = os.path.join(result.checkpoints[-1], "model.safetensors")
    with open(weights, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    res = CliRunner().invoke(app, ["heads", result.checkpoints[-1]])
    assert res.exit_code == 2 and "modified or corrupted" in res.stderr


def test_cli_quick_trains_in_under_a_minute(tmp_path):
    res = CliRunner().invoke(app, ["train", "--quick", "--out", str(tmp_path / "q"), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    assert payload["final_step"] == QUICK.steps and payload["seconds"] < 60
