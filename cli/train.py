"""``rllc train [CONFIG.yaml] [--out DIR|s3://…] [--quick]``: train, write checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from .common import JsonFlag, UsageError, emit, handle_errors, table


@handle_errors
def train_command(
    config: Annotated[
        Path | None,
        typer.Argument(help="YAML (or JSON) file of TrainConfig fields; omitted ones keep "
                       "their defaults.", show_default=False),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option("--out", help="Run directory or s3://bucket/prefix (default: "
                     "runs/<config name>, runs/default or runs/quick). A directory with "
                     "checkpoints of the same config is resumed."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Start from the tiny config (seconds; tests, demos).")
    ] = False,
    steps: Annotated[int | None, typer.Option("--steps", help="Override the step count.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the seed.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Override the learning rate.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Override sequences per step.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch CPU threads (default: the "
                                 "thread policy, rllc.kernels.threads).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train the attention-only transformer on the corpus mix and write checkpoints."""
    from rllc.jobs.train import RunMismatchError, load_config, train

    flags = {"steps": steps, "seed": seed, "lr": lr, "batch_size": batch_size, "threads": threads}
    overrides = {k: v for k, v in flags.items() if v is not None}
    if config is not None and not config.is_file():
        raise UsageError(f"config file not found: {config}")
    try:
        cfg = load_config(config, quick=quick, **overrides)
    except yaml.YAMLError as err:
        raise UsageError(f"{config}: not valid YAML ({err.__class__.__name__})") from err
    if out is None:
        out = str(Path("runs") / (config.stem if config else "quick" if quick else "default"))
    try:
        result = train(cfg, out, progress=True)
    except RunMismatchError as err:
        raise UsageError(str(err)) from err
    emit(result.as_dict(), as_json, _human)


def _human(r: dict) -> str:
    rows = [{"run": r["run"], "final_step": r["final_step"], "eval_loss": r["eval_loss"],
             "checkpoints": len(r["checkpoints"]), "seconds": r["seconds"]}]
    return table(rows, ["run", "final_step", "eval_loss", "checkpoints", "seconds"])
