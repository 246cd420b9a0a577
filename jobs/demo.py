"""The main job (``rllc demo``): the paper's head analysis end to end, at CPU scale.

Stages, each timed and each resumable (a re-run reuses what an interrupted one finished):

1. ``train``: the 2-layer × 8-head attention-only model on the corpus mix, checkpoints at
   log-spaced steps (``rllc.jobs.train``; a finished run is reused as it is).
2. ``heads``: every head's attention scores and class at each measured checkpoint
   (``rllc.models.heads``), and the checkpoints' eval loss.
3. ``tune``: ε and γ searched on Ray Tune (``rllc.jobs.tune``) at the final checkpoint,
   once per layer, on that layer's most specialised head (layer 0: the highest
   previous-token score; other layers: the highest induction score). Each layer's heads
   then sample with their layer's setting (the sweep spec's ``component_samplers``); the
   full model keeps the base setting.
4. ``wrllc``: one sweep, every head and the full model (``all``) on the training mix at
   ``checkpoints`` log-spaced checkpoints.
5. ``drllc``: every head on each of ``datasets`` (``generated``: text sampled from the
   checkpoint itself) at the final checkpoint and earlier ones.
6. ``baselines``: Hessian trace, Fisher traces, Hessian rank and ablations of every head
   at ``baseline_checkpoints`` checkpoints (``rllc.jobs.baselines``).
7. ``report``: analysis and the static HTML report, from the store alone
   (``rllc.report.render_report``; ``rllc report`` re-renders it).

Everything lands under ``--out``: ``run/`` (checkpoints), ``store/`` (sweeps, tunes and the
record ``reports/<name>``: head scores, eval losses, stage times, which sweeps and tunes
the report reads) and ``report/index.html``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rllc.analysis.clusters import ClusterMethod
from rllc.data.datasets import DataMix
from rllc.estimators import SGLDConfig
from rllc.models.transformer import TransformerConfig

from .metrics import BASELINES, BaselineOptions
from .spec import COMPONENT_FIELDS, DataOptions, Resources, check_dataset
from .train import TrainConfig
from .tune_spec import SearchSpace

if TYPE_CHECKING:
    from rllc.store.base import TraceStore

KIND = "reports"  # the store's folder of records
RECORD_VERSION = 1
STAGES = ("train", "heads", "tune", "wrllc", "drllc", "baselines", "report")

#: Share of the default run's time each stage took (measured: 1,773 s in all, of which
#: train 105, tune 135, wrllc 621, drllc 823, baselines 71, report 15), for the ETA printed
#: between stages; the sweeps' own bars show theirs.
STAGE_SHARES = {"train": 0.06, "heads": 0.005, "tune": 0.08, "wrllc": 0.35, "drllc": 0.45,
                "baselines": 0.045, "report": 0.01}

#: The demo model: the default's 2 × 8 heads at d_model 64, 32 tokens, 300-token
#: vocabulary and 3,000 steps. Measured: it trains in ≈ 100 s on one thread and forms two
#: previous-token heads in layer 0 and four induction heads in layer 1; one SGLD point of
#: all 16 heads (4 × 100 draws, batch 32) takes ≈ 50 s, a sixth of the default model's.
DEMO_TRAIN = TrainConfig(
    model=TransformerConfig(n_layers=2, n_heads=8, d_model=64, d_head=8, n_ctx=32,
                            d_vocab=300),
    steps=3000,
    batch_size=32,
    short_ctx=16,
    short_ctx_steps=1200,
    log_checkpoints=24,
    checkpoint_every=None,
    eval_sequences=128,
)

#: ``--quick``: 2 × 4 heads of 8 dimensions, 16 tokens, 400 steps (seconds to train).
QUICK_TRAIN = TrainConfig(
    model=TransformerConfig(n_layers=2, n_heads=4, d_model=32, d_head=8, n_ctx=16,
                            d_vocab=300),
    data=DataMix(code_max_bytes=200_000, prose_max_bytes=100_000),
    steps=400,
    batch_size=32,
    short_ctx=None,
    log_checkpoints=12,
    checkpoint_every=None,
    eval_sequences=64,
)


class DemoConfig(BaseModel):
    """What ``rllc demo`` runs. Defaults: the ≤ 45-minute CPU run; ``QUICK``: ≤ 5 minutes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("demo", description="Record id; the sweeps are <name>-wrllc, …")
    train: TrainConfig = Field(default_factory=lambda: DEMO_TRAIN)
    checkpoints: int = Field(16, ge=4, description="Checkpoints of the wrLLC curves "
                             "(log-spaced over training, the final one included).")
    drllc_checkpoints: int = Field(3, ge=1, description="Checkpoints of the drLLCs: the "
                                   "final one and earlier ones.")
    baseline_checkpoints: int = Field(6, ge=2, description="Checkpoints of the baselines.")
    datasets: tuple[str, ...] = Field(
        ("code", "prose", "induction", "dyck", "generated"),
        description="drLLC datasets (the denominator, the training mix, is the wrLLC's).")
    sampler: SGLDConfig = Field(
        default_factory=lambda: SGLDConfig(step_size=1e-3, localization=200.0, nbeta=30.0,
                                           chains=4, draws=100, batch_size=32),
        description="SGLD settings; ε, γ of the heads come from the tune, per layer.")
    data: DataOptions = Field(default_factory=lambda: DataOptions(n_sequences=128))
    tune: bool = Field(True, description="Tune ε, γ per layer (else: sampler's for all).")
    search: SearchSpace = Field(
        default_factory=lambda: SearchSpace(trials=10, step_size=(1e-5, 1e-1),
                                            localization=(10.0, 1e4)),
        description="The tune's search block (rllc.jobs.tune_spec).")
    tune_draws: int = Field(100, ge=20, description="Draws per chain of each tune run.")
    baselines: BaselineOptions = Field(
        default_factory=lambda: BaselineOptions(sequences=4, probes=16, rank_probes=4,
                                                lanczos_steps=20))
    clustering: ClusterMethod = Field(ClusterMethod.KMEANS, description="How the report "
                                      "clusters the normalised wrLLC curves: kmeans, or dtw "
                                      "(tslearn, pip install rllc[dtw]).")
    workers: int | None = Field(None, ge=1, description="Ray actors (default: one per CPU).")
    budget_seconds: float = Field(2700.0, gt=0, description="The run's time budget, shown "
                                  "beside the stage times.")

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            check_dataset(name)
        return v


QUICK = DemoConfig(
    train=QUICK_TRAIN,
    checkpoints=8,
    drllc_checkpoints=3,
    baseline_checkpoints=6,
    sampler=SGLDConfig(step_size=1e-3, localization=200.0, nbeta=30.0, chains=2, draws=60,
                       batch_size=16),
    data=DataOptions(n_sequences=32),
    search=SearchSpace(trials=4, step_size=(1e-4, 1e-1), localization=(10.0, 1e4)),
    tune_draws=40,
    baselines=BaselineOptions(sequences=2, probes=8, rank_probes=2, lanczos_steps=10),
    budget_seconds=300.0,
)


@dataclass
class DemoResult:
    """What ``rllc demo --json`` prints: ``seconds`` is this run's wall time (Ray's start
    included), ``timings`` each stage's (a reused stage keeps the time it took when it
    did its work)."""

    report: str
    store: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"report": self.report, "store": self.store, "seconds": self.seconds,
                "timings": self.timings, "reused": self.reused}


def log_spaced(steps: list[int], k: int) -> list[int]:
    """Up to ``k`` of ``steps`` (step 0 left out: a log axis has no room for it) nearest
    to k log-spaced targets from the first to the last, the last always included."""
    pos = sorted(s for s in set(steps) if s > 0)
    if len(pos) <= k:
        return pos
    chosen: list[int] = []
    for target in np.geomspace(pos[0], pos[-1], k):
        free = [s for s in pos if s not in chosen]
        chosen.append(min(free, key=lambda s: abs(math.log(s) - math.log(target))))
    return sorted(set(chosen) | {pos[-1]})


def spread(steps: list[int], k: int) -> list[int]:
    """``k`` of ``steps`` evenly spread by index, the last one always included."""
    if len(steps) <= k:
        return list(steps)
    idx = np.round(np.linspace(len(steps) - 1, 0, k)).astype(int)
    return sorted({steps[i] for i in idx})


class StageClock:
    """Times the stages, prints each one's time with the elapsed total and an ETA (from
    ``STAGE_SHARES``), and keeps the seconds of stages that did work."""

    def __init__(self, budget: float, previous: dict[str, float], progress: bool,
                 echo: Callable[[str], None]) -> None:
        self.start = time.perf_counter()
        self.budget, self.progress, self.echo = budget, progress, echo
        self.timings = dict(previous)
        self.reused: list[str] = []
        self.done: list[str] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, bool]]:
        """Time stage ``name``; the body sets ``state["reused"]`` when it found the stage's
        work already done (its earlier time is then kept)."""
        state = {"reused": False}
        i = STAGES.index(name) + 1
        if self.progress:
            self.echo(f"[demo {i}/{len(STAGES)}] {name} …")
        t0 = time.perf_counter()
        yield state
        seconds = time.perf_counter() - t0
        self.done.append(name)
        if state["reused"] and name in self.timings:
            self.reused.append(name)
        else:
            self.timings[name] = seconds
        if self.progress:
            elapsed = time.perf_counter() - self.start
            share = sum(STAGE_SHARES[s] for s in self.done)
            eta = elapsed / share * (1 - share) if 0 < share < 1 else 0.0
            note = " (reused)" if name in self.reused else ""
            self.echo(f"[demo {i}/{len(STAGES)}] {name}: {seconds:.0f} s{note} · elapsed "
                      f"{_clock(elapsed)} · ETA {_clock(eta)} · budget "
                      f"{_clock(self.budget)}")

    def total(self) -> float:
        return float(sum(self.timings.get(s, 0.0) for s in STAGES))


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}:{s:02d}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(out: str | Path, config: DemoConfig | None = None, *, progress: bool = True,
             address: str | None = None, num_cpus: int | None = None) -> DemoResult:
    """Run (or finish) the demo into ``out``: ``out/run``, ``out/store``,
    ``out/report/index.html``. Returns what ``rllc demo --json`` prints."""
    from rllc.store import UnknownGroupError, open_store
    from rllc.store.records import read_record, write_record

    from .sweep import ray_runtime

    start = time.perf_counter()
    config = config or DemoConfig()
    out = Path(out).resolve()
    run, store_uri = str(out / "run"), str(out / "store")
    store = open_store(store_uri)
    try:
        record = read_record(store, KIND, config.name)
    except UnknownGroupError:
        record = {}
    if record and computed_settings(record.get("config")) not in (None, computed_settings(config)):
        raise ValueError(
            f"{out} holds a demo run with other settings (its record {config.name!r}); use "
            "another --out, or the same settings (--quick or not) to resume it"
        )
    clock = StageClock(config.budget_seconds, dict(record.get("timings") or {}), progress,
                       _stderr)
    record |= {"kind": "demo", "version": RECORD_VERSION, "quick": computed_settings(config) == computed_settings(QUICK),
               "title": "Refined LLCs of attention heads over training",
               "config": config.model_dump(mode="json"), "run": run,
               "model": config.train.model.model_dump(mode="json"),
               "budget_seconds": config.budget_seconds, "drllc_datasets": list(config.datasets),
               "clustering": config.clustering.value,
               "sweeps": {s: f"{config.name}-{s}" for s in ("wrllc", "drllc", "baselines")}}

    def save() -> None:
        record["timings"] = clock.timings | {"total": clock.total()}
        record["reused_stages"] = clock.reused
        write_record(store, KIND, config.name, record)

    with ray_runtime(address, num_cpus):
        with clock.stage("train") as state:
            checkpoints = _train(config, run, progress, state)
        steps = sorted(checkpoints)
        wr_steps = log_spaced(steps, config.checkpoints)
        record["checkpoints"] = [{"checkpoint": checkpoints[s]["uri"], "step": s,
                                  "eval_loss": checkpoints[s]["eval_loss"]} for s in wr_steps]
        with clock.stage("heads") as state:
            record["heads"] = _head_scores(checkpoints, wr_steps, record.get("heads"), state)
        save()
        final = checkpoints[wr_steps[-1]]["uri"]
        with clock.stage("tune") as state:
            record["tune"] = _tune(config, final, record["heads"][str(wr_steps[-1])],
                                   store, progress, state)
        save()
        samplers = record["tune"]["samplers"]
        uris = [checkpoints[s]["uri"] for s in wr_steps]
        base = _spec_base(config, store_uri, samplers)
        heads = [f"{layer}:*" for layer in range(config.train.model.n_layers)]
        with clock.stage("wrllc") as state:
            _sweep(store, base | {"name": record["sweeps"]["wrllc"], "checkpoints": uris,
                           "components": [*heads, "all"], "datasets": ["train"]},
                   progress, state)
        save()
        dr_uris = [checkpoints[s]["uri"] for s in spread(wr_steps, config.drllc_checkpoints)]
        with clock.stage("drllc") as state:
            _sweep(store, base | {"name": record["sweeps"]["drllc"], "checkpoints": dr_uris,
                           "components": heads, "datasets": list(config.datasets)},
                   progress, state)
        save()
        bl_uris = [checkpoints[s]["uri"] for s in spread(wr_steps, config.baseline_checkpoints)]
        with clock.stage("baselines") as state:
            _sweep(store, base | {"name": record["sweeps"]["baselines"], "checkpoints": bl_uris,
                           "components": heads, "datasets": ["train"],
                           "metrics": [m.value for m in BASELINES],
                           "baselines": config.baselines.model_dump(mode="json")},
                   progress, state)
        save()
    from rllc.report import render_report

    with clock.stage("report"):
        save()
        render_report(store_uri, out, config.name)
    # Once more with the report stage's own time in the record, so that the page shows
    # every stage and ``rllc report`` re-renders it byte for byte from the store.
    save()
    index = render_report(store_uri, out, config.name)
    return DemoResult(report=str(index), store=store_uri, seconds=time.perf_counter() - start,
                      timings=dict(clock.timings), reused=list(clock.reused))


#: DemoConfig fields that change no stored number (how the report clusters, how many
#: actors): a re-run may change them.
PRESENTATION = {"clustering", "workers"}


def computed_settings(config: DemoConfig | dict[str, Any] | None) -> dict[str, Any] | None:
    """The settings that make the stored numbers (``config`` without ``PRESENTATION``)."""
    if config is None:
        return None
    dumped = config.model_dump(mode="json") if isinstance(config, DemoConfig) else config
    return {k: v for k, v in dumped.items() if k not in PRESENTATION}


def _train(config: DemoConfig, run: str, progress: bool,
           state: dict[str, bool]) -> dict[int, dict[str, Any]]:
    """Train (or finish, or reuse) the run; ``{step: {uri, eval_loss}}`` of its checkpoints."""
    from rllc.models.checkpoint import list_checkpoints, read_meta, step_of

    from .train import train

    before = list_checkpoints(run) if Path(run).exists() else []
    if before and step_of(before[-1]) == config.train.steps:
        state["reused"] = True
        uris = before
    else:
        uris = train(config.train, run, progress=progress).checkpoints
    out = {}
    for uri in uris:
        meta = read_meta(uri)
        out[step_of(uri)] = {"uri": uri, "eval_loss": float(meta.get("eval_loss", math.nan))}
    return out


def _head_scores(checkpoints: dict[int, dict[str, Any]], steps: list[int],
                 known: dict[str, Any] | None, state: dict[str, bool]) -> dict[str, Any]:
    """``{str(step): [head score dicts]}`` at ``steps`` (those in ``known`` reused)."""
    from rllc.models.checkpoint import load_checkpoint
    from rllc.models.heads import head_scores

    out = dict(known or {})
    todo = [s for s in steps if str(s) not in out]
    state["reused"] = not todo
    for s in todo:
        model, tokenizer, _ = load_checkpoint(checkpoints[s]["uri"])
        out[str(s)] = [h.as_dict() for h in head_scores(model, tokenizer)]
    return {str(s): out[str(s)] for s in steps}


def tune_heads(scores: list[dict[str, Any]]) -> dict[int, str]:
    """The head each layer is tuned on: layer 0's highest previous-token score, every
    other layer's highest induction score (the heads whose formation the paper tracks)."""
    from rllc.models.components import parse_component

    layers = {h["head"]: parse_component(h["head"]).layer for h in scores}
    out: dict[int, str] = {}
    for layer in sorted(set(layers.values())):
        key = "prev_token" if layer == 0 else "induction"
        mine = [h for h in scores if layers[h["head"]] == layer]
        out[layer] = max(mine, key=lambda h: (np.nan_to_num(h[key], nan=-1.0), h["head"]))[
            "head"]
    return out


def _tune(config: DemoConfig, final: str, scores: list[dict[str, Any]], store: TraceStore,
          progress: bool, state: dict[str, bool]) -> dict[str, Any]:
    """Tune ε, γ per layer at the final checkpoint (each finished tune reused)."""
    from rllc.store import UnknownGroupError
    from rllc.store.tuning import tuning_attrs

    from .tune import tune_spec
    from .tune_spec import TuneSpec

    if not config.tune:
        state["reused"] = True
        return {"ids": {}, "heads": {}, "samplers": {}}
    ids, samplers, heads, reused = {}, {}, tune_heads(scores), True
    for layer, head in heads.items():
        tune_id = f"{config.name}-tune-layer{layer}"
        try:
            best = tuning_attrs(store, tune_id).get("best")
        except UnknownGroupError:
            best = None
        if best is None:
            reused = False
            spec = TuneSpec.model_validate({
                "name": tune_id, "checkpoints": [final], "components": [head],
                "datasets": ["train"], "store": store.uri,
                "sampler": config.sampler.model_copy(update={"draws": config.tune_draws}),
                "data": config.data, "search": config.search,
                "resources": Resources(max_workers=config.workers)})
            best = tune_spec(spec, progress=progress)["best"]
        ids[str(layer)] = tune_id
        samplers[f"{layer}:*"] = {k: best[k] for k in COMPONENT_FIELDS}
    state["reused"] = reused
    return {"ids": ids, "heads": {str(k): v for k, v in heads.items()}, "samplers": samplers}


def _spec_base(config: DemoConfig, store_uri: str,
               samplers: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {"store": store_uri, "seeds": [0], "sampler": config.sampler.model_dump(mode="json"),
            "component_samplers": samplers, "data": config.data.model_dump(mode="json"),
            "resources": {"max_workers": config.workers}}


def _sweep(store: TraceStore, spec_data: dict[str, Any], progress: bool,
           state: dict[str, bool]) -> None:
    """Run the sweep (into ``store``, the spec's), or finish it when it exists (every done
    cell reused)."""
    from rllc.store import UnknownGroupError

    from .spec import parse_spec
    from .sweep import run_sweep

    spec = parse_spec(spec_data)
    try:
        progress_now = store.sweep_progress(spec.name)
        exists = True
    except UnknownGroupError:
        progress_now, exists = {}, False
    state["reused"] = exists and progress_now.get("cells_done", 0) + progress_now.get(
        "cells_failed", 0) >= progress_now.get("cells_total", 1)
    run_sweep(spec, resume=exists, progress=progress)
