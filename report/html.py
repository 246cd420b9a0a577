"""The report page: one static HTML document (inline CSS, no script, no external URL), so it
opens offline from disk. Every value on it comes from the store (``ReportData``) or from the
analysis of it (``ReportAnalysis``); no clock is read, so the same store renders the same
bytes.
"""

from __future__ import annotations

import math
from collections import Counter
from html import escape
from typing import Any

from .analyse import ReportAnalysis
from .data import ReportData
from .figures import Figure

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;
border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.holds{background:#d9f2d9}.partly{background:#fff2c6}.fails{background:#f8d7d7}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444}.muted{color:#666;font-size:.9em}
""".strip()

VERDICT_CLASS = {"holds": "holds", "partly": "partly", "does not hold": "fails"}
#: Sampler settings shown in the tuned-settings table, in this order (those present).
SAMPLER_KEYS = ("step_size", "localization", "nbeta", "chains", "draws", "batch_size",
                "steps_per_draw", "burnin", "estimator")
STAGE_ORDER = ("train", "heads", "tune", "wrllc", "drllc", "baselines")


def render_html(data: ReportData, result: ReportAnalysis, figures: list[Figure]) -> str:
    """The whole page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(data.title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(data.title)}</h1>",
        _summary(data, result),
        _timings(data),
        _claims(result),
        _figures(figures),
        _heads(data, result),
        _tuned(data),
        _significance(result),
        _problems(data),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _summary(data: ReportData, result: ReportAnalysis) -> str:
    rec, model = data.record, data.record.get("model") or {}
    shape = ", ".join(f"{k} {model[k]}" for k in ("n_layers", "n_heads", "d_model", "n_ctx",
                                                  "d_vocab") if k in model)
    verdicts = Counter(c.verdict for c in result.claims)
    told = "; ".join(f"{verdicts[v]} {v}" for v in ("holds", "partly", "does not hold")
                     if verdicts[v])
    steps = (f"{len(data.steps)} checkpoints, steps {data.steps[0]}–{data.steps[-1]}"
             if len(data.steps) else "no checkpoints")
    classes = Counter(result.classes)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(classes.items()))
    items = [
        f"Training run: <code>{escape(str(rec.get('run', '?')))}</code>"
        + (" (quick demo)" if rec.get("quick") else ""),
        f"Model: {escape(shape) or 'not recorded'}; {len(data.heads)} heads.",
        f"{steps}; store <code>{escape(data.store_uri)}</code>, record "
        f"<code>reports/{escape(data.report_id)}</code>.",
        f"Head classes at step {data.final_step if len(data.steps) else '?'}: "
        f"{escape(kinds)}; K-means on the wrLLC curves (k = {result.k}) agrees with them at "
        f"ARI {_fmt(result.cluster_ari)}.",
        f"Claims: {escape(told)} (of {len(result.claims)}).",
        f"{len(result.significance) - len(result.failing_heads)} of {len(result.significance)}"
        " heads have a significant wrLLC curve; "
        f"{len(data.problem_cells)} cells with diverged chains or failures.",
        *[escape(n) for n in result.notes],
    ]
    return "<h2>Summary</h2><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _timings(data: ReportData) -> str:
    timings = dict(data.record.get("timings") or {})
    budget = data.record.get("budget_seconds")
    if not timings and budget is None:
        return ""
    order = [k for k in STAGE_ORDER if k in timings]
    order += sorted(k for k in timings if k not in order and k != "total")
    rows = [f"<tr><td>{escape(k)}</td><td class=num>{_fmt(timings[k], '.1f')}</td></tr>"
            for k in order]
    total = timings.get("total")
    if total is not None:
        rows.append(f"<tr><th>total</th><td class=num>{_fmt(total, '.1f')}</td></tr>")
    if budget is not None:
        rows.append(f"<tr><th>budget</th><td class=num>{_fmt(budget, '.1f')}</td></tr>")
    tail = ""
    if total is not None and budget is not None and _finite(total) and _finite(budget):
        within = float(total) <= float(budget)
        tail = (f"<p>Total {'within' if within else 'over'} the budget "
                f"({_fmt(100 * float(total) / float(budget), '.0f')} % of it).</p>")
    return ("<h2>Stage times</h2><table><tr><th>stage</th><th>seconds</th></tr>"
            + "".join(rows) + "</table>" + tail)


def _claims(result: ReportAnalysis) -> str:
    rows = []
    for c in result.claims:
        note = f"<br><span class=muted>{escape(c.note)}</span>" if c.note else ""
        rows.append(
            f'<tr data-key="{escape(c.key)}"><td>{escape(c.text)}</td>'
            f"<td>{escape(c.measure)}{note}</td><td class=num>{_fmt(c.value)}</td>"
            f"<td>{escape(c.thresholds)}</td>"
            f'<td class="{VERDICT_CLASS[c.verdict]}">{escape(c.verdict)}</td></tr>')
    return ("<h2>The paper's claims, measured</h2>"
            "<p>Each claim is one number; the verdict follows from it and the thresholds "
            "(rllc.analysis.claims). <a href=\"claims.csv\">claims.csv</a></p>"
            "<table><tr><th>claim</th><th>measure</th><th>value</th><th>thresholds</th>"
            "<th>verdict</th></tr>" + "".join(rows) + "</table>")


def _figures(figures: list[Figure]) -> str:
    out = ["<h2>Figures</h2>"]
    for f in figures:
        links = ", ".join(f'<a href="{escape(c)}">{escape(c)}</a>' for c in f.csvs)
        out.append(
            f'<figure id="{escape(f.key)}"><h3>{escape(f.title)}</h3>'
            f'<img src="{escape(f.png)}" alt="{escape(f.title)}">'
            f"<figcaption>{escape(f.caption)} Data: {links}.</figcaption></figure>")
    return "\n".join(out)


def _heads(data: ReportData, result: ReportAnalysis) -> str:
    if not data.heads:
        return ""
    sig = {s.head: s for s in result.significance}
    rows = []
    for i, h in enumerate(data.heads):
        s = sig[h]
        rows.append(
            f"<tr><td>{escape(h)}</td><td>{escape(result.classes[i])}</td>"
            f"<td class=num>{int(result.clusters[i])}</td>"
            f"<td class=num>{_fmt(data.wrllc[i, -1])} ± {_fmt(data.wrllc_se[i, -1])}</td>"
            f"<td class=num>{_fmt(s.median_se)}</td><td class=num>{_fmt(s.range)}</td>"
            f"<td>{'yes' if s.significant else 'no'}</td></tr>")
    return ("<h2>Heads</h2><table><tr><th>head</th><th>class (last step)</th>"
            "<th>cluster</th><th>final wrLLC ± SE</th><th>median SE</th><th>range</th>"
            "<th>significant</th></tr>" + "".join(rows) + "</table>")


def _tuned(data: ReportData) -> str:
    samplers = dict((data.record.get("tune") or {}).get("samplers") or {})
    for key, tune in data.tunes.items():  # a tune the record names but gives no sampler for
        samplers.setdefault(f"{key}:*", tune["best"])
    if not samplers:
        return ""
    keys = [k for k in SAMPLER_KEYS if any(k in (s or {}) for s in samplers.values())]
    ids = {f"{k}:*": t["tune_id"] for k, t in data.tunes.items()}
    rows = []
    for comp in sorted(samplers):
        s = samplers[comp] or {}
        cells = "".join(f"<td class=num>{escape(_any(s.get(k)))}</td>" for k in keys)
        rows.append(f"<tr><td>{escape(comp)}</td><td>{escape(ids.get(comp, '–'))}</td>"
                    f"{cells}</tr>")
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    return ("<h2>Tuned sampler settings</h2><table><tr><th>components</th><th>tune</th>"
            f"{head}</tr>" + "".join(rows) + "</table>")


def _significance(result: ReportAnalysis) -> str:
    failing = result.failing_heads
    n = len(result.significance)
    text = (f"A head's wrLLC curve is significant when the median standard error along it is "
            f"at most a fifth of its range (max − min). {n - len(failing)} of {n} are.")
    if failing:
        text += " Not significant: " + ", ".join(escape(h) for h in failing) + "."
    return f"<h2>Significance</h2><p>{text}</p>"


def _problems(data: ReportData) -> str:
    cells = data.problem_cells
    if not cells:
        return "<h2>Divergent and failed cells</h2><p>None: every chain of every cell stayed finite.</p>"
    by_sweep = Counter(c["sweep"] for c in cells)
    rows = "".join(
        f"<tr><td>{escape(c['sweep'])}</td><td class=num>{c['step']}</td>"
        f"<td>{escape(c['component'])}</td><td>{escape(c['dataset'])}</td>"
        f"<td>{escape(c['problem'])}</td></tr>" for c in cells)
    where = ", ".join(f"{n} in {escape(s)}" for s, n in sorted(by_sweep.items()))
    return (f"<h2>Divergent and failed cells</h2><p>{len(cells)} cells ({where}).</p>"
            "<table><tr><th>sweep</th><th>step</th><th>component</th><th>dataset</th>"
            "<th>problem</th></tr>" + rows + "</table>")


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None or not _finite(v):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    return format(float(v), spec)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _any(v: Any) -> str:
    if isinstance(v, float):
        return format(v, ".4g")
    return "–" if v is None else str(v)
