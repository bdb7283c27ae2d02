"""The HTML report opened in a real browser (headless Chromium): every figure must load and decode."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from test_report import MODEL, sweep_rows

from crescendo.report import build_report
from crescendo.store import ResultStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian package chromium)")]

# Appended to a copy of the page: once everything has loaded, count the images that decoded.
PROBE = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  document.body.setAttribute("data-probe", `images=${images.length} broken=${broken.length} ${broken.join("|")}`);
});
</script>
"""


def test_every_figure_of_the_report_loads_in_chromium(tmp_path):
    store_path = tmp_path / "runs.sqlite"
    with ResultStore(store_path) as store:
        for row in sweep_rows():
            store.put(row)
    index = build_report(store_path, tmp_path / "report", model=MODEL)
    html = index.html.read_text()
    expected = len(re.findall(r"<img ", html))
    assert expected == len([f for f in index.figures if f.suffix == ".png"]) >= 1  # one <img> per PNG figure
    probe = index.html.with_name("probe.html")
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
         "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'data-probe="images=(\d+) broken=(\d+)([^"]*)"', done.stdout)
    assert found, "the page's load event never ran"
    images, broken = int(found.group(1)), int(found.group(2))
    assert images == expected and broken == 0, f"broken figures: {found.group(3)}"
