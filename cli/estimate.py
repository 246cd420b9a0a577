"""``rllc estimate …``: one (refined) LLC point."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from rllc.estimators import SGLDConfig
from rllc.kernels.precision import HELP as PRECISION_HELP
from rllc.kernels.precision import Precision

from .common import (
    BatchSize,
    Burnin,
    Chains,
    Draws,
    JsonFlag,
    Localization,
    NBeta,
    Precond,
    Seed,
    StepSize,
    StepsPerDraw,
    UsageError,
    emit,
    handle_errors,
    sampler_overrides,
)

app = typer.Typer(help="Estimate one (refined) LLC.", no_args_is_help=True)

Threads = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="torch CPU threads (default: rllc.kernels.threads' "
                 "policy: 1 for small problems, else the cores this process may use; "
                 "RLLC_THREADS or OMP_NUM_THREADS override it).", show_default=False),
]


@app.command("dln")
@handle_errors
def dln(
    widths: Annotated[str, typer.Option("--widths", help="Layer widths M,H,N[,…] (input first).")],
    true_rank: Annotated[int, typer.Option("--true-rank", help="Rank r of the teacher.")],
    samples: Annotated[int | None, typer.Option("--samples", help="n, training samples.")] = None,
    step_size: StepSize = None,
    localization: Localization = None,
    nbeta: NBeta = None,
    chains: Chains = None,
    draws: Draws = None,
    burnin: Burnin = None,
    steps_per_draw: StepsPerDraw = None,
    batch_size: BatchSize = None,
    preconditioner: Precond = None,
    seed: Seed = None,
    threads: Threads = None,
    systematic: Annotated[
        bool, typer.Option("--systematic/--no-systematic", help="Also sample at ε/2 to measure "
                           "the step-size bias (llc_systematic); λ̂ is then the ε/2 run's.")
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """LLC of a deep linear network at its trained minimum, beside Aoyagi's exact λ."""
    from itertools import pairwise

    from rllc.estimators.dln import DLN_SAMPLER, DLNProblem, estimate_dln
    from rllc.kernels.threads import dense_step_flops

    try:
        width_list = tuple(int(w) for w in widths.split(","))
    except ValueError as err:
        raise UsageError(f"--widths must be integers separated by commas, got {widths!r}") from err
    problem_fields: dict[str, Any] = {"widths": width_list, "true_rank": true_rank}
    if samples is not None:
        problem_fields["samples"] = samples
    if seed is not None:
        problem_fields["seed"] = seed
    problem = DLNProblem(**problem_fields)
    overrides = sampler_overrides(
        step_size=step_size, localization=localization, nbeta=nbeta, chains=chains,
        draws=draws, burnin=burnin, steps_per_draw=steps_per_draw, batch_size=batch_size,
        preconditioner=preconditioner, seed=seed,
    )
    config = SGLDConfig.model_validate({**DLN_SAMPLER.model_dump(), **overrides})
    # The loss comes from sufficient statistics (S_xx is M × M): a step costs about a
    # forward and backward pass of M inputs per chain, ≈ 2·10⁴ FLOPs for 5,4,5: 1 thread.
    weights = sum(a * b for a, b in pairwise(width_list))
    _use_threads(dense_step_flops(weights, width_list[0], config.chains), threads)
    out = estimate_dln(problem, config, systematic=systematic,
                       progress=not as_json and sys.stderr.isatty())
    emit(out, as_json, _dln_text)


def _use_threads(step_flops: float, threads: int | None) -> int:
    """The thread policy's count for a problem of ``step_flops`` per step, set in torch (a
    malformed ``RLLC_THREADS`` is an error of input)."""
    from rllc.kernels.threads import use_threads

    try:
        return use_threads(step_flops, threads=threads)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _dln_text(out: dict[str, Any]) -> str:
    rel = out["relative_error"]
    rel_text = "" if rel is None else f"  ({100 * rel:+.1f}% relative error)"
    return (
        f"estimated λ̂ = {out['llc_mean']:.3f} {_uncertainty_text(out)}\n"
        f"exact λ     = {out['true_llc']:.3f}  [{out['case']}, multiplicity "
        f"{out['multiplicity'] or '?'}]{rel_text}\n"
        f"{out['chains']} chains × {out['draws']} draws after a burn-in of {out['burnin']}, "
        f"ε = {out['step_size']:g}, nβ = {out['nbeta']:g}, n = {out['samples']}, "
        f"diverged chains: {out['diverged_chains']}, "
        f"MALA acceptance {out['mala_acceptance']:.3f}, {out['seconds']:.1f} s"
    )


def _uncertainty_text(out: dict[str, Any]) -> str:
    """"± SE (s.e.) ± sys (systematic) = ± total", or the SE alone where none was measured."""
    se, sys_ = out["llc_stderr"], out.get("llc_systematic")
    if sys_ is None:
        return f"± {se:.3f} (s.e.; systematic not measured)"
    return f"± {se:.3f} (s.e.) ± {sys_:.3f} (step-size systematic)  = ± {out['llc_total']:.3f}"


@app.command("model")
@handle_errors
def model(
    checkpoint: Annotated[
        str,
        typer.Argument(help="Checkpoint directory (…/ckpt-NNNNNNN, local or s3://), or a run "
                       "directory (its newest checkpoint).", show_default=False),
    ],
    component: Annotated[
        str, typer.Option("--component", help='"L:H", "L:*", all, embed, unembed or a '
                          "parameter-name pattern.", show_default=False),
    ],
    dataset: Annotated[
        str, typer.Option("--dataset", help="train (the model's own mix), code, prose, "
                          "induction, dyck, ngram, generated (sampled from the "
                          "checkpoint itself), or a URI of tokens / text.")
    ] = "train",
    sequences: Annotated[
        int, typer.Option("--sequences", min=1, help="n, sequences in the loss dataset.")
    ] = 256,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or cuda (default: cuda if available).")
    ] = None,
    threads: Threads = None,
    precision: Annotated[
        Precision, typer.Option("--precision", help=f"A head's matmul precision: "
                                f"{PRECISION_HELP}.")
    ] = Precision.FLOAT32,
    step_size: StepSize = None,
    localization: Localization = None,
    nbeta: NBeta = None,
    chains: Chains = None,
    draws: Draws = None,
    burnin: Burnin = None,
    steps_per_draw: StepsPerDraw = None,
    batch_size: BatchSize = None,
    preconditioner: Precond = None,
    seed: Seed = None,
    systematic: Annotated[
        bool, typer.Option("--systematic/--no-systematic", help="Also sample at ε/2 (twice "
                           "the steps) to measure the step-size bias (llc_systematic); λ̂ is "
                           "then the ε/2 run's.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """One (refined) LLC point of a model component on a dataset (no Ray)."""
    import time

    from rllc.estimators.systematic import uncertainty
    from rllc.jobs.session import CheckpointSession
    from rllc.jobs.spec import ComputeOptions, DataOptions, SpecError, check_dataset
    from rllc.jobs.sweep_plan import expand_checkpoints
    from rllc.kernels.threads import dense_step_flops
    from rllc.models.checkpoint import CheckpointError

    start = time.perf_counter()
    config = SGLDConfig(**sampler_overrides(
        step_size=step_size, localization=localization, nbeta=nbeta, chains=chains,
        draws=draws, burnin=burnin, steps_per_draw=steps_per_draw, batch_size=batch_size,
        preconditioner=preconditioner, seed=seed,
    ))
    try:
        check_dataset(dataset)
        target = expand_checkpoints([checkpoint])[-1]
        compute = ComputeOptions(precision=precision)
        session = CheckpointSession(target, DataOptions(n_sequences=sequences), device,
                                    compute)
    except SpecError as err:
        raise UsageError(err.message) from None
    except (CheckpointError, ValueError) as err:
        raise UsageError(str(err)) from None
    weights = sum(p.numel() for p in session.model.parameters())
    tokens = min(config.batch_size, sequences) * session.n_ctx
    _use_threads(dense_step_flops(weights, tokens, config.chains), threads)
    runs = []

    def run(cfg: SGLDConfig):
        runs.append(session.sample(component, dataset, cfg,
                                   progress=not as_json and sys.stderr.isatty()))
        return runs[-1].llc()

    est, errors = uncertainty(run, config, systematic)
    result = runs[-1]
    out = {
        "checkpoint": target, "step": session.step, "component": component,
        "dataset": dataset, "llc_mean": est.llc_mean, "llc_std": est.llc_std,
        "llc_stderr": est.llc_stderr, **errors, "burnin": est.burnin,
        "llc_stderr_ess": est.llc_stderr_ess, "chains": est.chains, "draws": est.draws,
        "diverged_chains": est.diverged_chains, "seconds": time.perf_counter() - start,
        "sampling_seconds": sum(r.seconds for r in runs), "num_weights": result.num_weights,
        "nbeta": result.nbeta, "init_loss": result.init_loss,
        "path": result.extra.get("path"), "precision": result.extra.get("precision", Precision.FLOAT32),
        "threads": result.extra.get("threads"),
        "step_size": result.config.step_size,
        "mala_acceptance": _finite_mean(result.mala_acceptance[:, est.burnin:]),
    }
    emit(out, as_json, _model_text)


def _finite_mean(x: Any) -> float | None:
    """Mean of the finite entries (the first draw has no MALA estimate), None if none."""
    import numpy as np

    x = np.asarray(x)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def _model_text(out: dict[str, Any]) -> str:
    return (
        f"{out['checkpoint']} (step {out['step']}), component {out['component']} "
        f"({out['num_weights']:,} weights), dataset {out['dataset']}\n"
        f"estimated λ̂ = {out['llc_mean']:.3f} {_uncertainty_text(out)}, "
        f"std over chains {out['llc_std']:.3f}\n"
        f"{out['chains']} chains × {out['draws']} draws after a burn-in of {out['burnin']}, "
        f"ε = {out['step_size']:g}, nβ = {out['nbeta']:g}, "
        f"diverged chains: {out['diverged_chains']}, {out['seconds']:.1f} s"
    )
