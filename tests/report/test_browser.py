"""The report opens in a real browser: headless Chromium loads ``index.html`` from disk
and every image decodes.

The report carries no script, so the test writes a copy of the page beside it
(``check.html``) with one script that, once the page has loaded, sets the title to
``<images decoded>/<images>``; ``--dump-dom`` prints the DOM after that, title included.
Skipped only where no Chromium or Chrome binary is on PATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rllc.report import render_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
COUNT_IMAGES = (
    '<script>window.addEventListener("load", () => {'
    "const all = [...document.images];"
    "document.title = all.filter(i => i.complete && i.naturalWidth > 0).length"
    ' + "/" + all.length; });</script>'
)


def browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)})")


def images_loaded(page: Path, extra: str = "") -> tuple[int, int]:
    """``(decoded, total)`` images of ``page`` in headless Chromium, ``extra`` HTML added."""
    check = page.with_name("check.html")
    check.write_text(page.read_text().replace("</body>", f"{extra}{COUNT_IMAGES}</body>"))
    try:
        out = subprocess.run(
            [browser(), "--headless=new", "--disable-gpu", "--no-sandbox",
             f"--user-data-dir={page.parent.parent / 'chromium-profile'}",
             "--virtual-time-budget=5000", "--dump-dom", check.as_uri()],
            capture_output=True, text=True, timeout=120)
    finally:
        check.unlink()
    found = re.search(r"<title>(\d+)/(\d+)</title>", out.stdout)
    assert found, f"no count in the dumped DOM; stderr: {out.stderr[-1500:]}"
    return int(found[1]), int(found[2])


@pytest.mark.slow
def test_every_image_loads_in_headless_chromium(report_store, tmp_path):
    browser()  # skip before rendering where there is none
    page = render_report(report_store, tmp_path)
    decoded, total = images_loaded(page)
    assert total >= 5 and decoded == total
    # the check can fail: a missing image is counted as not decoded
    assert images_loaded(page, '<img src="missing.png">') == (total, total + 1)
