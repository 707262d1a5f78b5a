"""builder.cog.server: a local Cog server keeps the upload URL's secret out of the process list."""

import http.server
import os
import threading

from builder.cog.client import CogClient
from builder.cog.server import start_cog_server

PREDICTOR = """
from cog import BasePredictor, Path

class Echo(BasePredictor):
    def predict(self, text: str) -> Path:
        out = Path("echo.txt")
        out.write_text(text)
        return out
"""


def _uploads_receiver():
    got = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_PUT(self):
            got.append((self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self.send_response(201)
            self.send_header("Location", f"http://example.com{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


def _cmdlines_holding(needle: bytes) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if needle in handle.read() and int(pid) != os.getpid():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_the_upload_url_is_used_but_not_in_any_process_arguments(tmp_path):
    (tmp_path / "code" / "echo.py").parent.mkdir()
    (tmp_path / "code" / "echo.py").write_text(PREDICTOR)
    receiver, got = _uploads_receiver()
    secret = "s3cret-per-training-token"
    server = start_cog_server(
        "echo.py:Echo",
        tmp_path / "project",
        code_root=tmp_path / "code",
        upload_url=f"http://127.0.0.1:{receiver.server_port}/internal/{secret}/files/",
    )
    try:
        assert _cmdlines_holding(secret.encode()) == []
        status, body = CogClient(server.url).request("POST", "/predictions", {"input": {"text": "hello"}})
        assert status == 200 and body["status"] == "succeeded", body
        assert got and got[0][0].startswith(f"/internal/{secret}/files/") and got[0][1] == b"hello"
    finally:
        server.stop()
        receiver.shutdown()


def test_a_container_gets_only_the_gpus_it_is_given():
    """The docker runner on a worker with --gpu N asks Docker for that device alone, not all GPUs."""
    from builder.cog.container import _gpu_request

    (every,) = _gpu_request(True)
    assert every["Count"] == -1 and every["Capabilities"] == [["gpu"]]
    (own,) = _gpu_request(["2"])
    assert own["DeviceIDs"] == ["2"] and own["Capabilities"] == [["gpu"]] and own.get("Count") in (None, 0)
    assert _gpu_request(False) is None


SLOW_SETUP = """
import time

from cog import BasePredictor


class Slow(BasePredictor):
    def setup(self) -> None:
        time.sleep(3600)

    def predict(self, text: str) -> str:
        return text
"""


def _working_in(folder) -> list[int]:
    """Processes whose working directory is under ``folder`` (a Cog server and its worker)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(folder)):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_stopping_a_server_whose_setup_has_not_ended_leaves_no_process(tmp_path):
    """A server stopped while its worker is still in setup (a canceled training's trainer loading
    its base): the worker goes too, not only the server (coglet's worker outlived it, with its memory)."""
    import time

    import pytest

    from builder.cog.client import CogError

    (tmp_path / "code" / "slow.py").parent.mkdir()
    (tmp_path / "code" / "slow.py").write_text(SLOW_SETUP)
    with pytest.raises(CogError):
        start_cog_server("slow.py:Slow", tmp_path / "project", code_root=tmp_path / "code", timeout=15)
    deadline = time.monotonic() + 10
    while _working_in(tmp_path / "project") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _working_in(tmp_path / "project") == []
