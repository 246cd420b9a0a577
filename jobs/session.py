"""One checkpoint loaded on one device, ready to sample cells: the plain-torch half of a
sweep worker (no Ray), also behind ``rllc estimate model``.

A session loads the model once, draws each loss dataset once, and computes L_n(w*) once
per dataset: it is the same for every component and seed of the checkpoint (up to the
config fields ``full_data_loss`` reads), so every cell reuses it via ``init_loss=``.

Cells go through ``rllc.models.fastpath.sample_heads``: heads of an attention-only model
take the head fast path (several heads of one layer sampled as one batch when asked
together, ``sample_many``), other components the general vectorized sampler.

The dataset ``generated`` is text sampled from the checkpoint itself
(``rllc.models.generate.sample_sequences``); with ``cache=`` (a sweep's
``<store>/cache/datasets``) its tokens are written once, as ``.npy``, and read back by
every later session of the same checkpoint and data options, so a resumed sweep sees the
same tokens.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rllc.data.datasets import GENERATED, load_dataset
from rllc.estimators import SamplingResult, SGLDConfig, frozen_state, full_data_loss, sample
from rllc.kernels.precision import Precision, parse_precision
from rllc.models.checkpoint import load_checkpoint
from rllc.models.components import component_selection
from rllc.models.fastpath import (
    fast_path_reason,
    frozen_data_loss,
    head_noise_key,
    sample_heads,
    takes_fast_path,
)
from rllc.models.generate import sample_sequences
from rllc.models.objective import lm_objective
from rllc.store import files

from .baselines import compute_baselines
from .metrics import BaselineOptions, Metric
from .spec import ComputeOptions, DataOptions

#: Seed-stream tag of the ``generated`` dataset (mixed with ``data.seed``).
_GENERATED_STREAM = 0x6E4E
#: Sampling temperature of the ``generated`` dataset (the model's own distribution).
GENERATED_TEMPERATURE = 1.0


def generated_seed(data_seed: int) -> int:
    """The sampling seed of the ``generated`` dataset for the spec's ``data.seed``."""
    return int(np.random.SeedSequence([_GENERATED_STREAM, int(data_seed)]).generate_state(1)[0])


def default_device() -> str:
    """``cuda`` when a GPU is visible (Ray hides GPUs from actors that asked for none)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


class CheckpointSession:
    """A checkpoint with its loss datasets and cached L_n(w*), sampling one cell at a time."""

    def __init__(
        self,
        checkpoint: str,
        data: DataOptions | None = None,
        device: str | None = None,
        compute: ComputeOptions | None = None,
        cache: str | None = None,
    ) -> None:
        """``cache``: a directory (local path or ``s3://`` URI) where the ``generated``
        dataset's tokens are kept between sessions (None: sampled anew each session)."""
        self.checkpoint = checkpoint
        self.cache = cache
        self.compute = compute or ComputeOptions()
        self.device = device or default_device()
        self.model, self.tokenizer, self.meta = load_checkpoint(checkpoint, self.device)
        self.objective = lm_objective(self.model)
        self.data = data or DataOptions()
        n_ctx = self.data.n_ctx or self.model.cfg.n_ctx
        if n_ctx > self.model.cfg.n_ctx:
            raise ValueError(
                f"data.n_ctx ({n_ctx}) exceeds the context length {self.model.cfg.n_ctx} of "
                f"checkpoint {checkpoint}"
            )
        self.n_ctx = n_ctx
        self._datasets: dict[str, Tensor] = {}
        self._init_loss: dict[tuple, float] = {}

    @property
    def step(self) -> int:
        """The checkpoint's training step."""
        return int(self.meta["step"])

    def dataset(self, name: str) -> Tensor:
        """The loss dataset ``name`` as tokens ``[n_sequences, n_ctx]`` on the device;
        ``train`` is the checkpoint's own training mix (its ``meta["data"]``),
        ``generated`` text sampled from the checkpoint itself (``generated()``)."""
        if name == GENERATED and name not in self._datasets:
            self._datasets[name] = self.generated().to(self.device)
        if name not in self._datasets:
            tokens = load_dataset(
                name,
                self.tokenizer,
                self.n_ctx,
                split=self.data.split,
                n_sequences=self.data.n_sequences,
                seed=self.data.seed,
                mix=self.meta.get("data"),
            )
            self._datasets[name] = tokens.to(self.device)
        return self._datasets[name]

    def generated_key(self) -> str:
        """A short hash of what the ``generated`` tokens depend on: the checkpoint (URI
        and step), ``data.n_sequences``, the sequence length, the seed and temperature."""
        what = [self.checkpoint, self.step, self.data.n_sequences, self.n_ctx,
                generated_seed(self.data.seed), GENERATED_TEMPERATURE]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def generated_uri(self) -> str | None:
        """Where the ``generated`` tokens are cached (None without a cache)."""
        if self.cache is None:
            return None
        return files.join(self.cache, f"{GENERATED}-{self.generated_key()}.npy")

    def generated(self) -> Tensor:
        """The ``generated`` dataset, ``LongTensor[n_sequences, n_ctx]`` on the CPU:
        ``data.n_sequences`` sequences sampled from the model (temperature 1, seed from
        ``data.seed``; ``data.split`` does not apply). With a cache, read from it when
        there, else sampled and written there (the write is atomic on local disks)."""
        uri = self.generated_uri()
        want = (self.data.n_sequences, self.n_ctx)
        if uri is not None and files.exists(uri):
            arr = np.load(io.BytesIO(files.read_bytes(uri)), allow_pickle=False)
            if arr.shape != want or arr.dtype != np.int64:
                raise ValueError(f"cached generated dataset {uri} holds {arr.dtype} "
                                 f"{list(arr.shape)}, expected int64 {list(want)}; delete it "
                                 "to sample it again")
            return torch.from_numpy(arr)
        tokens = sample_sequences(self.model, self.data.n_sequences, self.n_ctx,
                                  seed=generated_seed(self.data.seed),
                                  temperature=GENERATED_TEMPERATURE)
        if uri is not None:
            buf = io.BytesIO()
            np.save(buf, tokens.numpy(), allow_pickle=False)
            files.write_bytes(uri, buf.getvalue())
        return tokens

    def init_loss(self, name: str, config: SGLDConfig,
                  precision: Precision = Precision.FLOAT32,
                  unembed_precision: Precision | None = None) -> float:
        """L_n(w*) on dataset ``name``, computed once per distinct input of
        ``full_data_loss`` (the seed only matters when it subsamples batches). In
        ``bfloat16`` it is the head fast path's frozen forward in that precision, with the
        unembedding in ``unembed_precision`` (default ``precision``; the rank-k rows of
        last-layer heads use float32), so that λ̂'s difference E[L] − L(w*) compares like
        with like (models the fast path does not take are sampled, and so measured, in
        float32)."""
        precision = parse_precision(precision)
        unembed_precision = parse_precision(unembed_precision or precision)
        if fast_path_reason(self.model) is not None:
            precision = unembed_precision = Precision.FLOAT32
        sub = config.init_loss_batches
        key = (name, config.batch_size, sub, config.seed if sub is not None else None,
               precision, unembed_precision)
        if key not in self._init_loss:
            tokens = self.dataset(name)
            if precision == unembed_precision == Precision.FLOAT32:
                loss = full_data_loss(self.objective, frozen_state(self.model), (tokens,),
                                      config)
            else:
                loss = frozen_data_loss(self.model, tokens, config, precision,
                                        unembed_precision)
            self._init_loss[key] = loss
        return self._init_loss[key]

    def sample_many(
        self, components: list[str], dataset: str, config: SGLDConfig, progress=False
    ) -> dict[str, SamplingResult]:
        """Cells of several components on one dataset with one config. Heads ``"L:H"`` of
        an attention-only model take the head fast path, a layer's heads as one batch of
        (head, chain) rows: each head's traces are those it gets alone (its noise depends
        on its own id, the minibatches on the seed), up to float reassociation. Other
        components (``"L:*"`` as one selection, ``embed``, patterns) run one by one on the
        general sampler."""
        heads = [c for c in components if takes_fast_path(self.model, c)]
        tokens = self.dataset(dataset)
        out: dict[str, SamplingResult] = {}
        if heads:
            precision = self.compute.precision
            out |= sample_heads(self.model, tokens, heads, config, fast=True,
                                init_loss=lambda p, u: self.init_loss(dataset, config, p, u),
                                precision=precision, progress=progress)
        for comp in (c for c in components if c not in out):
            out[comp] = sample(self.model, self.objective, tokens,
                               component_selection(self.model, comp), config,
                               init_loss=self.init_loss(dataset, config),
                               noise_key=head_noise_key(comp), progress=progress)
            out[comp].extra["path"] = "general"
        return {c: out[c] for c in components}

    def baselines(self, components: list[str], dataset: str, metrics: Iterable[Metric],
                  options: BaselineOptions, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
        """The baselines ``metrics`` of ``components`` on ``dataset``
        (``rllc.jobs.baselines.compute_baselines``): components of one layer share its
        frozen prefix, ablations of a layer's heads its clean run."""
        return compute_baselines(self.model, self.dataset(dataset), components, metrics,
                                 options, seed=seed, progress=progress)

    def sample(
        self, component: str, dataset: str, config: SGLDConfig, progress=False
    ) -> SamplingResult:
        """All ``config.chains`` chains of one cell in one vectorized call."""
        return self.sample_many([component], dataset, config, progress)[component]
