"""`make lab`: JupyterLab on 127.0.0.1 serving book/, whose kernel is the venv's Python.

Starts the very command `make lab` runs (read from `make -n lab`) with --no-browser on a free port and a
token, then through the REST API: the lab page, the default kernel spec, one chapter opened as a
notebook, and a kernel started and asked for `sys.executable` over its websocket."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "01_introduction.ipynb"

pytest.importorskip("jupyterlab", reason="JupyterLab is installed by requirements.txt (make venv)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_command(extra: str) -> list[str]:
    """The line `make lab` would run, with LAB_ARGS=extra (the set-up lines before it dropped)."""
    dry = subprocess.run(["make", "-n", "--no-print-directory", "lab", f"LAB_ARGS={extra}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    [line] = [ln for ln in dry.splitlines() if "-m jupyterlab" in ln]
    return shlex.split(line)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    port, token = free_port(), uuid.uuid4().hex
    cmd = lab_command(f"--no-browser --ServerApp.port={port} --IdentityProvider.token={token} "
                      "--ServerApp.port_retries=0 --LabApp.news_url=")
    assert "--ServerApp.ip=127.0.0.1" in cmd and "--ServerApp.root_dir=book" in cmd
    log = tmp_path_factory.mktemp("lab") / "lab.log"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited: {log.read_text()[-2000:]}")
            try:
                get(base, token, "/api/status")
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("jupyter lab did not answer within 60 s")
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def get(base: str, token: str, path: str, method: str = "GET", body: dict | None = None):
    req = urllib.request.Request(base + path, method=method, headers={"Authorization": f"token {token}"},
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=30) as r:
        data = r.read()
        return json.loads(data) if r.headers.get_content_type() == "application/json" else data.decode()


def test_lab_serves_the_book_with_the_venvs_kernel(lab):
    base, token = lab
    assert "JupyterLab" in get(base, token, "/lab")
    specs = get(base, token, "/api/kernelspecs")
    spec = specs["kernelspecs"][specs["default"]]["spec"]
    assert specs["default"] == "python3" and spec["language"] == "python"
    # `python` in a kernel spec is the server's interpreter (jupyter_client); anything else must be ours
    assert spec["argv"][0] in ("python", sys.executable) or Path(spec["argv"][0]).resolve() == \
        Path(sys.executable).resolve()
    nb = get(base, token, f"/api/contents/{CHAPTER}")
    assert nb["type"] == "notebook" and nb["content"]["cells"]
    assert nb["content"]["metadata"]["kernelspec"]["name"] == specs["default"]


def test_a_kernel_runs_the_venvs_python(lab):
    tornado = pytest.importorskip("tornado.websocket")
    from tornado.ioloop import IOLoop

    base, token = lab
    kernel = get(base, token, "/api/kernels", "POST", {"name": "python3"})
    try:
        async def ask() -> str:
            ws = await tornado.websocket_connect(
                base.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels?token={token}")
            msg_id = uuid.uuid4().hex
            ws.write_message(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "t", "session": "s",
                           "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell",
                "content": {"code": "import sys; print(sys.executable)", "silent": False}}))
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                msg = json.loads(await ws.read_message())
                if msg.get("parent_header", {}).get("msg_id") == msg_id and msg["msg_type"] == "stream":
                    ws.close()
                    return msg["content"]["text"].strip()
            raise TimeoutError("no output from the kernel")

        executable = IOLoop.current().run_sync(ask, timeout=120)
    finally:
        get(base, token, f"/api/kernels/{kernel['id']}", "DELETE")
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert Path(executable).parent.parent.name == ".venv" or sys.prefix in executable
