"""Render a report from a store: ``render_report(store_uri, out_dir)`` writes
``out_dir/report/index.html`` with its PNG figures and CSVs beside it.

    from rllc.report import render_report
    page = render_report("./rllc-store", "out")        # the store's only report record

Everything comes from the store (the record ``reports/<id>``, its sweeps and tunes), so a
store copied elsewhere renders the same page, byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from .analyse import analyse, claim_rows
from .data import load_report_data
from .figures import all_figures, write_csv
from .html import render_html

CLAIM_COLUMNS = ("key", "text", "measure", "value", "holds_at", "partly_at",
                 "higher_is_better", "thresholds", "verdict", "note")


def render_report(store_uri: str, out_dir: str | Path, report_id: str | None = None) -> Path:
    """Write the report of ``reports/<report_id>`` (None: the only one) into
    ``out_dir/report/``; returns the path of its ``index.html``."""
    target = Path(out_dir) / "report"
    if (target / "__init__.py").exists():  # e.g. out_dir = the repository root
        raise ValueError(f"{target} is a Python package folder (rllc.report's source?); "
                         "choose another output directory")
    target.mkdir(parents=True, exist_ok=True)
    data = load_report_data(store_uri, report_id)
    result = analyse(data)
    figures = all_figures(data, result, target)
    write_csv(target / "claims.csv", CLAIM_COLUMNS,
               [[row[c] for c in CLAIM_COLUMNS] for row in claim_rows(result)])
    page = target / "index.html"
    page.write_text(render_html(data, result, figures), encoding="utf-8")
    return page
