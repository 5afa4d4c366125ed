"""The HTML report renders in headless Chromium: every section, every image decoded, nothing cut off.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``); skipped without it.
Run with ``python -m pytest -m slow tests/slow/test_report_chromium.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

import _report_data as data  # noqa: E402

from kdlens.report import SECTION_TITLES, build_report  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]

# Added to a copy of the report only: records, after load, what the browser actually laid out.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const main = document.querySelector('main').getBoundingClientRect();
  // a figure or table wider than the page (and not inside a horizontal scroller) would be cut off
  const cut = [...document.querySelectorAll('main *')].filter(e => !e.closest('.scroll'))
      .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1).length;
  document.body.setAttribute('data-probe',
      `images=${ok}/${imgs.length};cut=${cut};sections=${document.querySelectorAll('section').length};` +
      `width=${Math.round(main.width)}`);
});
</script></body>"""


def _render(html: str, tmp_path: Path, name: str) -> tuple[str, Path]:
    page = tmp_path / f"{name}.html"
    page.write_text(html.replace("</body>", PROBE), encoding="utf-8")
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / ('profile-' + name)}", "--window-size=1280,2000"]
    dom = subprocess.run([*common, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    shot = tmp_path / f"{name}.png"
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    return dom, shot


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
@pytest.mark.parametrize("kind", ["run", "sweep"])
def test_report_renders_completely_in_headless_chromium(kind, tmp_path):
    if kind == "run":
        source = data.write_run_dir(tmp_path / "run")
    else:
        source, _ = data.write_sweep_dir(tmp_path / "sweep")
    html = build_report(source)
    n_images = html.count("data:image/png;base64,")
    dom, shot = _render(html, tmp_path, kind)
    probe = re.search(r'data-probe="([^"]+)"', dom)
    assert probe, "the page did not finish loading"
    values = dict(item.split("=") for item in probe.group(1).split(";"))
    assert values["images"] == f"{n_images}/{n_images}"  # every embedded PNG decoded
    assert values["cut"] == "0"
    assert values["sections"] == str(len(SECTION_TITLES))
    for title in SECTION_TITLES.values():
        assert f"<h2>{title}</h2>" in dom
    assert shot.stat().st_size > 20_000  # a real screenshot, not a blank page
