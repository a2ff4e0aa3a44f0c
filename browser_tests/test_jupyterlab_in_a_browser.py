"""Optional: the course in a real browser. JupyterLab is started headless on a free local port
(tests/live_jupyter.py), a Chromium-family browser opens a notebook, runs all its cells, and
the test checks that every cell ran, no cell erred, and the figures rendered as images.

    make test-browser        (installs the Python package playwright; never downloads a browser)

Skipped, with the reason, when no Chromium-family browser is installed (on Debian/Ubuntu:
``apt install chromium``; or point COURSE_BROWSER at the executable).
"""
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from live_jupyter import jupyter_server  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "00_feature_maps_and_einops.ipynb"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "microsoft-edge",
              "brave-browser")
# Headless, and no background connections: the course runs offline.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def find_browser() -> str | None:
    chosen = os.environ.get("COURSE_BROWSER")
    if chosen:
        return shutil.which(chosen) or (chosen if Path(chosen).exists() else None)
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


ALL_RAN = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext.session) return false;
  const cells = panel.content.model.cells;
  let code = 0, ran = 0;
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type === 'code' && cell.sharedModel.getSource().trim()) {
      code += 1;
      if (cell.executionCount) ran += 1;
    }
  }
  const kernel = panel.sessionContext.session.kernel;
  return code > 0 && ran === code && kernel && kernel.status === 'idle';
}"""


def test_a_notebook_runs_in_jupyterlab_in_a_real_browser(tmp_path):
    executable = find_browser()
    if executable is None:
        pytest.skip("no Chromium-family browser found (looked for " + ", ".join(CANDIDATES) +
                    " on PATH and COURSE_BROWSER); install one, e.g. `apt install chromium`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed "
                                                                 "(make test-browser installs it)")
    with jupyter_server([NOTEBOOK], expose_app=True) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server.url}/lab/tree/{NOTEBOOK.name}?token={server.token}")
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget && "
                "window.jupyterapp.shell.currentWidget.sessionContext && "
                "window.jupyterapp.shell.currentWidget.sessionContext.isReady", timeout=120_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(ALL_RAN, timeout=300_000, polling=500)
            errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
            error_text = [errors.nth(i).inner_text()[:300] for i in range(errors.count())]
            images = page.evaluate("() => Array.from(document.querySelectorAll('.jp-RenderedImage img'))"
                                   ".map(img => img.complete && img.naturalWidth > 0)")
            news = page.get_by_text("official Jupyter news").count()
            page.screenshot(path=str(tmp_path / "notebook.png"))
        finally:
            browser.close()
    assert not error_text, f"outputs on stderr or errors: {error_text}"
    assert images and all(images), f"figures rendered: {images}"
    assert news == 0, "JupyterLab asked about its news feed (overrides.json not applied)"
