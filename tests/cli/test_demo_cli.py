"""``rllc demo --quick`` end to end (the session's ``quick_demo``), its resume, and
``rllc report`` re-rendering the same report from the store alone."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

RLLC = [sys.executable, "-m", "rllc.cli.main"]

pytestmark = pytest.mark.slow


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*RLLC, *args], capture_output=True, text=True, timeout=timeout)


def test_quick_demo_prints_report_store_seconds(quick_demo):
    report = Path(quick_demo["report"])
    assert report.name == "index.html" and report.is_file()
    assert report.parent == Path(quick_demo["out"]) / "report"
    assert Path(quick_demo["store"]).is_dir() and quick_demo["seconds"] > 0
    # every stage timed, and shown with elapsed time and an ETA while it ran
    from rllc.jobs.demo import STAGES

    assert set(STAGES) <= set(quick_demo["timings"])
    assert len(re.findall(r"\[demo \d/7\] \w+: \d+ s.* ETA \d+:\d\d", quick_demo["stderr"])) == 7


def test_quick_demo_report_has_five_figures_that_exist(quick_demo):
    html = Path(quick_demo["report"]).read_text()
    images = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(images) >= 5
    for src in images:
        png = Path(quick_demo["report"]).parent / src
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    assert "http://" not in html and "https://" not in html  # opens offline


def test_report_rerenders_identically_from_the_store(quick_demo, tmp_path):
    """Every file of the report, byte for byte, from the store alone (the report stage's
    own time is in the store's record, so it is the same too)."""
    proc = run("report", quick_demo["store"], "--out", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    again = Path(json.loads(proc.stdout.strip().splitlines()[-1])["report"])
    first = Path(quick_demo["report"]).parent
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in again.parent.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (again.parent / name).read_bytes(), name


def test_report_of_a_store_without_a_demo_exits_2(tmp_path):
    from rllc.store import GroupLayout, open_store

    open_store(str(tmp_path / "empty")).create("cache/x", GroupLayout({}, {}, {}))
    proc = run("report", str(tmp_path / "empty"), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "0 demo records" in proc.stderr, proc.stderr
    proc = run("report", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_rerun_reuses_every_stage(quick_demo):
    """A re-run into the same folder reuses the model, the tunes and every cell, keeps the
    stage times of the run that did the work, and writes the same report."""
    folder = Path(quick_demo["report"]).parent
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    proc = run("demo", "--quick", "--out", quick_demo["out"], "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["reused"]) == {"train", "heads", "tune", "wrllc", "drllc", "baselines"}
    assert result["timings"]["train"] == quick_demo["timings"]["train"]
    assert result["timings"]["wrllc"] == quick_demo["timings"]["wrllc"]
    # the same figures and numbers; only the report stage's own time (it ran again) and
    # so the total may differ
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(after) == sorted(before)

    def without_times(html: bytes) -> bytes:
        return re.sub(rb"<h2>Stage times</h2>.*?</p>", b"", html, flags=re.S)

    for name in before:
        if name == "index.html":
            assert without_times(after[name]) == without_times(before[name])
        else:
            assert after[name] == before[name], name


def test_demo_into_a_file_exits_2(tmp_path):
    (tmp_path / "f").write_text("x")
    proc = run("demo", "--quick", "--out", str(tmp_path / "f"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: --out")


def test_bad_clustering_exits_2_before_any_work(tmp_path):
    proc = run("demo", "--quick", "--clustering", "spectral", "--out", str(tmp_path / "d"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: --clustering")
    assert not (tmp_path / "d").exists()
