"""rllc.report: a static HTML report (PNG figures, CSVs) of a demo's store.

    from rllc.report import render_report
    render_report("./rllc-store", "out")     # → out/report/index.html

- ``data``: ``load_report_data`` reads the record ``reports/<id>``, its sweeps and tunes;
- ``analyse``: clusters, stage boundaries, the claims (``rllc.analysis``), significance;
- ``figures``: one function per figure, each a PNG and the CSV behind it;
- ``tune_map``: the map of a tune's trials (also drawn by ``rllc tune --plot``);
- ``html`` and ``build``: the page and ``render_report``.

Imports point one way: report → analysis, store; the jobs (``demo``, ``tune --plot``) and
the CLI import report.
"""

from .analyse import ReportAnalysis, analyse
from .build import render_report
from .data import ReportData, load_report_data

__all__ = ["ReportAnalysis", "ReportData", "analyse", "load_report_data", "render_report"]
