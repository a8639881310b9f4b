"""The report in a real browser: headless Chromium (Debian's ``chromium``, installed by .ci/run)
lays out report.html and says how wide the page is and whether every figure loaded.

A wide table (the matched pairs) must scroll inside its own box, never widen the page, and every
figure (an SVG data URI) must decode. Skipped only where Chromium is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import polars as pl
import pytest
from test_report import pairs_frame, synthetic

from mqepi.results.report.write import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH = 1000

#: Appended to a copy of the page: the layout's width and the images that did not decode, as attributes.
PROBE = ("<script>document.body.setAttribute('data-w', document.documentElement.scrollWidth);"
         "document.body.setAttribute('data-broken', [...document.images].filter("
         "i => !(i.complete && i.naturalWidth > 0)).length);"
         "document.body.setAttribute('data-images', document.images.length);</script>")


def _layout(html_path, tmp_path) -> dict[str, int]:
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", PROBE + "</body>"))
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={WIDTH},800",
                          "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    body = re.search(r"<body([^>]*)>", out).group(1)
    return {k: int(v) for k, v in re.findall(r'data-(\w+)="(\d+)"', body)}


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_the_report_fits_the_page_in_chromium_and_every_figure_loads(tmp_path):
    one = pairs_frame().row(0, named=True)
    data = synthetic()
    data.matched_pairs = pl.DataFrame([{**one, "config_a": f"mix_config_number_{k:02d}_a", "config_b": f"mix_{k:02d}_b",
                                        "epi_diff": 0.001 * k} for k in range(30)])
    files = write_report(data, tmp_path / "report")
    layout = _layout(files.html, tmp_path)
    assert layout["images"] >= 3 and layout["broken"] == 0
    assert layout["w"] <= WIDTH, layout  # the pairs table (13 columns) scrolls inside its box
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={WIDTH},3000",
                    f"--screenshot={shot}", files.html.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
