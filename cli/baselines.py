"""``rllc baselines CHECKPOINT --component C``: Hessian trace, Fisher traces, Hessian rank and
ablation scores of one component, beside which its rLLC can be read (no Ray)."""

from __future__ import annotations

import math
import sys
import time
from typing import Annotated, Any

import typer

from .common import JsonFlag, UsageError, emit, handle_errors

METRICS_HELP = "hessian_trace, fisher_trace, hessian_rank, ablation"


@handle_errors
def baselines_command(
    checkpoint: Annotated[
        str, typer.Argument(help="Checkpoint directory (…/ckpt-NNNNNNN, local or s3://), or "
                            "a run directory (its newest checkpoint).", show_default=False)
    ],
    component: Annotated[
        str, typer.Option("--component", help='"L:H", "L:*", all, embed, unembed or a '
                          "parameter-name pattern (ablations: heads only).",
                          show_default=False),
    ],
    dataset: Annotated[
        str, typer.Option("--dataset", help="train (the model's own mix), code, prose, "
                          "induction, dyck, ngram, generated (sampled from the "
                          "checkpoint itself), or a URI of tokens / text.")
    ] = "train",
    metrics: Annotated[
        str | None, typer.Option("--metrics", help=f"Comma-separated subset of {METRICS_HELP} "
                                 "(default: all four).")
    ] = None,
    sequences: Annotated[
        int | None, typer.Option("--sequences", help="Data subset: the first N sequences of "
                                 "the dataset.")
    ] = None,
    probes: Annotated[
        int | None, typer.Option("--probes", help="Hutchinson probes for the Hessian trace.")
    ] = None,
    rank_tol: Annotated[
        float | None, typer.Option("--rank-tol", help="Rank threshold relative to the largest "
                                   "|eigenvalue|, in (0, 1).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of probes and resampling.")] = 0,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or cuda (default: cuda if available).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Baselines of one component at a checkpoint: Hessian trace (exact or Hutchinson),
    true and empirical Fisher traces per token, Hessian rank (exact or stochastic Lanczos
    quadrature) with the top eigenvalues, and zero / mean / resample ablation scores."""
    from pydantic import ValidationError

    from rllc.jobs.metrics import BASELINES, BaselineOptions, parse_metrics
    from rllc.jobs.session import CheckpointSession
    from rllc.jobs.spec import DataOptions, SpecError, check_dataset
    from rllc.jobs.sweep_plan import expand_checkpoints
    from rllc.models.checkpoint import CheckpointError
    from rllc.models.components import component_selection

    start = time.perf_counter()
    try:
        chosen = parse_metrics(metrics.split(",")) if metrics else list(BASELINES)
    except ValueError as err:
        raise UsageError(f"--metrics: {err}") from None
    given = {"sequences": sequences, "probes": probes, "rank_tol": rank_tol}
    try:
        options = BaselineOptions(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise UsageError(f"{flag}: {first['msg'].removeprefix('Value error, ')}") from None
    try:
        check_dataset(dataset)
        target = expand_checkpoints([checkpoint])[-1]
        session = CheckpointSession(target, DataOptions(n_sequences=options.sequences),
                                    device)
        component_selection(session.model, component)
    except SpecError as err:
        raise UsageError(err.message) from None
    except (CheckpointError, ValueError) as err:
        raise UsageError(str(err)) from None

    def say(msg: str) -> None:
        if not as_json or sys.stderr.isatty():
            print(f"  {msg}", file=sys.stderr)

    found = session.baselines([component], dataset, chosen, options, seed=seed,
                              progress=say)[component]
    out = {"checkpoint": target, "step": session.step, "component": component,
           "dataset": dataset, "metrics": [m.value for m in chosen], **found,
           "metric_seconds": found.pop("seconds"), "seconds": time.perf_counter() - start}
    emit(out, as_json, _human)


def _fmt(value: Any, stderr: Any = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{value:.4g}"
    return text if not stderr else f"{text} ± {stderr:.2g}"


def _human(r: dict[str, Any]) -> str:
    lines = [f"{r['checkpoint']} (step {r['step']}), component {r['component']} "
             f"({r['num_weights']:,} weights), dataset {r['dataset']}, first "
             f"{r['sequences']} sequences"]
    if "hessian_trace" in r:
        how = "exact" if r["hessian_trace_exact"] else f"Hutchinson, {r['hessian_trace_probes']} probes"
        lines.append(f"Hessian trace           {_fmt(r['hessian_trace'], r['hessian_trace_stderr'])}"
                     f"  ({how})")
    if "fisher_trace" in r:
        lines.append(f"Fisher trace, true      {_fmt(r['fisher_trace'], r['fisher_trace_stderr'])}"
                     f"  (per token, y from the model)")
        lines.append(f"Fisher trace, empirical "
                     f"{_fmt(r['empirical_fisher_trace'], r['empirical_fisher_trace_stderr'])}"
                     f"  (per token, observed y)")
    if "hessian_rank" in r:
        how = "exact" if r["hessian_rank_exact"] else "stochastic Lanczos quadrature"
        top = ", ".join(f"{v:.3g}" for v in r["top_eigenvalues"])
        lines.append(f"Hessian rank            {_fmt(r['hessian_rank'], r['hessian_rank_stderr'])}"
                     f"  (|λ| > {r['rank_tol']:g}·max|λ|, {how}); top eigenvalues {top}")
    if "ablation" in r:
        ab = r["ablation"]
        if ab is None:
            lines.append("ablations               n/a (heads only)")
        else:
            lines.append("ablation ΔL             " + ", ".join(
                f"{k} {_fmt(ab[k], ab[f'{k}_stderr'])}" for k in ("zero", "mean", "resample")))
    lines.append(f"{r['seconds']:.1f} s")
    return "\n".join(lines)
