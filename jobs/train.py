"""Train the attention-only transformer on the corpus mix (plain torch, no Ray).

AdamW with linear warm-up then constant lr, gradient clipping, the mix of
``rllc.data.datasets.DataMix``; batches are a pure function of (seed, step), so a resumed
run sees exactly the data an uninterrupted one would. Checkpoints (``rllc.models.
checkpoint``) land at log-spaced steps (dense early, where heads form) plus every
``checkpoint_every`` steps and the last step; the newest one also keeps the optimizer
state, and ``train`` resumes from it when the run directory already holds checkpoints.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tokenizers import Tokenizer

from rllc.data.datasets import DataMix, load_dataset, mix_batch
from rllc.data.text import code_documents, prose_documents
from rllc.data.tokenizer import train_tokenizer
from rllc.kernels.threads import dense_step_flops, use_threads
from rllc.models.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_optimizer,
    save_checkpoint,
    save_optimizer,
    step_of,
)
from rllc.models.transformer import AttentionOnlyTransformer, TransformerConfig, lm_loss
from rllc.store import files


class TrainConfig(BaseModel):
    """One training run. Defaults: the 2-layer × 8-head CPU model that forms previous-token
    and induction heads in about 5 minutes on one CPU thread (``QUICK``: a tiny one).

    What made induction heads form on a CPU budget (measured, 2 × 8 heads of 16, d_model
    128, vocab 512): the skip-bigram ``ngram`` source (25%) grows layer-0 previous-token
    heads within ~500 steps; dense periodic ``induction`` data (35%, random period); and
    above all the short-context warm-up (``short_ctx``): at n_ctx 64 no induction head
    had formed after 4,000 steps in any variant tried (lr 1e-3…1e-2, tied init, larger
    init, alphabet 100/128, batch 16), while at 32 tokens one forms after ~2,000 steps,
    and carries over to 64 tokens within a few hundred more.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: TransformerConfig = Field(default_factory=TransformerConfig)
    data: DataMix = Field(default_factory=DataMix)
    steps: int = Field(6000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Sequences per step.")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate after warm-up.")
    warmup_steps: int = Field(50, ge=0, description="Linear lr warm-up steps.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW (β1, β2).")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global grad norm (null: off).")
    seed: int = Field(0, description="Seed of the init and of every batch.")
    short_ctx: int | None = Field(
        32,
        ge=2,
        description="Sequence-length warm-up: the first short_ctx_steps steps train on "
        "sequences of this length (null: off), with batch_size·n_ctx/short_ctx sequences so "
        "tokens per step stay the same.",
    )
    short_ctx_steps: int = Field(2500, ge=0, description="Steps of the short-context phase.")
    log_checkpoints: int = Field(
        24, ge=0, description="Checkpoints at log-spaced steps 1 … steps (dense early)."
    )
    checkpoint_every: int | None = Field(
        500, ge=1, description="Also checkpoint every this many steps (null: off)."
    )
    eval_sequences: int = Field(256, ge=1, description="Eval-split sequences for eval_loss.")
    threads: int | None = Field(
        1,
        ge=1,
        description="torch CPU threads; null: the thread policy of rllc.kernels.threads "
        "(RLLC_THREADS or OMP_NUM_THREADS if set, else 1 for a model too small to gain "
        "from more, else the cores this process may use). One thread keeps a run's "
        "arithmetic the same whatever the machine's core count.",
    )

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _short_ctx(self) -> TrainConfig:
        if self.short_ctx is not None and self.short_ctx > self.model.n_ctx:
            raise ValueError(
                f"short_ctx ({self.short_ctx}) must not exceed model.n_ctx ({self.model.n_ctx})"
            )
        return self

    def batch_shape(self, step: int) -> tuple[int, int]:
        """(sequences, length) of the batch of ``step`` (1-based)."""
        if self.short_ctx is not None and step <= self.short_ctx_steps:
            return max(1, self.batch_size * self.model.n_ctx // self.short_ctx), self.short_ctx
        return self.batch_size, self.model.n_ctx

    @model_validator(mode="after")
    def _vocab(self) -> TrainConfig:
        if self.model.d_vocab < 257:
            raise ValueError(
                f"model.d_vocab must be ≥ 257 (the byte-level tokenizer's alphabet), "
                f"got {self.model.d_vocab}"
            )
        return self

    def checkpoint_steps(self) -> list[int]:
        """Step 0, ``log_checkpoints`` log-spaced steps, multiples of ``checkpoint_every``
        and the last step, sorted and unique."""
        steps = {0, self.steps}
        if self.log_checkpoints:
            steps |= {round(s) for s in np.geomspace(1, self.steps, self.log_checkpoints)}
        if self.checkpoint_every:
            steps |= set(range(0, self.steps + 1, self.checkpoint_every))
        return sorted(s for s in steps if 0 <= s <= self.steps)


#: A tiny configuration that trains in seconds (tests, demos).
QUICK = TrainConfig(
    model=TransformerConfig(n_layers=2, n_heads=2, d_model=32, d_head=8, n_ctx=32, d_vocab=300),
    data=DataMix(code_max_bytes=200_000, prose_max_bytes=100_000),
    steps=60,
    batch_size=16,
    short_ctx=16,
    short_ctx_steps=20,
    log_checkpoints=4,
    checkpoint_every=None,
    eval_sequences=32,
)


def load_config(path: str | Path | None = None, quick: bool = False, **overrides: Any) -> TrainConfig:
    """A ``TrainConfig`` from a YAML (or JSON) file over the defaults (or ``QUICK``),
    then ``overrides``; unknown keys are errors."""
    base = (QUICK if quick else TrainConfig()).model_dump()
    if path is not None:
        text = Path(path).read_text()
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(loaded).__name__}")
        _merge(base, loaded)
    _merge(base, overrides)
    return TrainConfig.model_validate(base)


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "weights":
            _merge(base[k], v)
        else:
            base[k] = v


@dataclass(frozen=True)
class TrainResult:
    """What ``rllc train --json`` prints."""

    run: str
    checkpoints: list[str]
    final_step: int
    eval_loss: float
    seconds: float
    resumed_from: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run, "checkpoints": self.checkpoints, "final_step": self.final_step,
            "eval_loss": self.eval_loss, "seconds": self.seconds,
            "resumed_from": self.resumed_from,
        }


def build_tokenizer(cfg: TrainConfig) -> Tokenizer:
    """Byte-level BPE of ``model.d_vocab`` tokens on the train split of code + prose."""
    docs = code_documents("train", cfg.data.code_max_bytes)
    docs += prose_documents("train", cfg.data.prose_max_bytes)
    return train_tokenizer(docs, cfg.model.d_vocab)


def batch_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step, 0xBA7C]).generate_state(1)[0])


@torch.no_grad()
def eval_loss(model: AttentionOnlyTransformer, tokens: torch.Tensor, chunk: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over ``tokens`` [n, T]."""
    was = model.training
    model.eval()
    total = sum(float(lm_loss(model(t), t)) * len(t) for t in tokens.split(chunk))
    model.train(was)
    return total / len(tokens)


class RunMismatchError(ValueError):
    """The run directory holds checkpoints of another configuration."""


def _check_resume(run: str, cfg: TrainConfig) -> None:
    path = files.join(run, "run.json")
    if not files.exists(path):
        return
    old = json.loads(files.read_bytes(path))["config"]
    free = {"steps", "threads"}  # may change between a run and its resumption
    mine = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in free}
    theirs = {k: v for k, v in old.items() if k not in free}
    if mine != theirs:
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise RunMismatchError(
            f"run {run!r} holds checkpoints of a different config (differs in {diff}); "
            "use another --out or the same config"
        )


def train(
    cfg: TrainConfig, out: str, progress: bool = True, resume: bool = True
) -> TrainResult:
    """Train ``cfg`` into the run directory ``out`` (path or s3://), resuming from its
    newest checkpoint if it has one. Returns the checkpoint URIs, oldest first."""
    start = time.perf_counter()
    existing = list_checkpoints(out) if resume else []
    if existing:
        _check_resume(out, cfg)
    run_json = json.dumps({"config": cfg.model_dump(mode="json")}).encode()
    files.write_bytes(files.join(out, "run.json"), run_json)
    if existing:
        model, tokenizer, meta = load_checkpoint(existing[-1])
        model.train()
        first = meta["step"]
    else:
        tokenizer = build_tokenizer(cfg)
        torch.manual_seed(cfg.seed)
        model = AttentionOnlyTransformer(cfg.model)
        first = 0
    weights = sum(p.numel() for p in model.parameters())
    use_threads(dense_step_flops(weights, cfg.batch_size * cfg.model.n_ctx),
                threads=cfg.threads)
    # Matrices (embeddings included) decay, gains and biases do not. `names` follows the
    # optimizer's parameter order (decayed group first) for saving its state by name.
    decay = [(n, p) for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [(n, p) for n, p in model.named_parameters() if p.ndim < 2]
    names = [n for n, _ in decay + no_decay]
    opt = torch.optim.AdamW(
        [{"params": [p for _, p in decay], "weight_decay": cfg.weight_decay},
         {"params": [p for _, p in no_decay], "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas,
    )
    if existing:
        _load_opt_state(out, first, opt, names)

    def lr_at(step: int) -> float:
        return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr

    evals = load_dataset("train", tokenizer, cfg.model.n_ctx, "eval", cfg.eval_sequences,
                         cfg.seed, cfg.data)
    extra = {"data": cfg.data.model_dump(mode="json"), "train": cfg.model_dump(mode="json")}
    todo = set(cfg.checkpoint_steps())
    last_eval = math.nan

    def checkpoint(step: int) -> None:
        nonlocal last_eval
        last_eval = eval_loss(model, evals)
        save_checkpoint(out, step, model, tokenizer, {**extra, "eval_loss": last_eval})
        _save_opt_state(out, step, opt, names)  # one slot, overwritten: resume state

    if not existing and 0 in todo:
        checkpoint(0)
    bar = _bar(progress, first, cfg.steps)
    loss_ema = math.nan
    for step in range(first + 1, cfg.steps + 1):
        n_seq, length = cfg.batch_shape(step)
        tokens = torch.from_numpy(
            mix_batch(cfg.data, tokenizer, n_seq, length, "train", batch_seed(cfg.seed, step))
        )
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1)
        loss = lm_loss(model(tokens), tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        value = float(loss.detach())
        loss_ema = value if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * value
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step}")
        if step in todo:
            checkpoint(step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}", eval=f"{last_eval:.3f}", refresh=False)
    if bar is not None:
        bar.close()
    ckpts = list_checkpoints(out)
    final = step_of(ckpts[-1])
    if math.isnan(last_eval):  # nothing left to train: report the stored value
        last_eval = float(load_checkpoint(ckpts[-1])[2].get("eval_loss", math.nan))
    return TrainResult(
        run=out, checkpoints=ckpts, final_step=final, eval_loss=last_eval,
        seconds=time.perf_counter() - start, resumed_from=first if existing else None,
    )


def _save_opt_state(out: str, step: int, opt: torch.optim.Optimizer, names: list[str]) -> None:
    flat = _FlatView(opt)
    save_optimizer(out, step, flat, names)  # type: ignore[arg-type]


def _load_opt_state(out: str, step: int, opt: torch.optim.Optimizer, names: list[str]) -> None:
    if not load_optimizer(out, step, _FlatView(opt), names):  # type: ignore[arg-type]
        print(f"note: no optimizer state for step {step}; resuming with fresh AdamW moments",
              file=sys.stderr)


class _FlatView:
    """An optimizer seen as one param group (the save/load helpers index params by order)."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.state = opt.state
        self.param_groups = [{"params": [p for g in opt.param_groups for p in g["params"]]}]


def _bar(progress: bool, first: int, total: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=first, desc="train", unit="step", file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0)
