"""The report (``rllc.report``) rendered from a real small store (``report_store``): the
data it reads, the page, its figures and CSVs, byte-identical re-renders and verdicts that
follow the one rule."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from rllc.analysis import verdict
from rllc.report import load_report_data, render_report
from rllc.report.analyse import analyse
from rllc.store import open_store
from rllc.store.records import write_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VERDICTS = ("holds", "partly", "does not hold")


@pytest.fixture(scope="module")
def page(report_store, tmp_path_factory) -> Path:
    return render_report(report_store, tmp_path_factory.mktemp("out"))


@pytest.mark.slow
def test_data_comes_from_the_store(report_store):
    data = load_report_data(report_store)  # the only record
    assert data.report_id == "tiny-demo"
    assert data.heads == ["0:0", "0:1", "1:0", "1:1"]
    assert data.steps.tolist() == [0, 1, 4]
    assert data.wrllc.shape == data.wrllc_se.shape == (4, 3)
    assert data.llc.shape == (3,) and np.isfinite(data.eval_loss).all()
    assert data.final_classes[0] == "previous-token" and data.final_classes[3] == "induction"
    assert data.drllc_steps == [4] and data.drllc_datasets == ["induction", "dyck"]
    ratio = data.drllc_ratio[4]
    assert ratio.shape == (4, 2)
    np.testing.assert_allclose(ratio, data.drllc[4] / data.wrllc[:, -1:])
    assert data.baseline_steps.tolist() == [0, 1, 4]
    assert {"hessian_trace", "fisher_trace", "hessian_rank", "ablation_zero"} <= set(
        data.baselines)
    assert all(v.shape == (4, 3) for v in data.baselines.values())
    assert set(data.tunes) == {"0"} and len(data.tunes["0"]["rows"]) == 3
    assert data.tunes["0"]["winner"]["step_size"] == pytest.approx(1e-4)  # best is its ε/2
    assert len(analyse(data).claims) == 6


@pytest.mark.slow
def test_page_figures_and_csvs_exist(page):
    html = page.read_text()
    assert page.name == "index.html" and page.parent.name == "report"
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) >= 5, images
    for name in images:
        data = (page.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    links = re.findall(r'<a href="([^"]+\.csv)"', html)
    assert "claims.csv" in links and len(links) >= len(images)
    for name in links:
        with open(page.parent / name, newline="") as f:
            rows = list(csv.reader(f))
        assert rows and rows[0], name  # a header at least (no stage boundary: no rows)
    for name in images:  # the CSV named after each figure holds its data
        with open(page.parent / name.replace(".png", ".csv"), newline="") as f:
            assert len(list(csv.reader(f))) >= 2, name
    # offline: no script, no external URL
    assert "<script" not in html and "http://" not in html and "https://" not in html
    for section in ("Stage times", "claims, measured", "Tuned sampler settings",
                    "Significance", "Divergent and failed cells"):
        assert section in html
    assert "budget" in html and "tune-0" in html


@pytest.mark.slow
def test_claims_table_verdicts_follow_the_rule(page):
    with open(page.parent / "claims.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    html = page.read_text()
    for row in rows:
        value = float(row["value"]) if row["value"] else float("nan")
        expected = verdict(value, float(row["holds_at"]), float(row["partly_at"]),
                           row["higher_is_better"] == "True")
        assert row["verdict"] == expected in VERDICTS
        shown = re.search(rf'<tr data-key="{row["key"]}">.*?</tr>', html, re.S)
        assert shown and f">{expected}</td></tr>" in shown[0]
        if not np.isfinite(value):
            assert row["note"], row  # a NaN carries its reason


@pytest.mark.slow
def test_rendering_twice_gives_identical_bytes(report_store, page, tmp_path):
    again = render_report(report_store, tmp_path, report_id="tiny-demo")
    first = sorted(p.name for p in page.parent.iterdir())
    assert first == sorted(p.name for p in again.parent.iterdir())
    for name in first:
        assert (page.parent / name).read_bytes() == (again.parent / name).read_bytes(), name


@pytest.mark.slow
def test_report_id_is_needed_with_two_records_and_a_package_folder_is_refused(
        report_store, tmp_path):
    from rllc.store.errors import UnknownGroupError

    copy = str(tmp_path / "store")
    import shutil

    shutil.copytree(report_store, copy)
    store = open_store(copy)
    write_record(store, "reports", "other", {"kind": "demo", "version": 1, "checkpoints": []})
    with pytest.raises(UnknownGroupError, match="2 reports"):
        load_report_data(copy)
    (tmp_path / "out" / "report").mkdir(parents=True)
    (tmp_path / "out" / "report" / "__init__.py").write_text("")
    with pytest.raises(ValueError, match="package folder"):
        render_report(copy, tmp_path / "out", "tiny-demo")
