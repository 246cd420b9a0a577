"""The problems a tune samples, each as a function ``config → SamplingResult``.

A target is a small pydantic model (so it travels to Ray workers as plain data) that
builds its sampler in the worker: a deep linear network (``DLNTarget``, the problem of
``rllc estimate dln``), or a (checkpoint, component, dataset) point of a trained model
(``PointTarget``, sampled as a sweep cell is). Nothing here knows λ: the tuner sees only
the sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict

from rllc.estimators import SamplingResult, SGLDConfig
from rllc.estimators.dln import (
    DLNProblem,
    fit_student,
    make_data,
    sample_dln,
    sufficient_statistics,
)

from .spec import ComputeOptions, DataOptions

Sampler = Callable[[SGLDConfig], SamplingResult]


class DLNTarget(BaseModel):
    """A deep linear network at its trained minimum (full-batch loss)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["dln"] = "dln"
    problem: DLNProblem

    @property
    def label(self) -> str:
        p = self.problem
        return f"dln-{'x'.join(map(str, p.widths))}-r{p.true_rank}-s{p.seed}"

    def sampler(self) -> Sampler:
        return _dln_sampler(self.problem)


class PointTarget(BaseModel):
    """One component of one checkpoint on one dataset, sampled as a sweep cell."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["model"] = "model"
    checkpoint: str
    component: str
    dataset: str
    data: DataOptions = DataOptions()
    compute: ComputeOptions = ComputeOptions()

    @property
    def label(self) -> str:
        return f"{self.component}@{self.dataset}@{PurePosixPath(self.checkpoint).name}"

    def sampler(self) -> Sampler:
        session = _session(self.checkpoint, self.data, self.compute)
        return lambda config: session.sample(self.component, self.dataset, config)


Target = DLNTarget | PointTarget


@cache
def _dln_sampler(problem: DLNProblem) -> Sampler:
    # one build per worker process (Ray reuses processes across trials)
    _, x, y = make_data(problem)
    student = fit_student(problem, x, y)
    stats = sufficient_statistics(x, y)
    return lambda config: sample_dln(student, stats, config, num_samples=problem.samples,
                                     noise_std=problem.noise_std)


@cache
def _session(checkpoint: str, data: DataOptions, compute: ComputeOptions):
    from .session import CheckpointSession

    return CheckpointSession(checkpoint, data, compute=compute)
