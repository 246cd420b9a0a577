"""``rllc heads CHECKPOINT``: per-head behaviour scores and classes."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import JsonFlag, UsageError, emit, handle_errors, table


@handle_errors
def heads_command(
    checkpoint: Annotated[
        str, typer.Argument(help="Checkpoint directory (…/ckpt-NNNNNNN, local or s3://), or "
                            "a run directory (its newest checkpoint).", show_default=False)
    ],
    sequences: Annotated[
        int, typer.Option("--sequences", min=1, help="Held-out sequences per score.")
    ] = 64,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Least score that names a class; below it a "
                            "head is 'multigram'.")
    ] = 0.3,
    as_json: JsonFlag = False,
) -> None:
    """Previous-token, current-token, induction and bracket scores of every head."""
    from rllc.models.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
    from rllc.models.heads import head_scores
    from rllc.store.files import exists, join

    if not 0 <= threshold <= 1:
        raise UsageError(f"--threshold must lie in [0, 1], got {threshold}")
    target = checkpoint
    if not exists(join(checkpoint, "config.json")):
        ckpts = list_checkpoints(checkpoint)
        if not ckpts:
            raise UsageError(f"no checkpoint at {checkpoint!r} (no config.json, no ckpt-* inside)")
        target = ckpts[-1]
    try:
        model, tokenizer, meta = load_checkpoint(target)
    except CheckpointError as err:
        raise UsageError(str(err)) from err
    alphabet = (meta.get("data") or {}).get("induction_vocab")
    scores = head_scores(model, tokenizer, sequences, threshold=threshold, alphabet=alphabet)
    result = {"checkpoint": target, "step": meta["step"], "heads": [s.as_dict() for s in scores]}
    emit(result, as_json, _human)


def _human(r: dict) -> str:
    cols = ["head", "prev_token", "current_token", "induction", "bracket", "class"]
    return f"{r['checkpoint']} (step {r['step']})\n" + table(r["heads"], cols)
