"""The report as a browser shows it: headless Chromium renders a small screen's report, and a probe script
(appended to a copy of the page, not shipped) checks that the decision sentence, the answer table and the
flagged thumbnails are laid out with a size on screen, that every thumbnail decodes, and that the gallery's
pager moves to the next page. Skipped, with the reason, where no Chromium is installed (`.ci/run` installs
Debian's `chromium` in CI)."""

from __future__ import annotations

import json
import re

import pytest

from poisonguard.report.browser import chromium_binary, dump_dom, screenshot
from poisonguard.report.html import render_report
from tests.fixtures.synthetic_screen import make_screen

pytestmark = pytest.mark.skipif(chromium_binary() is None,
                                reason="no Chromium binary (apt-get install chromium; .ci/run does in CI)")

PROBE = """
<script>
(function () {
  function shown(el) {
    if (!el) return false;
    var r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none';
  }
  function write(id, obj) {
    var pre = document.createElement('pre'); pre.id = id; pre.textContent = JSON.stringify(obj);
    document.body.appendChild(pre);
  }
  var imgs = [];
  try {  // the layout and the pager: synchronous, so their verdict never waits on the clock
    imgs = Array.from(document.querySelectorAll('#g-flagged .grid img'));
    var pagerText = function () { var s = document.querySelector('#g-flagged .pager span');
                                  return s ? s.textContent : null; };
    var out = {
      decision: shown(document.getElementById('decision')) ? document.getElementById('decision').textContent : null,
      answers: shown(document.getElementById('answers')),
      first_answer: document.querySelector('#answers tbody td').textContent,
      thumbs_shown: imgs.filter(shown).length,
      first_id: document.querySelector('#g-flagged .card small').textContent,
      pager: pagerText()
    };
    var next = document.querySelectorAll('#g-flagged .pager button')[1];
    if (next) { next.click(); out.after_next = document.querySelector('#g-flagged .card small').textContent;
                out.pager_after = pagerText(); }
    write('probe', out);
  } catch (e) { write('probe', {error: String(e)}); }
  // Decoding is asynchronous: its result goes to a second element the test waits for.
  Promise.all(imgs.map(function (i) {
    var im = new Image(); im.src = i.src;
    return im.decode().then(function () { return im.naturalWidth > 0; }, function () { return false; });
  })).then(function (d) { write('decoded', {n: d.filter(Boolean).length}); });
})();
</script>
"""


def _probed(dom: str, pre_id: str) -> dict | None:
    m = re.search(rf"<pre id=\"{pre_id}\">(.*?)</pre>", dom, re.DOTALL)
    return None if m is None else json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser")
    s = make_screen(d, n=300, rate=0.25, seed=1)
    return s, render_report(s.table, s.reports, s.default, d / "report.html", checked=s.checked)


def test_decision_answers_and_thumbnails_are_visible(report, tmp_path):
    s, path = report
    probed = tmp_path / "probed.html"
    probed.write_text(path.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    # The virtual clock can run out before the browser's decoder threads finish on a loaded machine: the
    # synchronous probe is read from the first dump, the decode count from up to three dumps.
    for _ in range(3):
        dom, _ = dump_dom(probed, budget_ms=20000)
        got, decoded = _probed(dom, "probe"), _probed(dom, "decoded")
        assert got is not None, "the probe did not run: " + dom[-500:]
        assert "error" not in got, got["error"]
        if decoded is not None:
            break
    assert decoded is not None, "no thumbnail decode finished in three browser runs"
    n_flag = int(s.table["flagged"].sum())
    assert n_flag > 40  # more than one gallery page
    assert got["decision"] and f"found {n_flag} of 300 samples" in got["decision"] and "banana" in got["decision"]
    assert got["answers"] and got["first_answer"] == "banana"
    assert got["thumbs_shown"] == decoded["n"] == 40  # one full page, each one a real image
    assert got["pager"] == f"page 1 of {-(-n_flag // 40)} ({n_flag} samples)"
    assert got["after_next"] != got["first_id"] and got["pager_after"].startswith("page 2 of")


def test_screenshot_of_the_first_screen(report, tmp_path):
    from PIL import Image

    _, path = report
    png = tmp_path / "shot.png"
    screenshot(path, png, width=1000, height=700)
    img = Image.open(png).convert("RGB")
    assert img.size == (1000, 700)
    colours = img.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # text and tiles drawn, not a blank page


def test_benchmark_script_runs_small(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_report

    got = bench_report.main(["--n", "400", "--repeats", "1", "--image-size", "32", "--keep", str(tmp_path)])
    assert got["n"] == 400 and got["flagged"] > 0 and 0 < got["size_mb"] < 10
    assert got["thumbnails"] > 0 and got["browser_wall_s"] > 0 and got["page_script_done_s"] > 0
