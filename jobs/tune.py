"""``rllc tune``: choose ε, γ (and optionally nβ) with Ray Tune, from chain diagnostics alone.

Each trial samples its targets at one setting and judges it with
``rllc.estimators.tuning`` (divergence, MALA acceptance, stationarity, precision, then
agreement with reruns at ε/2 and γ/2, and at 2nβ where nβ is searched). The runs go in
stages, cheapest first, and a trial reports after each; it stops as soon as a check has
failed (it can no longer pass), and ASHA stops trials whose objective so far ranks in the
worse half at a stage. Optuna's TPE (or a log-spaced grid) proposes settings over
log-scale ranges; the objective prefers, among settings that pass every check, the
largest ε.

Every finished trial writes its traces and checks to the store (``tuning/<tune_id>``,
``rllc.store.tuning``) from its own worker; Ray's experiment state goes to a
``storage_path``, so that a search interrupted half-way resumes (``Tuner.restore``)
with the trials it had finished. When the search is done, the chosen config is confirmed
by a fresh run at that setting (another seed) and an ε/2 rerun (two Ray tasks at once),
and written to the tune's attributes, where a sweep spec finds it (``sampler:
tuned:<store>#<tune id>``). The setting reported is the chosen trial's ε refined as its
checks validated (``refined_best``): ε/2 with twice the steps per draw, since the step
check bounds λ̂(ε) − λ̂(ε/2), about half the ε run's own bias, so the ε run itself may sit
up to twice the margin off; and, where γ is searched and the trial passed, γ/2, the side
of the localization check with the smaller bias (a γ too large pulls λ̂ low).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rllc.estimators import SamplingResult, SGLDConfig
from rllc.estimators.llc import AllChainsDivergedError, LLCEstimate
from rllc.estimators.systematic import halved_step
from rllc.estimators.tuning import Check, TuneCriteria, Verdict, judge_agreement, judge_run
from rllc.store import open_store
from rllc.store.tuning import RUNS, create_tuning, set_best, trial_rows, write_trial

from .spec import Resources
from .tune_spec import SearchAlgorithm, SearchSpace
from .tune_targets import Target

#: Stages of a trial: (run name, the run it is compared with). ``half_localization`` only
#: where γ is searched, ``double_nbeta`` only where nβ is searched (``SEARCHED_BY``).
STAGES: tuple[tuple[str, str | None], ...] = (
    ("base", None),
    ("half_step", "base"),
    ("half_localization", "base"),
    ("double_nbeta", "half_step"),
)
#: The parameter whose search adds a stage (a pinned γ is part of the estimand).
SEARCHED_BY = {"half_localization": "localization", "double_nbeta": "nbeta"}
#: Stored objective of a trial stopped (by ASHA) before its checks were complete.
INCOMPLETE = 0.5
#: The name of the agreement check each refinement run makes.
AGREEMENT = {"half_step": "step", "half_localization": "localization",
             "double_nbeta": "nbeta"}
#: Langevin time of the warm-up, in time constants 2/(ε_w·γ) of the flat directions.
WARMUP_TIME_CONSTANTS = 3.0


class TuneError(RuntimeError):
    """A search that cannot give a setting (every trial diverged)."""


def trial_config(base: SGLDConfig, params: dict[str, float]) -> SGLDConfig:
    """``base`` with the trial's ε, γ (, nβ). Where ``base`` warms up (linear networks), the
    warm-up keeps the base's own ε_w (validated stable; a warm-up at a multiple of a large
    trial ε sits near divergence and leaves the chains far from the posterior at ε) and
    lasts ``WARMUP_TIME_CONSTANTS`` time constants of the flat directions,
    3·2/(ε_w·γ) steps, at most four times the recorded steps."""
    update: dict[str, Any] = {k: float(v) for k, v in params.items()
                              if k in ("step_size", "localization", "nbeta")}
    config = base.model_copy(update=update)
    if base.warmup_steps:
        eps_w = base.warmup_step_size or base.step_size
        gamma = max(config.localization, 1e-12)
        steps = math.ceil(WARMUP_TIME_CONSTANTS * 2 / (eps_w * gamma))
        config = config.model_copy(update={"warmup_steps": min(steps, 4 * config.recorded_steps)})
    return SGLDConfig.model_validate(config.model_dump())


def stage_config(config: SGLDConfig, run: str) -> SGLDConfig:
    """The config of run ``run`` of a trial whose base config is ``config``."""
    if run == "base":
        return config
    if run == "half_step":
        return halved_step(config)
    if run == "half_localization":
        return config.model_copy(update={"localization": config.localization / 2})
    if run == "double_nbeta":
        return halved_step(config).model_copy(update={"nbeta": 2 * float(config.nbeta or 0)})
    raise ValueError(f"unknown run {run!r}")


@dataclass
class TrialOutcome:
    """A trial's verdict, its runs (``results[target][run]``) and the stages it reached."""

    verdict: Verdict
    results: dict[str, dict[str, SamplingResult]] = field(default_factory=dict)
    stages: int = 0
    seconds: float = 0.0


def evaluate(samplers: dict[str, Callable[[SGLDConfig], SamplingResult]],
             config: SGLDConfig, criteria: TuneCriteria, searched: Collection[str],
             report: Callable[[TrialOutcome, bool], None] | None = None) -> TrialOutcome:
    """Run the stages of one setting on every target (those of the ``searched``
    parameters, ``stages_of``), judging as it goes; stop at the first failed check.
    ``report(outcome, final)`` is called after each stage."""
    start = time.perf_counter()
    out = TrialOutcome(Verdict())
    stages = stages_of(searched)
    for i, (run, against) in enumerate(stages):
        cfg = stage_config(config, run)
        for label, sampler in samplers.items():
            result = sampler(cfg)
            out.results.setdefault(label, {})[run] = result
            sub = Verdict()
            est = judge_run(result, criteria, sub, name=run)
            _merge(out.verdict, sub, label, run)
            if est is None:
                break
            if against is not None:
                ref = out.verdict.runs[f"{label}/{against}"]
                agreement = Verdict()
                judge_agreement(AGREEMENT[run], ref, est, criteria, agreement)
                _merge(out.verdict, agreement, label, None)
        out.stages = i + 1
        out.seconds = time.perf_counter() - start
        final = not out.verdict.passed or i == len(stages) - 1
        if report is not None:
            report(out, final)
        if final:
            break
    return out


def _merge(into: Verdict, sub: Verdict, label: str, run: str | None) -> None:
    for c in sub.checks:
        into.checks.append(type(c)(f"{label}/{c.name}", c.value, c.limit))
    for name, est in sub.runs.items():
        into.runs[f"{label}/{name}"] = est
    if sub.all_diverged:
        into.all_diverged = into.all_diverged or run == "base"
        if run != "base":  # a refinement run that diverged entirely fails its trial
            into.checks.append(_diverged_check(f"{label}/diverged_{run}"))


def _diverged_check(name: str) -> Check:
    return Check(name, 1.0, 0.0)


# ---- Ray ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs, shipped once to the workers (``tune.with_parameters``)."""

    targets: tuple[Target, ...]
    base: SGLDConfig
    ranges: dict[str, tuple[float, float]]
    criteria: TuneCriteria
    store: str
    tune_id: str
    threads: int
    first_trial: int  # the counter of the search's first trial (``trial_name``)


def trial_name(trial) -> str:
    """Ray Tune's ``trial_name_creator``: ``trial_<n>``, n the search's trial counter (the
    head of the trial's experiment tag: from 1 with a search algorithm, from 0 on a grid)."""
    return f"trial_{trial.experiment_tag.split('_', 1)[0]}"


def trial_index(name: str, first: int) -> int:
    """The trial's row in the store from its ``trial_name``."""
    return int(name.rsplit("_", 1)[-1]) - first


def trainable(params: dict[str, Any], ctx: TrialContext) -> None:
    """One Ray Tune trial: ``evaluate`` the setting, report each stage, store the trial."""
    import torch
    from ray import tune

    torch.set_num_threads(ctx.threads)
    index = trial_index(tune.get_context().get_trial_name(), ctx.first_trial)
    config = trial_config(ctx.base, params)
    samplers = {t.label: t.sampler() for t in ctx.targets}
    step_range = ctx.ranges["step_size"]
    stages_total = n_stages(ctx.ranges)

    def report(out: TrialOutcome, final: bool) -> None:
        verdict = out.verdict
        objective = (verdict.objective(config.step_size, step_range,
                                       stages_total - out.stages) if final
                     else verdict.penalty)
        first = next(iter(samplers))
        est = verdict.runs.get(f"{first}/base")
        metrics = {
            "objective": float(objective),
            "passed": bool(final and verdict.passed),
            "final": bool(final),
            "stage": out.stages,
            "llc": float(est.llc_mean) if est is not None else float("nan"),
            "failed": ",".join(verdict.failed()),
            **{k: float(v) for k, v in params.items()},
        }
        # stored at every stage, so that a trial ASHA stops is kept as far as it got;
        # unfinished and not failed, it ranks after every passing trial
        stored = objective if final or not verdict.passed else INCOMPLETE
        _store_trial(ctx, index, config, out, float(stored))
        tune.report(metrics)

    evaluate(samplers, config, ctx.criteria, ctx.ranges, report)


def _store_trial(ctx: TrialContext, index: int, config: SGLDConfig, out: TrialOutcome,
                 objective: float) -> None:
    store = open_store(ctx.store)
    labels = [t.label for t in ctx.targets]
    shape = (len(labels), len(RUNS), config.chains, config.draws)
    traces = {k: np.full(shape, np.nan) for k in ("loss", "batch_init_loss", "mala_acceptance")}
    diverged = np.zeros(shape[:3], dtype=bool)
    llc, se = np.full(shape[:2], np.nan), np.full(shape[:2], np.nan)
    burnin = np.full(shape[:2], -1, dtype=np.int64)
    for ti, label in enumerate(labels):
        for run, result in out.results.get(label, {}).items():
            ri = RUNS.index(run)
            for k in traces:
                traces[k][ti, ri] = getattr(result, k)
            diverged[ti, ri] = result.diverged
            est: LLCEstimate | None = out.verdict.runs.get(f"{label}/{run}")
            if est is not None:
                llc[ti, ri], se[ti, ri], burnin[ti, ri] = est.llc_mean, est.llc_stderr, est.burnin
    write_trial(store, ctx.tune_id, index, {
        **traces, "diverged": diverged, "llc_mean": llc, "llc_stderr": se, "burnin": burnin,
        "step_size": config.step_size, "localization": config.localization,
        "nbeta": float(config.nbeta or np.nan), "objective": objective,
        "seconds": out.seconds, "stages": out.stages,
        "passed": out.verdict.passed and objective <= 0,
        "verdict": np.asarray(json.dumps(out.verdict.as_dict(), default=float), dtype=object),
    })


def state_path(store: str, tune_id: str) -> Path:
    """Ray Tune's experiment directory of a tune (its ``storage_path`` / name): under
    ``~/.cache/rllc/tune`` (``RLLC_TUNE_STATE`` overrides), one per (store, tune id)."""
    root = Path(os.environ.get("RLLC_TUNE_STATE") or Path.home() / ".cache/rllc/tune")
    digest = hashlib.sha1(store.encode()).hexdigest()[:8]
    return root.absolute() / f"{tune_id}-{digest}"


@dataclass
class TuneReport:
    """What ``rllc tune --json`` prints (``as_dict``)."""

    tune: str
    store: str
    best: dict[str, Any]
    objective: float
    passed: bool
    trials: int
    trials_per_minute: float
    stopped_early: float
    seconds: float
    confirm: dict[str, dict[str, Any]]
    plot: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "rows"}
        return out


def run_tune(
    targets: Sequence[Target],
    base: SGLDConfig,
    search: SearchSpace,
    kind: str,
    *,
    store: str,
    tune_id: str,
    resources: Resources | None = None,
    progress: bool = True,
    plot: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    best_base: SGLDConfig | None = None,
) -> TuneReport:
    """Search ε, γ (, nβ) for ``targets`` on Ray Tune and confirm the best setting.

    Trials sample with ``base`` (ε, γ, nβ replaced); the chosen setting is reported, and
    confirmed, on ``best_base`` (default ``base``), e.g. a longer run than the trials'.

    Resumes the search if the store already holds the tune and Ray's state for (``store``,
    ``tune_id``) holds an unfinished one; a tune new to the store starts afresh.
    Raises ``TuneError`` when every trial diverged.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .sweep import gpus_per_worker, ray_runtime

    start = time.perf_counter()
    resources = resources or Resources()
    ranges = search.ranges(kind)
    base = base.model_copy(update=search.pinned())
    best_base = best_base and best_base.model_copy(update=search.pinned())
    n_trials = search.n_trials(kind)
    labels = [t.label for t in targets]
    trace_store = open_store(store)
    created = create_tuning(trace_store, tune_id, n_trials, labels, base.chains, base.draws, {
        "search": search.model_dump(mode="json") | {"ranges": ranges},
        "base": base.model_dump(mode="json"), "kind": kind,
        "targets": [t.model_dump(mode="json") for t in targets],
    })
    path = state_path(store, tune_id)
    if created and path.exists():
        # Ray's state of an earlier store at the same URI (deleted since): its trials are
        # not in this store, so it must not be resumed.
        shutil.rmtree(path)
    threads = max(1, int(resources.num_cpus))
    first = 0 if search.algorithm == SearchAlgorithm.GRID else 1
    ctx = TrialContext(tuple(targets), base, ranges, search.criteria, store, tune_id, threads,
                       first)

    with ray_runtime(address, num_cpus):
        import ray

        cluster = ray.cluster_resources()
        gpus = gpus_per_worker(resources, cluster)
        fn = tune.with_resources(tune.with_parameters(trainable, ctx=ctx),
                                 {"cpu": resources.num_cpus, "gpu": gpus})
        concurrent = search.max_concurrent or max(
            1, int(cluster.get("CPU", 1) // resources.num_cpus))
        if tune.Tuner.can_restore(str(path)):
            tuner = tune.Tuner.restore(str(path), trainable=fn, resume_errored=True)
        else:
            tuner = tune.Tuner(fn, param_space=_param_space(search, ranges, kind),
                               tune_config=_tune_config(search, base, ranges, kind,
                                                        concurrent, ASHAScheduler),
                               run_config=tune.RunConfig(
                                   name=path.name, storage_path=str(path.parent), verbose=0,
                                   callbacks=[_progress_callback(n_trials, progress,
                                                                 tune_id)],
                                   failure_config=tune.FailureConfig(max_failures=1)))
        with contextlib.redirect_stdout(sys.stderr):  # Ray Tune's tables: logs, not output
            tuner.fit()

        rows = trial_rows(trace_store, tune_id)
        best_row = _choose(rows, ranges)
        if not best_row["passed"]:
            print(f"rllc tune: no trial passed every check; the setting reported is the "
                  f"least-failing trial's (failed: {best_row['failed'] or 'unfinished'}). "
                  f"Run more trials or change the ranges (docs/tune.md).", file=sys.stderr,
                  flush=True)
        best = refined_best(best_base or base, {k: best_row[k] for k in ranges},
                            best_row["passed"])
        confirm = _confirm(targets, best, {"num_cpus": resources.num_cpus, "num_gpus": gpus},
                           threads)
    seconds = time.perf_counter() - start
    report = TuneReport(
        tune=tune_id, store=store, best=best.model_dump(mode="json"),
        objective=best_row["objective"], passed=best_row["passed"], trials=len(rows),
        trials_per_minute=len(rows) / (seconds / 60), stopped_early=_stopped_share(rows, n_stages(ranges)),
        seconds=seconds, confirm=confirm, rows=rows)
    if plot:
        from rllc.report.tune_map import plot_trials

        report.plot = plot_trials(rows, best_row, kind, plot)
    set_best(trace_store, tune_id, report.best, report.as_dict())
    return report


def refined_best(base: SGLDConfig, params: dict[str, float], passed: bool) -> SGLDConfig:
    """The setting reported for the winning trial's ``params``: ε/2 (twice the steps per
    draw) and, where γ was searched and the trial ``passed``, γ/2, with the warm-up of
    ``trial_config`` at that γ.

    The step check bounds |λ̂(ε) − λ̂(ε/2)|, which to first order is half the ε run's own
    bias, so the ε/2 setting carries half of it. The localization check bounds
    |λ̂(γ) − λ̂(γ/2)|, and λ̂ rises towards λ as γ falls, so γ/2 is the side nearer λ; and
    the trial's γ/2 run, at the full ε, passed, so γ/2 at ε/2 is stable. A trial that
    failed (the least-failing one, reported when none passed) may never have run γ/2, or
    failed its check: its γ stays.
    """
    if passed and "localization" in params:
        params = {**params, "localization": params["localization"] / 2}
    return halved_step(trial_config(base, params))


def stages_of(searched: Collection[str]) -> list[tuple[str, str | None]]:
    """The stages of a trial that searches ``searched``: the γ/2 stage only where γ is
    searched (a pinned γ is part of what is measured), the 2nβ stage only where nβ is."""
    return [s for s in STAGES if SEARCHED_BY.get(s[0], "step_size") in searched]


def n_stages(ranges: Collection[str]) -> int:
    """Stages of a full trial (``stages_of``)."""
    return len(stages_of(ranges))


def _param_space(search: SearchSpace, ranges: dict[str, tuple[float, float]], kind: str):
    from ray import tune

    if search.algorithm == SearchAlgorithm.GRID:
        k = search.grid_points(kind)
        return {name: tune.grid_search([float(x) for x in np.geomspace(lo, hi, k)])
                for name, (lo, hi) in ranges.items()}
    return {name: tune.loguniform(lo, hi) for name, (lo, hi) in ranges.items()}


def _tune_config(search: SearchSpace, base: SGLDConfig, ranges, kind: str, concurrent: int,
                 asha_cls):
    from ray import tune

    scheduler = asha_cls(time_attr="training_iteration", max_t=n_stages(ranges), grace_period=1,
                         reduction_factor=2)
    if search.algorithm == SearchAlgorithm.GRID:
        return tune.TuneConfig(metric="objective", mode="min", scheduler=scheduler,
                               num_samples=1, max_concurrent_trials=concurrent,
                               trial_name_creator=trial_name, reuse_actors=True)
    from optuna.samplers import TPESampler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    start = {k: float(getattr(base, k)) for k in ranges}
    inside = all(lo <= start[k] <= hi for k, (lo, hi) in ranges.items())
    algo = OptunaSearch(sampler=TPESampler(seed=search.seed, n_startup_trials=min(
        10, max(1, search.trials // 2))), points_to_evaluate=[start] if inside else None)
    return tune.TuneConfig(metric="objective", mode="min", scheduler=scheduler,
                           search_alg=ConcurrencyLimiter(algo, max_concurrent=concurrent),
                           num_samples=search.trials, trial_name_creator=trial_name,
                           reuse_actors=True)


def _choose(rows: list[dict[str, Any]], ranges: dict[str, tuple[float, float]]) -> dict:
    """The trial with the lowest objective; ``TuneError`` if every trial diverged."""
    if not rows:
        raise TuneError("no trial finished; see Ray's log for the errors")
    if all(r["failed"] == "diverged" for r in rows):
        lo, hi = ranges["step_size"]
        raise TuneError(
            f"every trial diverged over step_size [{lo:g}, {hi:g}]: try a range below it, "
            f"e.g. search.step_size: [{lo / 1e3:g}, {lo:g}] (or a larger localization)"
        )
    return min(rows, key=lambda r: (r["objective"], -r["step_size"]))


def _stopped_share(rows: list[dict[str, Any]], stages: int) -> float:
    """Share of trials that ended before their last stage (failed early or cut by ASHA)."""
    return sum(r["stages"] < stages for r in rows) / len(rows) if rows else 0.0


def _confirm(targets: Sequence[Target], best: SGLDConfig, options: dict[str, float],
             threads: int) -> dict[str, dict[str, Any]]:
    """A fresh run at the chosen setting (another seed) and an ε/2 rerun, per target: Ray
    tasks (``options``: their resources), all at once."""
    import ray

    fresh = best.model_copy(update={"seed": best.seed + 1})
    task = ray.remote(_confirm_run).options(**options)
    refs = {t.label: [task.remote(t, cfg, threads) for cfg in (fresh, halved_step(fresh))]
            for t in targets}
    out = {}
    for label, pair in refs.items():
        est, fine = ray.get(pair)
        if isinstance(est, str) or isinstance(fine, str):
            out[label] = {"error": est if isinstance(est, str) else fine}
            continue
        diff = abs(est.llc_mean - fine.llc_mean)
        out[label] = {
            "llc_mean": est.llc_mean, "llc_stderr": est.llc_stderr, "burnin": est.burnin,
            "llc_half_step": fine.llc_mean, "llc_half_step_stderr": fine.llc_stderr,
            "llc_systematic": diff,
            "agrees_within_2se": bool(diff <= 2 * math.hypot(est.llc_stderr, fine.llc_stderr)),
        }
    return out


def _confirm_run(target: Target, config: SGLDConfig, threads: int) -> LLCEstimate | str:
    """One confirmation run (a Ray task): its λ̂, or the error if every chain diverged."""
    import torch

    torch.set_num_threads(threads)
    try:
        return target.sampler()(config).llc()
    except AllChainsDivergedError as err:
        return str(err)


def _progress_callback(total: int, enabled: bool, tune_id: str):
    """A Ray Tune callback with a tqdm bar of finished trials on stderr (Ray Tune's own
    tables are off). It ends its bar when the experiment ends."""
    from ray.tune import Callback

    class ProgressBar(Callback):
        # Ray pickles the callbacks with the tuner's state, and ``Tuner.restore`` unpickles
        # them: the state is the bar's settings, and the bar itself is made on first use.
        def __init__(self) -> None:
            self.settings = {"total": total, "enabled": enabled, "tune_id": tune_id}
            self.bar = None

        def __getstate__(self) -> dict[str, Any]:
            return {"settings": self.settings}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.settings, self.bar = state["settings"], None

        def _tick(self) -> None:
            if self.bar is None:
                from tqdm.auto import tqdm

                cfg = self.settings
                self.bar = tqdm(total=cfg["total"], desc=f"tune {cfg['tune_id']}",
                                unit="trial", file=sys.stderr, disable=not cfg["enabled"],
                                dynamic_ncols=True)
            self.bar.update(1)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._tick()

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._tick()

        def on_experiment_end(self, trials, **info) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return ProgressBar()


# ---- entry points ---------------------------------------------------------------------

#: Draws of a linear network's trial: a quarter of the estimate's (``DLN_SAMPLER``), since
#: each trial makes up to three runs and a search makes dozens of trials; the chosen
#: setting is confirmed at the full length.
DLN_TRIAL_DRAWS = 500


def dln_base() -> SGLDConfig:
    """The trial config of linear networks: ``DLN_SAMPLER`` at ``DLN_TRIAL_DRAWS`` draws."""
    from rllc.estimators.dln import DLN_SAMPLER

    return DLN_SAMPLER.model_copy(update={"draws": DLN_TRIAL_DRAWS})


def tune_dln(problem, search: SearchSpace | None = None, *, store: str,
             tune_id: str | None = None, base: SGLDConfig | None = None,
             best_base: SGLDConfig | None = None, **kwargs: Any) -> dict[str, Any]:
    """Tune a deep linear network (``rllc.estimators.dln.DLNProblem``) as ``rllc tune dln``
    does: trials with ``base`` (default ``dln_base()``), the chosen setting on
    ``best_base`` (default ``DLN_SAMPLER``, the estimate's full length); ``run_tune``'s report plus the confirmation's λ̂ beside
    the exact λ."""
    from rllc.estimators.dln import DLN_SAMPLER

    from .tune_targets import DLNTarget

    target = DLNTarget(problem=problem)
    report = run_tune([target], base or dln_base(), search or SearchSpace(), "dln",
                      store=store, tune_id=tune_id or target.label, best_base=best_base or DLN_SAMPLER, **kwargs)
    out = report.as_dict()
    confirm = report.confirm[target.label]
    exact = problem.exact.llc
    out |= {k: confirm.get(k) for k in ("llc_mean", "llc_stderr", "llc_systematic")}
    out["true_llc"] = exact
    llc = confirm.get("llc_mean")
    out["relative_error"] = (llc - exact) / exact if llc is not None and exact else None
    return out


def tune_spec(spec, *, progress: bool = True, plot: str | None = None,
              address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Tune the (checkpoint, component, dataset) points of a ``TuneSpec`` (its first seed)."""
    from .sweep_plan import resolve
    from .tune_targets import PointTarget

    plan = resolve(spec)
    targets, seen = [], set()
    for key in plan.grid.cells():
        point = (key.checkpoint, key.component, key.dataset)
        if point not in seen:
            seen.add(point)
            targets.append(PointTarget(checkpoint=key.checkpoint, component=key.component,
                                       dataset=key.dataset, data=spec.data,
                                       compute=spec.compute))
    base = spec.sampler.model_copy(update={"seed": spec.seeds[0]})
    report = run_tune(targets, base, spec.search, "model", store=plan.store,
                      tune_id=spec.name, resources=spec.resources, progress=progress,
                      plot=plot, address=address, num_cpus=num_cpus)
    return report.as_dict()
