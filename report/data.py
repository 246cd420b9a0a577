"""Everything a report shows, read from one store: the demo's record (``reports/<id>``),
its three sweeps and its tunes, as plain numpy arrays and dicts (``ReportData``).

Shapes (``ckpt`` = the record's checkpoints, oldest first; ``head`` = the wrLLC sweep's
heads, layer-major):

- ``wrllc[head, ckpt]``, ``wrllc_se[head, ckpt]``: λ̂ of each head on the training mix;
- ``llc[ckpt]``, ``llc_se[ckpt]``: the full model's (component ``all``);
- ``eval_loss[ckpt]`` and ``scores[name][head, ckpt]`` (prev_token, current_token,
  induction, bracket) from the record, ``classes[step][head]``;
- ``drllc[step][head, dataset]`` and ``drllc_ratio[step][head, dataset]`` = drLLC on the
  dataset ÷ the wrLLC sweep's training-mix λ̂ of the head at that step;
- ``baselines[name][head, bstep]`` at ``baseline_steps[bstep]``.

NaN marks a missing value (a cell not run, failed, or with every chain diverged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rllc.store import open_store
from rllc.store.base import TraceStore
from rllc.store.errors import UnknownGroupError
from rllc.store.query import llc_table
from rllc.store.records import list_records, read_record
from rllc.store.tuning import trial_rows, tuning_attrs

#: Score keys of a record's head entries (``rllc.models.heads.HeadScore.as_dict``).
SCORE_KEYS = ("prev_token", "current_token", "induction", "bracket")
#: Which baseline metrics the report asks the baselines sweep for (those it has).
BASELINE_METRICS = ("hessian_trace", "fisher_trace", "hessian_rank", "ablation")
FULL_MODEL = "all"
TRAIN = "train"


@dataclass
class ReportData:
    """A report's inputs (module docstring for the shapes)."""

    report_id: str
    store_uri: str
    record: dict[str, Any]
    steps: np.ndarray
    checkpoints: list[str]
    eval_loss: np.ndarray
    heads: list[str]
    classes: dict[int, list[str]]
    scores: dict[str, np.ndarray]
    wrllc: np.ndarray
    wrllc_se: np.ndarray
    llc: np.ndarray
    llc_se: np.ndarray
    drllc_steps: list[int] = field(default_factory=list)
    drllc_datasets: list[str] = field(default_factory=list)
    drllc: dict[int, np.ndarray] = field(default_factory=dict)
    drllc_ratio: dict[int, np.ndarray] = field(default_factory=dict)
    baseline_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    baselines: dict[str, np.ndarray] = field(default_factory=dict)
    problem_cells: list[dict[str, Any]] = field(default_factory=list)
    tunes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return str(self.record.get("title") or f"rllc report {self.report_id}")

    @property
    def final_step(self) -> int:
        return int(self.steps[-1])

    @property
    def final_classes(self) -> list[str]:
        """``classes[head]`` at the last checkpoint (the types heads develop into)."""
        return self.classes.get(self.final_step, ["multigram"] * len(self.heads))

    def layer(self, head: str) -> int:
        return int(head.split(":")[0])

    def wrllc_at(self, steps: np.ndarray | list[int]) -> np.ndarray:
        """``wrllc[head, i]`` at ``steps[i]`` (NaN where the wrLLC sweep has no such step)."""
        index = {int(s): i for i, s in enumerate(self.steps)}
        out = np.full((len(self.heads), len(steps)), np.nan)
        for j, s in enumerate(steps):
            if int(s) in index:
                out[:, j] = self.wrllc[:, index[int(s)]]
        return out


def load_report_data(store_uri: str, report_id: str | None = None) -> ReportData:
    """Read the record ``reports/<report_id>`` (None: the store's only one) and everything it
    points to in the same store."""
    store = open_store(store_uri, read_only=True)
    report_id = _resolve(store, report_id)
    record = read_record(store, "reports", report_id)
    ckpts = list(record.get("checkpoints") or [])
    steps = np.array([int(c["step"]) for c in ckpts], dtype=int)
    eval_loss = np.array([_num(c.get("eval_loss")) for c in ckpts])
    sweeps = record.get("sweeps") or {}
    problems: list[dict[str, Any]] = []

    wr_rows = _rows(store, sweeps.get("wrllc"), problems, "wrllc")
    heads = sorted({r["component"] for r in wr_rows if r["component"] != FULL_MODEL},
                   key=_head_key)
    if not heads:  # no wrLLC sweep: fall back on the record's head list
        first = next(iter((record.get("heads") or {}).values()), [])
        heads = sorted((h["head"] for h in first), key=_head_key)
    wrllc, wrllc_se = _grid(wr_rows, heads, steps, TRAIN, "llc_mean", "llc_stderr")
    full, full_se = _grid(wr_rows, [FULL_MODEL], steps, TRAIN, "llc_mean", "llc_stderr")

    classes, scores = _head_tables(record, heads, steps)
    data = ReportData(report_id=report_id, store_uri=str(store_uri), record=record,
                      steps=steps, checkpoints=[str(c["checkpoint"]) for c in ckpts],
                      eval_loss=eval_loss, heads=heads, classes=classes, scores=scores,
                      wrllc=wrllc, wrllc_se=wrllc_se, llc=full[0], llc_se=full_se[0])

    dr_rows = _rows(store, sweeps.get("drllc"), problems, "drllc")
    if dr_rows:
        named = list(record.get("drllc_datasets") or [])
        found = {r["dataset"] for r in dr_rows}
        data.drllc_datasets = [d for d in named if d in found] + sorted(found - set(named))
        data.drllc_steps = sorted({int(r["step"]) for r in dr_rows})
        for s in data.drllc_steps:
            values = np.full((len(heads), len(data.drllc_datasets)), np.nan)
            for r in dr_rows:
                if int(r["step"]) == s and r["component"] in heads:
                    values[heads.index(r["component"]),
                           data.drllc_datasets.index(r["dataset"])] = _num(r["llc_mean"])
            data.drllc[s] = values
            with np.errstate(divide="ignore", invalid="ignore"):
                data.drllc_ratio[s] = values / data.wrllc_at([s])  # [head, 1] broadcasts

    base_id = sweeps.get("baselines")
    if base_id:
        _baselines(store, base_id, heads, data, problems)
    data.problem_cells = sorted(problems, key=lambda p: (p["sweep"], p["step"],
                                                         _head_key(p["component"]),
                                                         p["dataset"]))
    data.tunes = _tunes(store, record)
    return data


def _resolve(store: TraceStore, report_id: str | None) -> str:
    if report_id is not None:
        return report_id
    known = list_records(store, "reports")
    if len(known) != 1:
        have = ", ".join(known) if known else "none"
        raise UnknownGroupError(
            f"store {store.uri} has {len(known)} reports ({have}): name one")
    return known[0]


def _rows(store: TraceStore, sweep_id: str | None, problems: list[dict[str, Any]],
          role: str, metrics: list[str] | None = None) -> list[dict[str, Any]]:
    """``llc_table`` rows of a sweep (``[]`` without one); diverged chains and failed cells
    are appended to ``problems``."""
    if not sweep_id:
        return []
    ds = store.open_sweep(sweep_id)
    rows = llc_table(ds, metrics=metrics)
    steps = {str(c): int(s) for c, s in zip(ds["checkpoint"].values, ds["step"].values,
                                             strict=True)}
    for r in rows:
        if r.get("diverged_chains", 0) > 0:
            problems.append({"sweep": role, "step": int(r["step"]), "component": r["component"],
                             "dataset": r["dataset"], "problem": (
                                 f"{r['diverged_chains']} of "
                                 f"{r['diverged_chains'] + r['chains']} chains diverged"
                                 + (" (no estimate)" if not np.isfinite(r["llc_mean"]) else ""))})
    for key, error in store.failed_cells(sweep_id).items():
        last = (error.strip().splitlines() or ["failed"])[-1][:200]
        problems.append({"sweep": role, "step": steps.get(key.checkpoint, -1),
                         "component": key.component, "dataset": key.dataset,
                         "problem": f"failed (seed {key.seed}): {last}"})
    return rows


def _grid(rows: list[dict[str, Any]], components: list[str], steps: np.ndarray,
          dataset: str, value: str, stderr: str) -> tuple[np.ndarray, np.ndarray]:
    """``(values[component, ckpt], stderrs[component, ckpt])`` of the rows on ``dataset``."""
    out = np.full((2, len(components), len(steps)), np.nan)
    col = {int(s): i for i, s in enumerate(steps)}
    for r in rows:
        if r["dataset"] == dataset and r["component"] in components and int(r["step"]) in col:
            i, j = components.index(r["component"]), col[int(r["step"])]
            out[0, i, j], out[1, i, j] = _num(r.get(value)), _num(r.get(stderr))
    return out[0], out[1]


def _head_tables(record: dict[str, Any], heads: list[str], steps: np.ndarray
                 ) -> tuple[dict[int, list[str]], dict[str, np.ndarray]]:
    """``classes[step][head]`` and ``scores[name][head, ckpt]`` from the record's heads."""
    table = record.get("heads") or {}
    classes: dict[int, list[str]] = {}
    scores = {k: np.full((len(heads), len(steps)), np.nan) for k in SCORE_KEYS}
    for j, s in enumerate(steps):
        entries = {e["head"]: e for e in table.get(str(int(s)), [])}
        if not entries:
            continue
        classes[int(s)] = [str(entries.get(h, {}).get("class", "multigram")) for h in heads]
        for i, h in enumerate(heads):
            for k in SCORE_KEYS:
                scores[k][i, j] = _num(entries.get(h, {}).get(k))
    return classes, scores


def _baselines(store: TraceStore, sweep_id: str, heads: list[str], data: ReportData,
               problems: list[dict[str, Any]]) -> None:
    """``data.baselines[column][head, bstep]``: every value column (not ``…_stderr``) of
    the baseline metrics the sweep computed, on the training mix."""
    have = store.sweep_metrics(sweep_id)
    metrics = [m for m in BASELINE_METRICS if m in have]
    rows = _rows(store, sweep_id, problems, "baselines", metrics)
    rows = [r for r in rows if r["dataset"] == TRAIN and r["component"] in heads]
    data.baseline_steps = np.array(sorted({int(r["step"]) for r in rows}), dtype=int)
    columns = [c for m in metrics for c in have[m] if not c.endswith("_stderr")]
    for c in columns:
        values, _ = _grid(rows, heads, data.baseline_steps, TRAIN, c, c)
        if np.isfinite(values).any():
            data.baselines[c] = values


def _tunes(store: TraceStore, record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{key: {"tune_id", "rows", "best", "winner", "sampler"}}`` per tune of the record
    (``key`` as the record names it: a layer, ``"0"``). ``winner`` is the trial whose
    setting was chosen: the tuner reports its ε/2 run as ``best``."""
    tune = record.get("tune") or {}
    samplers = tune.get("samplers") or {}
    out = {}
    for key, tune_id in sorted((tune.get("ids") or {}).items()):
        try:
            rows = trial_rows(store, tune_id)
            best = dict(tuning_attrs(store, tune_id).get("best") or {})
        except UnknownGroupError:
            continue
        out[str(key)] = {"tune_id": tune_id, "rows": rows, "best": best,
                         "winner": _winner(rows, best),
                         "sampler": samplers.get(f"{key}:*") or samplers.get(str(key)) or best}
    return out


def _winner(rows: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
    """The trial at (2ε, γ) of ``best`` if there is one, else the lowest objective, else
    ``best`` itself."""
    if not rows:
        return best
    if best:
        for r in rows:
            if (np.isclose(r["step_size"], 2 * best.get("step_size", np.nan))
                    and np.isclose(r["localization"], best.get("localization", np.nan))):
                return r
    return min(rows, key=lambda r: (r["objective"], r["trial"]))


def _head_key(head: str) -> tuple[int, int, str]:
    """Layer-major order of ``"L:H"`` names; other names after them."""
    try:
        layer, h = head.split(":")
        return int(layer), int(h), ""
    except ValueError:
        return 1 << 30, 0, head


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")

