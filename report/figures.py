"""The report's figures: each function draws one PNG and writes the CSV of the numbers behind
it into ``out_dir`` and returns a ``Figure`` (file names, title, caption); it returns None
when the store holds no data for it.

Output is deterministic: fixed sizes and dpi, no date or software stamp in the PNG
(``metadata={"Software": None}``; Agg writes no time), rows in a fixed order and floats
written with ``repr``-like precision, so rendering twice gives the same bytes.

Curves are drawn over ``step + 1`` on a log axis (step 0, the initialisation, stays on it).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rllc.analysis import normalise

from .analyse import ReportAnalysis
from .data import SCORE_KEYS, ReportData
from .tune_map import plot_trials

DPI = 100
#: No software stamp in the PNG (matplotlib's Agg adds no date), so bytes repeat.
PNG_METADATA = {"Software": None}
STEP_LABEL = "training step + 1 (log scale)"
RC = {"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7, "figure.dpi": DPI}


@dataclass(frozen=True)
class Figure:
    """One figure of the report: ``png`` and ``csvs`` are file names in the output dir."""

    key: str
    title: str
    caption: str
    png: str
    csvs: list[str] = field(default_factory=list)


def all_figures(data: ReportData, result: ReportAnalysis, out_dir: str | Path) -> list[Figure]:
    """Every figure there is data for, in report order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = [
        wrllc_curves(data, result, out),
        drllc_heatmap(data, result, out),
        baselines_by_head(data, result, out),
        loss_and_llc(data, result, out),
        head_scores(data, result, out),
        *tune_maps(data, out),
    ]
    return [f for f in found if f is not None]


def wrllc_curves(data: ReportData, result: ReportAnalysis, out: Path) -> Figure | None:
    """(1) wrLLC of each head over log step, one panel per layer, coloured by K-means
    cluster, ± one standard error, each line labelled with its head and class."""
    if not np.isfinite(data.wrllc).any():
        return None
    plt = _pyplot()
    layers = sorted({data.layer(h) for h in data.heads})
    colours = plt.get_cmap("tab10").colors
    x = data.steps + 1
    with plt.rc_context(RC):
        fig, axes = plt.subplots(1, len(layers), figsize=(5.5 * len(layers), 4.2),
                                 squeeze=False, constrained_layout=True)
        for ax, layer in zip(axes[0], layers, strict=True):
            shown: set[int] = set()
            for i, head in enumerate(data.heads):
                if data.layer(head) != layer:
                    continue
                c = int(result.clusters[i])
                colour = colours[c % len(colours)]
                y, se = data.wrllc[i], data.wrllc_se[i]
                ax.plot(x, y, "-o", ms=3, color=colour,
                        label=None if c in shown else f"cluster {c}")
                shown.add(c)
                ax.fill_between(x, y - se, y + se, color=colour, alpha=0.15, lw=0)
                last = np.flatnonzero(np.isfinite(y))
                if last.size:
                    j = last[-1]
                    ax.annotate(f"{head} {result.classes[i]}", (x[j], y[j]),
                                xytext=(4, 0), textcoords="offset points", fontsize=7,
                                color=colour, va="center")
            ax.set(xscale="log", xlabel=STEP_LABEL, ylabel="wrLLC λ̂ (training mix)",
                   title=f"layer {layer}")
            ax.margins(x=0.25)
            ax.legend(loc="upper left")
        _save(fig, out / "wrllc_curves.png")
    rows = [[h, data.layer(h), result.classes[i], int(result.clusters[i]), int(s),
             data.wrllc[i, j], data.wrllc_se[i, j]]
            for i, h in enumerate(data.heads) for j, s in enumerate(data.steps)]
    write_csv(out / "wrllc_curves.csv",
               ["head", "layer", "class", "cluster", "step", "wrllc", "wrllc_stderr"], rows)
    return Figure("wrllc", "Weight-refined LLC of each head over training",
                  f"wrLLC λ̂ of each head on the training mix at each checkpoint, ± one "
                  f"standard error; colour = K-means cluster of the normalised curves "
                  f"(k = {result.k}), label = head and its class at the last checkpoint.",
                  "wrllc_curves.png", ["wrllc_curves.csv"])


def drllc_heatmap(data: ReportData, result: ReportAnalysis, out: Path) -> Figure | None:
    """(2) ``ratio[head, dataset]`` at the last drLLC step, coloured by log2 ratio."""
    step = result.drllc_step
    if step is None:
        return None
    plt = _pyplot()
    ratio = data.drllc_ratio[step]
    labels = [f"{h} {result.classes[i]}" for i, h in enumerate(data.heads)]
    with np.errstate(divide="ignore", invalid="ignore"):
        logr = np.log2(np.where(ratio > 0, ratio, np.nan))
    top = float(np.nanmax(np.abs(logr))) if np.isfinite(logr).any() else 1.0
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(1.1 * len(data.drllc_datasets) + 3,
                                        0.35 * len(data.heads) + 1.6), constrained_layout=True)
        im = ax.imshow(logr, cmap="RdBu_r", vmin=-max(top, 0.1), vmax=max(top, 0.1),
                       aspect="auto")
        for (i, j), v in np.ndenumerate(ratio):
            ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.2f}", ha="center",
                    va="center", fontsize=7)
        ax.set_xticks(range(len(data.drllc_datasets)), data.drllc_datasets)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(f"drLLC ratio at step {step}")
        fig.colorbar(im, ax=ax, label="log2 ratio")
        _save(fig, out / "drllc_ratio.png")
    train = data.wrllc_at([step])[:, 0]
    rows = [[h, result.classes[i], d, step, data.drllc[step][i, j], train[i], ratio[i, j]]
            for i, h in enumerate(data.heads) for j, d in enumerate(data.drllc_datasets)]
    write_csv(out / "drllc_ratio.csv",
               ["head", "class", "dataset", "step", "drllc", "drllc_train", "ratio"], rows)
    return Figure("drllc", "Data-refined LLC: which data each head serves",
                  f"At step {step}, each entry is the head's drLLC on that dataset divided by "
                  "its drLLC on the training mix at the same checkpoint (above 1, red: the "
                  "head's loss landscape is more complex on that data).",
                  "drllc_ratio.png", ["drllc_ratio.csv"])


def baselines_by_head(data: ReportData, result: ReportAnalysis, out: Path) -> Figure | None:
    """(3) Small multiples, one panel per head: the wrLLC and each baseline over the
    baseline steps, each min-max normalised so their shapes compare."""
    if not data.baselines or not len(data.baseline_steps):
        return None
    plt = _pyplot()
    series = {"wrllc": data.wrllc_at(data.baseline_steps), **data.baselines}
    normed = {name: normalise(v) for name, v in series.items()}
    n = len(data.heads)
    cols = min(4, n)
    rows_n = -(-n // cols)
    x = data.baseline_steps + 1
    with plt.rc_context(RC):
        fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.4 * rows_n + 0.6),
                                 squeeze=False, sharex=True, sharey=True,
                                 constrained_layout=True)
        for i, head in enumerate(data.heads):
            ax = axes.flat[i]
            for name, v in normed.items():
                wr = name == "wrllc"
                ax.plot(x, v[i], "-" if wr else "--", marker="o" if wr else ".",
                        lw=2.2 if wr else 1, color="k" if wr else None, label=name)
            ax.set(xscale="log", title=f"{head} {result.classes[i]}")
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        for ax in axes[-1]:
            ax.set_xlabel(STEP_LABEL)
        # one legend beside the grid: inside a panel it would hide that head's curves
        fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside right upper",
                   fontsize=6)
        fig.suptitle("wrLLC and baselines per head (each normalised to [0, 1])")
        _save(fig, out / "baselines.png")
    rows = [[h, int(s), name, series[name][i, j], normed[name][i, j]]
            for i, h in enumerate(data.heads) for name in series
            for j, s in enumerate(data.baseline_steps)]
    write_csv(out / "baselines.csv", ["head", "step", "metric", "value", "normalised"], rows)
    return Figure("baselines", "wrLLC beside the baselines, head by head",
                  "Each panel is one head: its wrLLC (black) and each baseline (Hessian "
                  "trace, Fisher trace, Hessian rank, ablations) over the baseline sweep's "
                  "steps, each min-max normalised over those steps so the shapes compare.",
                  "baselines.png", ["baselines.csv"])


def loss_and_llc(data: ReportData, result: ReportAnalysis, out: Path) -> Figure | None:
    """(4) Eval loss and the full-model LLC over log step, stage boundaries marked."""
    if not (np.isfinite(data.eval_loss).any() or np.isfinite(data.llc).any()):
        return None
    plt = _pyplot()
    x = data.steps + 1
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(8, 4.2), constrained_layout=True)
        ax.plot(x, data.eval_loss, "-o", ms=3, color="C0", label="eval loss")
        ax.set(xscale="log", xlabel=STEP_LABEL, ylabel="eval loss")
        ax2 = ax.twinx()
        ax2.plot(x, data.llc, "-s", ms=3, color="C3", label="full-model LLC")
        ax2.fill_between(x, data.llc - data.llc_se, data.llc + data.llc_se, color="C3",
                         alpha=0.15, lw=0)
        ax2.set_ylabel("full-model LLC λ̂")
        for b in result.llc_boundaries:
            ax.axvline(b.step + 1, color="C3", lw=1, alpha=0.6)
        for b in result.loss_boundaries:
            ax.axvline(b.step + 1, color="C0", lw=1, ls="--", alpha=0.6)
        handles = ax.get_lines()[:1] + ax2.get_lines()[:1]
        ax.legend(handles, [h.get_label() for h in handles], loc="upper center")
        ax.set_title("Training loss and full-model LLC; LLC boundaries solid, loss "
                     "boundaries dashed")
        _save(fig, out / "loss_llc.png")
    write_csv(out / "loss_llc.csv", ["step", "eval_loss", "llc", "llc_stderr"],
               [[int(s), data.eval_loss[j], data.llc[j], data.llc_se[j]]
                for j, s in enumerate(data.steps)])
    write_csv(out / "stage_boundaries.csv", ["curve", "kind", "step"],
               [["llc", b.kind, b.step] for b in result.llc_boundaries]
               + [["eval_loss", b.kind, b.step] for b in result.loss_boundaries])
    return Figure("stages", "Stages: eval loss and the full-model LLC",
                  "Eval loss (blue, left axis) and the full-model LLC ± one standard error "
                  "(red, right axis). Vertical lines: stage boundaries (extrema and plateau "
                  "edges over log step, rllc.analysis.stages) of the LLC (solid) and of the "
                  "loss (dashed).",
                  "loss_llc.png", ["loss_llc.csv", "stage_boundaries.csv"])


def head_scores(data: ReportData, result: ReportAnalysis, out: Path) -> Figure | None:
    """(6) The attention-pattern scores ``scores[name][head, ckpt]`` over training."""
    if not any(np.isfinite(v).any() for v in data.scores.values()):
        return None
    plt = _pyplot()
    with plt.rc_context(RC):
        fig, axes = plt.subplots(1, len(SCORE_KEYS), figsize=(3.4 * len(SCORE_KEYS),
                                 0.3 * len(data.heads) + 2.2), sharey=True,
                                 constrained_layout=True)
        for ax, key in zip(axes, SCORE_KEYS, strict=True):
            im = ax.imshow(data.scores[key], vmin=0, vmax=1, cmap="magma", aspect="auto")
            ax.set_xticks(range(len(data.steps)), [str(s) for s in data.steps],
                          rotation=90, fontsize=6)
            ax.set_title(key.replace("_", "-"))
            ax.set_xlabel("checkpoint step")
        axes[0].set_yticks(range(len(data.heads)),
                           [f"{h} {result.classes[i]}" for i, h in enumerate(data.heads)])
        fig.colorbar(im, ax=list(axes), label="mean attention on the target key")
        _save(fig, out / "head_scores.png")
    rows = []
    for j, s in enumerate(data.steps):
        classes = data.classes.get(int(s), [""] * len(data.heads))
        rows += [[int(s), h, classes[i], *(data.scores[k][i, j] for k in SCORE_KEYS)]
                 for i, h in enumerate(data.heads)]
    write_csv(out / "head_scores.csv", ["step", "head", "class", *SCORE_KEYS], rows)
    return Figure("scores", "Head scores over training",
                  "Each head's attention-pattern scores (previous-token, current-token, "
                  "induction, bracket; rllc.models.heads) at each checkpoint; a head's class "
                  "is its highest score if ≥ 0.3, else multigram.",
                  "head_scores.png", ["head_scores.csv"])


def tune_maps(data: ReportData, out: Path) -> list[Figure]:
    """(5) The diagnostics map of each tune (``rllc.report.tune_map``) and its trials."""
    figures = []
    for key, tune in sorted(data.tunes.items()):
        if not tune["rows"]:
            continue
        png, name = f"tune_{key}.png", f"tune_{key}.csv"
        plot_trials(tune["rows"], tune["winner"], f"layer {key}", out / png)
        columns = list(dict.fromkeys(c for r in tune["rows"] for c in r))
        write_csv(out / name, columns, [[r.get(c) for c in columns] for r in tune["rows"]])
        figures.append(Figure(
            f"tune_{key}", f"Sampler tune for layer {key} ({tune['tune_id']})",
            "λ̂ (left) and the tune's objective (right) of every trial over step size ε and "
            "localization γ; black edge: every check passed; red star: the chosen trial "
            "(the sweep ran at its ε/2); diamond: the paper's setting.", png, [name]))
    return figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    plt.close(fig)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows([_cell(v) for v in row] for row in rows)


def _cell(v: Any) -> Any:
    """Floats at full precision (NaN as empty), everything else as is."""
    if isinstance(v, float | np.floating):
        return "" if not np.isfinite(v) else repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return "" if v is None else v
