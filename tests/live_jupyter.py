"""A real JupyterLab server for tests: started headless on a free local port, in a temporary
directory, with its own Jupyter config, data and runtime folders, and stopped afterwards.

Used by tests/test_live_server.py (REST API + kernel websocket) and by the optional browser
test in browser_tests/. Nothing is left behind: the process is stopped and the folder deleted.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """Handle of a running server: its base URL, token and content root."""

    def __init__(self, url: str, token: str, root: Path, process: subprocess.Popen):
        self.url, self.token, self.root, self.process = url, token, root, process

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> dict | None:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw else None


@contextmanager
def jupyter_server(notebooks: list[Path], *, expose_app: bool = False, startup_timeout: float = 60) -> Iterator[LiveServer]:
    """Start JupyterLab on copies of ``notebooks``; yield a ``LiveServer``; stop and clean up."""
    tmp = Path(tempfile.mkdtemp(prefix="course-live-"))
    root = tmp / "notebooks"
    root.mkdir()
    for nb in notebooks:
        shutil.copy(nb, root / nb.name)
    env = dict(os.environ)
    env.update({
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "IPYTHONDIR": str(tmp / "ipython"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    })
    token, port = secrets.token_hex(16), free_port()
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if expose_app:
        command.append("--LabApp.expose_app_in_browser=True")
    log = open(tmp / "server.log", "w", encoding="utf-8")
    process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", token, root, process)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited at start-up:\n{(tmp / 'server.log').read_text()[-3000:]}")
            try:
                server.api("GET", "/api/status", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer within {startup_timeout:.0f} s:\n"
                                       f"{(tmp / 'server.log').read_text()[-3000:]}") from None
                time.sleep(0.25)
        yield server
    finally:
        try:
            if process.poll() is None:
                server.api("POST", "/api/shutdown", timeout=10)
                process.wait(timeout=20)
        except Exception:  # the server may already be gone; make sure it is
            pass
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _message(code: str, session: str) -> dict:
    return {
        "header": {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request", "username": "test",
                   "session": session, "date": "", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }


async def _run_cells(server: LiveServer, kernel_id: str, cells: list[str], cell_timeout: float) -> list[dict]:
    from tornado.websocket import websocket_connect

    url = server.url.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels?token={server.token}"
    connection = await websocket_connect(url)
    session = uuid.uuid4().hex
    results = []
    try:
        for code in cells:
            request = _message(code, session)
            await connection.write_message(json.dumps(request))
            result = {"code": code, "outputs": [], "status": None}
            idle = False
            while result["status"] is None or not idle:
                raw = await asyncio.wait_for(connection.read_message(), timeout=cell_timeout)
                if raw is None:
                    raise RuntimeError("the kernel's websocket closed")
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
                    continue
                kind = msg["header"]["msg_type"]
                if kind == "execute_reply":
                    result["status"] = msg["content"]["status"]
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
                elif kind in ("stream", "display_data", "execute_result", "error"):
                    result["outputs"].append({"type": kind, **msg["content"]})
            results.append(result)
    finally:
        connection.close()
    return results


def run_notebook(server: LiveServer, name: str, cell_timeout: float = 180) -> list[dict]:
    """Open ``name`` through the REST API, run its code cells in a kernel session over the
    websocket, and return one dict per cell (``status`` of the reply and its ``outputs``)."""
    model = server.api("GET", f"/api/contents/{name}")
    assert model["type"] == "notebook", model["type"]
    cells = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
             for c in model["content"]["cells"] if c["cell_type"] == "code"]
    session = server.api("POST", "/api/sessions", {"path": name, "type": "notebook", "name": name,
                                                    "kernel": {"name": "python3"}})
    try:
        return asyncio.run(_run_cells(server, session["kernel"]["id"], cells, cell_timeout))
    finally:
        server.api("DELETE", f"/api/sessions/{session['id']}")
