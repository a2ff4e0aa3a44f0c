"""The course through a live JupyterLab server: started headless on a free local port in a
temporary directory, a notebook opened through the REST API and run cell by cell in a kernel
session over the websocket, as a learner's JupyterLab would run it. No browser is needed."""
from pathlib import Path

from live_jupyter import jupyter_server, run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "00_feature_maps_and_einops.ipynb"


def test_a_notebook_runs_in_a_live_jupyter_server_and_leaves_nothing_behind():
    with jupyter_server([NOTEBOOK]) as server:
        assert server.api("GET", "/api/contents")["type"] == "directory"
        # the set-up's overrides.json: JupyterLab neither asks about nor fetches news
        notification = server.api("GET", "/lab/api/settings/@jupyterlab/apputils-extension:notification")
        defaults = {k: v["default"] for k, v in notification["schema"]["properties"].items()}
        assert defaults["fetchNews"] == "false" and defaults["checkForUpdates"] is False
        results = run_notebook(server, NOTEBOOK.name)
        process, root = server.process, server.root
    errors = [(i + 1, o.get("ename"), o.get("evalue")) for i, r in enumerate(results)
              for o in r["outputs"] if o["type"] == "error"]
    assert not errors, f"cells raised errors: {errors}"
    assert all(r["status"] == "ok" for r in results), [r["status"] for r in results]
    pngs = [o for r in results for o in r["outputs"] if o["type"] == "display_data" and "image/png" in o["data"]]
    plotting_cells = [r for r in results if "plt.show()" in r["code"]]
    assert plotting_cells and len(pngs) >= len(plotting_cells), (len(pngs), len(plotting_cells))
    assert not any("image/svg+xml" in o.get("data", {}) for r in results for o in r["outputs"])
    assert process.poll() is not None, "the server process is still running"
    assert not root.exists(), "the temporary folder was left behind"
