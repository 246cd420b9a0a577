"""A tune's trials in a store: the group ``tuning/<tune_id>`` beside the sweeps.

Dimensions: ``trial`` (one per trial the search may start), ``target`` (the problems each
trial samples: a linear network, or (checkpoint, component, dataset) points), ``run``
(the runs of a trial: ``base`` at the trial's (ε, γ, nβ), then the refinement runs that
check it) and ``chain``, ``draw``. Per trial: the setting (``step_size``,
``localization``, ``nbeta``), the ``objective``, whether it ``passed``, its checks as JSON
(``verdict``) and ``done``, written last by the trial's own writer (one chunk per trial,
as one chunk per sweep cell). Per (trial, target, run): ``llc_mean``, ``llc_stderr``,
``burnin`` and the traces ``loss``, ``batch_init_loss``, ``mala_acceptance`` with
``diverged[chain]``, NaN where a run was not made (the trial stopped before it).

The group's ``rllc`` attribute holds the search (ranges, algorithm, criteria), the base
sampler config and, once the search has finished, ``best``: the chosen sampler config,
which a sweep spec reads as ``sampler: tuned:<store URI>#<tune id>``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import TraceStore
from .errors import UnknownGroupError
from .layout import ArraySpec, GroupLayout, group_path
from .sweep import software_versions

TUNING_VERSION = 1
#: The runs a trial may make, in order (``rllc.estimators.tuning``'s checks).
RUNS = ("base", "half_step", "half_localization", "double_nbeta")
TRIAL_TRACES = {
    "loss": "L_B(w) at each draw",
    "batch_init_loss": "L_B(w*) on the same minibatch",
    "mala_acceptance": "MALA acceptance estimate of the step before the draw",
}
TRIAL_FLOATS = ("step_size", "localization", "nbeta", "objective", "seconds", "stages")


def tuning_layout(tune_id: str, trials: int, targets: Sequence[str], chains: int, draws: int,
                  attrs: Mapping[str, Any]) -> GroupLayout:
    """The group of a tune (module docstring)."""
    sizes = {"trial": trials, "target": len(targets), "run": len(RUNS), "chain": chains,
             "draw": draws}
    arrays: dict[str, ArraySpec] = {
        "trial": ArraySpec(("trial",), "int64", -1, np.arange(trials, dtype=np.int64)),
        "target": ArraySpec(("target",), "str", "", np.array(list(targets), dtype=object)),
        "run": ArraySpec(("run",), "str", "", np.array(RUNS, dtype=object)),
        "chain": ArraySpec(("chain",), "int64", -1, np.arange(chains, dtype=np.int64)),
        "draw": ArraySpec(("draw",), "int64", -1, np.arange(draws, dtype=np.int64)),
    }
    cube = ("trial", "target", "run")
    for name, doc in TRIAL_TRACES.items():
        arrays[name] = ArraySpec((*cube, "chain", "draw"), "float64", np.nan,
                                 attrs={"long_name": doc})
    arrays["diverged"] = ArraySpec((*cube, "chain"), "bool", False)
    for name in ("llc_mean", "llc_stderr"):
        arrays[name] = ArraySpec(cube, "float64", np.nan)
    arrays["burnin"] = ArraySpec(cube, "int64", -1)
    for name in TRIAL_FLOATS:
        arrays[name] = ArraySpec(("trial",), "float64", np.nan)
    arrays["passed"] = ArraySpec(("trial",), "bool", False)
    arrays["verdict"] = ArraySpec(("trial",), "str", "",
                                  attrs={"long_name": "checks of the trial, as JSON"})
    arrays["done"] = ArraySpec(("trial",), "bool", False)
    meta = {
        "kind": "tuning",
        "tuning_version": TUNING_VERSION,
        "tune_id": tune_id,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **json.loads(json.dumps(dict(attrs), default=str)),
    }
    return GroupLayout(sizes=sizes, arrays=arrays,
                       attrs={"rllc": meta, "versions": software_versions()},
                       unit_dims=("trial",))


def create_tuning(store: TraceStore, tune_id: str, trials: int, targets: Sequence[str],
                  chains: int, draws: int, attrs: Mapping[str, Any]) -> bool:
    """Create the group of a tune; a no-op (False) if it already exists complete, as when
    an interrupted search resumes."""
    path = group_path("tuning", tune_id)
    if store.exists(path) and "rllc" in store.read_attrs(path):
        return False
    store.create(path, tuning_layout(tune_id, trials, targets, chains, draws, attrs))
    return True


def write_trial(store: TraceStore, tune_id: str, trial: int, values: Mapping[str, Any]) -> None:
    """One trial's arrays (``values[name]`` without the trial axis), then its done flag."""
    path = group_path("tuning", tune_id)
    store.write(path, {k: np.asarray(v) for k, v in values.items()}, {"trial": trial})
    store.write(path, {"done": np.asarray(True)}, {"trial": trial})


def tuning_attrs(store: TraceStore, tune_id: str) -> dict[str, Any]:
    """The ``rllc`` attribute of a tune: search, base config, ``best`` when finished."""
    path = group_path("tuning", tune_id)
    if not store.exists(path):
        known = store.list("tuning")
        raise UnknownGroupError(
            f"store {store.uri} has no tune {tune_id!r}"
            + (f"; it has: {', '.join(known)}" if known else "; it has no tunes")
        )
    return dict(store.read_attrs(path)["rllc"])


def set_best(store: TraceStore, tune_id: str, best: Mapping[str, Any],
             summary: Mapping[str, Any]) -> None:
    """Record the chosen sampler config (and the search's summary) in the tune's attributes."""
    store.update_attrs(group_path("tuning", tune_id),
                       {"rllc": {**tuning_attrs(store, tune_id), "best": dict(best),
                                 "summary": json.loads(json.dumps(dict(summary), default=str))}})


def trial_rows(store: TraceStore, tune_id: str) -> list[dict[str, Any]]:
    """One row per finished trial: setting, objective, pass/fail, failed checks, and λ̂ ± SE
    of the base run of each target (``llc_mean``/``llc_stderr`` for the first target)."""
    ds = store.read(group_path("tuning", tune_id))
    done = np.asarray(ds["done"].values, dtype=bool)
    targets = [str(t) for t in ds["target"].values]
    rows = []
    for i in np.flatnonzero(done):
        verdict = json.loads(str(ds["verdict"].values[i]) or "{}")
        llc = ds["llc_mean"].values[i, :, 0]
        se = ds["llc_stderr"].values[i, :, 0]
        row = {
            "trial": int(i),
            "step_size": float(ds["step_size"].values[i]),
            "localization": float(ds["localization"].values[i]),
            "nbeta": float(ds["nbeta"].values[i]),
            "objective": float(ds["objective"].values[i]),
            "passed": bool(ds["passed"].values[i]),
            "llc_mean": _num(llc[0]),
            "llc_stderr": _num(se[0]),
            "failed": ",".join(verdict.get("failed", [])),
            "seconds": float(ds["seconds"].values[i]),
            "stages": int(ds["stages"].values[i]),
        }
        if len(targets) > 1:
            row |= {f"llc[{t}]": _num(v) for t, v in zip(targets, llc, strict=True)}
        rows.append(row)
    return rows


def _num(x: Any) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None
