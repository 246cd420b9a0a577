"""``rllc tune SPEC`` and ``rllc tune dln``: choose SGLD settings with Ray Tune."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .common import JsonFlag, UsageError, emit, handle_errors, table
from .sweep import Address, NumCpus


def _range(text: str | None, flag: str, pin: bool = False) -> tuple[float, float] | float | None:
    """``LO,HI``; with ``pin`` also one number (the parameter pinned, not searched)."""
    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if pin and len(values) == 1:
        return values[0]
    if len(values) != 2:
        raise UsageError(f"{flag} must be LO,HI (two numbers){' or one number' if pin else ''}, "
                         f"got {text!r}")
    return values


class SpecOrSubcommand(TyperGroup):
    """``rllc tune SPEC`` beside ``rllc tune dln``: a first argument that is not a
    subcommand is the spec of the hidden ``default_command``."""

    default_command = "spec"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=SpecOrSubcommand, no_args_is_help=True,
                  help="Choose SGLD settings with Ray Tune, from chain diagnostics alone: "
                  "rllc tune SPEC [flags] for the points of a tune spec (a sweep spec with a "
                  "search: block; the flags are those of rllc tune dln from --trials on), or "
                  "rllc tune dln … (docs/tune.md).")

Trials = Annotated[int | None, typer.Option("--trials", min=1, help="Trials (default 24).")]
Algorithm = Annotated[str | None, typer.Option("--algorithm", help="optuna (TPE) or grid.")]
StepRange = Annotated[str | None, typer.Option(
    "--step-size-range", help="LO,HI of ε (log scale).")]
GammaRange = Annotated[str | None, typer.Option(
    "--localization-range", help="LO,HI of γ (log scale), or one γ: pinned, not searched.")]
NBetaRange = Annotated[str | None, typer.Option(
    "--nbeta-range", help="LO,HI of nβ, to search it too.")]
Plot = Annotated[Path | None, typer.Option(
    "--plot", help="PNG map of the trials (default: <store>-<tune id>.png beside a local "
    "store, <tune id>.png here for s3:// stores).")]


def _search(trials, algorithm, step_size, localization, nbeta) -> dict[str, Any]:
    return {k: v for k, v in {
        "trials": trials, "algorithm": algorithm,
        "step_size": _range(step_size, "--step-size-range"),
        "localization": _range(localization, "--localization-range", pin=True),
        "nbeta": _range(nbeta, "--nbeta-range"),
    }.items() if v is not None}


def _run(fn, as_json: bool) -> None:
    from rllc.jobs.spec import SpecError
    from rllc.jobs.tune import TuneError
    from rllc.store import LayoutMismatchError

    try:
        out = fn(sys.stderr.isatty() or not as_json)
    except (SpecError, LayoutMismatchError) as err:
        raise UsageError(str(err)) from None
    except TuneError as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(1) from None
    emit(out, as_json, _human)


@app.command("spec", hidden=True)
@handle_errors
def spec_command(
    spec: Annotated[Path, typer.Argument(metavar="SPEC", help="Tune spec, YAML or JSON: a "
                                         "sweep spec with a search: block.",
                                         show_default=False)],
    trials: Trials = None,
    algorithm: Algorithm = None,
    step_size: StepRange = None,
    localization: GammaRange = None,
    nbeta: NBetaRange = None,
    plot: Plot = None,
    address: Address = None,
    num_cpus: NumCpus = None,
    as_json: JsonFlag = False,
) -> None:
    """Tune the spec's (checkpoint, component, dataset) points (docs/tune.md)."""
    overrides = _search(trials, algorithm, step_size, localization, nbeta)
    _run(lambda progress: _tune_spec(spec, overrides, plot, address, num_cpus, progress),
         as_json)


@app.command("dln")
@handle_errors
def dln_command(
    widths: Annotated[str, typer.Option("--widths", help="Layer widths M,H,N[,…].")],
    true_rank: Annotated[int, typer.Option("--true-rank", help="Rank r of the teacher.")],
    seed: Annotated[int | None, typer.Option("--seed", help="Problem seed.")] = None,
    chains: Annotated[int | None, typer.Option(
        "--chains", min=1, help="Chains of each trial (default 16).")] = None,
    draws: Annotated[int | None, typer.Option(
        "--draws", min=2, help="Draws of each trial (default 500; the chosen setting is "
        "confirmed at the estimate's 2,000).")] = None,
    trials: Trials = None,
    algorithm: Algorithm = None,
    step_size: StepRange = None,
    localization: GammaRange = None,
    nbeta: NBetaRange = None,
    store: Annotated[str | None, typer.Option(
        "--store", help="Trace store (default ./rllc-store).")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Tune id (default dln-<widths>-r<r>-s<seed>).")] = None,
    plot: Plot = None,
    address: Address = None,
    num_cpus: NumCpus = None,
    as_json: JsonFlag = False,
) -> None:
    """Tune a deep linear network; the tuned estimate beside its exact λ."""
    overrides = _search(trials, algorithm, step_size, localization, nbeta)
    trial = {k: v for k, v in {"chains": chains, "draws": draws}.items() if v is not None}
    _run(lambda progress: _tune_dln(widths, true_rank, seed, trial, overrides, store, name,
                                    plot, address, num_cpus, progress), as_json)


def _tune_dln(widths, true_rank, seed, trial, overrides, store, name, plot, address,
              num_cpus, progress) -> dict[str, Any]:
    from rllc.estimators.dln import DLNProblem
    from rllc.jobs.tune import dln_base, tune_dln
    from rllc.jobs.tune_spec import parse_search
    from rllc.store import DEFAULT_STORE

    try:
        width_list = tuple(int(w) for w in widths.split(","))
    except ValueError:
        raise UsageError(f"--widths must be integers separated by commas, got {widths!r}") from None
    problem = DLNProblem(widths=width_list, true_rank=true_rank,
                         **({"seed": seed} if seed is not None else {}))
    search = parse_search(overrides)
    store = store or DEFAULT_STORE
    tune_id = name or None
    from rllc.jobs.tune_targets import DLNTarget

    label = tune_id or DLNTarget(problem=problem).label
    base = dln_base().model_copy(update=trial) if trial else None
    return tune_dln(problem, search, store=store, tune_id=label, base=base,
                    plot=str(plot or _default_plot(store, label)), progress=progress,
                    address=address, num_cpus=num_cpus)


def _tune_spec(path: Path, overrides, plot, address, num_cpus, progress) -> dict[str, Any]:
    import yaml

    from rllc.jobs.tune import tune_spec
    from rllc.jobs.tune_spec import load_tune_spec, parse_tune_spec

    spec = load_tune_spec(path)
    if overrides:
        data = spec.model_dump(mode="json")
        data["search"] = {**yaml.safe_load(yaml.safe_dump(data["search"])), **overrides}
        spec = parse_tune_spec(data)
    return tune_spec(spec, progress=progress,
                     plot=str(plot or _default_plot(spec.store, spec.name)),
                     address=address, num_cpus=num_cpus)


def _default_plot(store: str, tune_id: str) -> Path:
    if "://" in store:
        return Path(f"{tune_id}.png")
    return Path(store).parent / f"{Path(store).name}-{tune_id}.png"


def _human(r: dict[str, Any]) -> str:
    best = r["best"]
    lines = [
        f"tune {r['tune']} in {r['store']}: {r['trials']} trials in {r['seconds']:.0f} s "
        f"({r['trials_per_minute']:.1f}/min, {100 * r['stopped_early']:.0f}% stopped early)",
        f"best: ε = {best['step_size']:.3g}, γ = {best['localization']:.3g}, "
        f"nβ = {best['nbeta']:.4g}  (objective {r['objective']:.3f}, "
        f"{'every check passed' if r['passed'] else 'NO trial passed every check'})",
    ]
    rows = [{"target": t, **c} for t, c in r["confirm"].items()]
    if rows:
        lines.append("confirmation (fresh seed; ε/2 rerun beside):")
        lines.append(table(rows, [k for k in ("target", "llc_mean", "llc_stderr",
                                              "llc_half_step", "llc_systematic",
                                              "agrees_within_2se") if k in rows[0]]))
    if r.get("true_llc") is not None:
        lines.append(f"exact λ = {r['true_llc']:.3f}, relative error "
                     f"{100 * (r['relative_error'] or 0):+.1f}%")
    if r.get("plot"):
        lines.append(f"map: {r['plot']}")
    return "\n".join(lines)
