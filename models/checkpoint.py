"""Checkpoints: safetensors weights + one JSON of metadata, local or on S3.

Layout of a run directory (a local path or ``s3://bucket/prefix``)::

    RUN/ckpt-0000100/model.safetensors   the weights (safetensors: loading never unpickles)
    RUN/ckpt-0000100/config.json         {"format", "step", "model", "tokenizer",
                                          "sha256", "data", "train", "eval_loss"}
    RUN/resume/optimizer.safetensors     AdamW moments of the newest checkpoint (resume only)
    RUN/resume/state.json

``config.json`` holds the model config, the tokenizer's JSON, the step and the SHA-256 of
``model.safetensors``; ``load_checkpoint`` recomputes the hash and refuses a file that does
not match (tampered or truncated). The checkpoint URI is its directory, e.g.
``runs/demo/ckpt-0000100``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tokenizers import Tokenizer

from rllc.store import files

from .transformer import AttentionOnlyTransformer, TransformerConfig

FORMAT = "rllc-checkpoint/1"
WEIGHTS, CONFIG = "model.safetensors", "config.json"
_CKPT = re.compile(r"ckpt-(\d+)")


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed or fails its integrity check."""


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:07d}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(
    run: str,
    step: int,
    model: AttentionOnlyTransformer,
    tokenizer: Tokenizer,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write ``RUN/ckpt-{step}`` and return its URI. The weights are written before the
    JSON that vouches for them, so a crash never leaves a config without its file."""
    ckpt = files.join(run, checkpoint_name(step))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = st_save(state, metadata={"format": FORMAT, "step": str(step)})
    files.write_bytes(files.join(ckpt, WEIGHTS), weights)
    meta = {
        "format": FORMAT,
        "step": int(step),
        "model": model.cfg.model_dump(),
        "tokenizer": tokenizer.to_str(),
        "sha256": _sha256(weights),
        **dict(extra or {}),
    }
    files.write_bytes(files.join(ckpt, CONFIG), json.dumps(meta).encode())
    return ckpt


def read_meta(ckpt: str) -> dict[str, Any]:
    """A checkpoint's ``config.json`` (without loading the weights)."""
    try:
        meta = json.loads(files.read_bytes(files.join(ckpt, CONFIG)))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no checkpoint at {ckpt!r} (missing {CONFIG})") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {ckpt!r}: {CONFIG} is not valid JSON") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {ckpt!r}: unknown format {meta.get('format')!r} (expected {FORMAT})"
        )
    return meta


def load_checkpoint(
    ckpt: str, device: str | torch.device = "cpu"
) -> tuple[AttentionOnlyTransformer, Tokenizer, dict[str, Any]]:
    """``(model, tokenizer, meta)`` of the checkpoint directory ``ckpt`` (path or s3://).

    Raises ``CheckpointError`` if the weights' SHA-256 differs from the one recorded in
    ``config.json``. The model is in eval mode.
    """
    meta = read_meta(ckpt)
    try:
        weights = files.read_bytes(files.join(ckpt, WEIGHTS))
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {ckpt!r}: missing {WEIGHTS}") from err
    digest = _sha256(weights)
    if digest != meta.get("sha256"):
        raise CheckpointError(
            f"checkpoint {ckpt!r}: {WEIGHTS} has sha256 {digest[:12]}…, but config.json "
            f"records {str(meta.get('sha256'))[:12]}…; the file was modified or corrupted"
        )
    model = AttentionOnlyTransformer(TransformerConfig.model_validate(meta["model"]))
    try:
        model.load_state_dict(st_load(weights))
    except Exception as err:
        raise CheckpointError(f"checkpoint {ckpt!r}: weights do not fit its config: {err}") from err
    model.to(device).eval()
    return model, Tokenizer.from_str(meta["tokenizer"]), meta


def list_checkpoints(run: str) -> list[str]:
    """URIs of the run's checkpoints, oldest (lowest step) first."""
    names = [n for n in files.list_dirs(run) if _CKPT.fullmatch(n)]
    names.sort(key=lambda n: int(_CKPT.fullmatch(n)[1]))
    return [files.join(run, n) for n in names]


def step_of(ckpt: str) -> int:
    m = _CKPT.fullmatch(ckpt.rstrip("/").rsplit("/", 1)[-1].rsplit("\\", 1)[-1])
    if not m:
        raise CheckpointError(f"{ckpt!r} is not a checkpoint directory (ckpt-NNNNNNN)")
    return int(m[1])


# -- optimizer state for resuming (not needed to analyse a checkpoint) -------------------


def save_optimizer(run: str, step: int, optimizer: torch.optim.Optimizer,
                   names: list[str]) -> None:
    """AdamW moments keyed by parameter name, and the step they belong to."""
    tensors, counts = {}, {}
    for i, name in enumerate(names):
        st = optimizer.state.get(optimizer.param_groups[0]["params"][i], {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                tensors[f"{key}/{name}"] = st[key].detach().cpu().contiguous()
        if "step" in st:
            counts[name] = float(st["step"])
    data = st_save(tensors)
    files.write_bytes(files.join(run, "resume", "optimizer.safetensors"), data)
    state = {"step": int(step), "sha256": _sha256(data), "counts": counts}
    files.write_bytes(files.join(run, "resume", "state.json"), json.dumps(state).encode())


def load_optimizer(run: str, step: int, optimizer: torch.optim.Optimizer,
                   names: list[str]) -> bool:
    """Restore moments saved by ``save_optimizer`` at ``step``; False if none match."""
    try:
        state = json.loads(files.read_bytes(files.join(run, "resume", "state.json")))
        data = files.read_bytes(files.join(run, "resume", "optimizer.safetensors"))
    except FileNotFoundError:
        return False
    if state.get("step") != step or _sha256(data) != state.get("sha256"):
        return False
    tensors = st_load(data)
    for i, name in enumerate(names):
        p = optimizer.param_groups[0]["params"][i]
        if f"exp_avg/{name}" in tensors:
            optimizer.state[p] = {
                "step": torch.tensor(state["counts"].get(name, step)),
                "exp_avg": tensors[f"exp_avg/{name}"].to(p.device),
                "exp_avg_sq": tensors[f"exp_avg_sq/{name}"].to(p.device),
            }
    return True
