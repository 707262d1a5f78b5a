"""builder.cog.client: the one client of a Cog server (409 retried, refusals and failures as one line)."""

import http.server
import json
import threading

import pytest

from builder.cog.client import CogClient, CogError, describe_validation, wait_ready
from builder.cog.messages import log_error, prediction_error, without_host_paths


class _Scripted(http.server.ThreadingHTTPServer):
    """Answers each request with the next (status, body) of a script; records what it got."""

    def __init__(self, script):
        self.script, self.seen = list(script), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                server.seen.append((self.command, self.path, self.rfile.read(length), self.headers.get("Prefer")))
                status, body = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _answer

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_port}"


@pytest.fixture
def scripted():
    servers = []

    def make(*script):
        servers.append(_Scripted(script))
        return servers[-1]

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def test_busy_is_retried_then_the_prediction_returns(scripted):
    server = scripted((409, {}), (409, {}), (200, {"status": "succeeded", "output": ["data:,x"]}))
    result = CogClient(server.url).predict({"prompt": "a"})
    assert result["output"] == ["data:,x"] and len(server.seen) == 3
    assert json.loads(server.seen[-1][2]) == {"input": {"prompt": "a"}}


def test_refused_input_and_failed_prediction_are_one_line(scripted):
    detail = [{"loc": ["body", "input", "steps"], "msg": "must be <= 500"}, {"loc": ["body", "input", "seed"], "msg": "not an int"}]
    server = scripted((422, {"detail": detail}))
    with pytest.raises(CogError, match=r"^the model refused the input: input.steps: must be <= 500; input.seed: not an int$"):
        CogClient(server.url, what="model").predict({"steps": 900})
    failed = scripted((200, {"status": "failed", "error": "Prediction failed: Prediction failed: CUDA out of memory"}))
    with pytest.raises(CogError, match="^the prediction failed: CUDA out of memory$"):
        CogClient(failed.url).predict({})


def test_async_prediction_is_put_with_its_webhook(scripted):
    server = scripted((202, {"status": "starting"}))
    CogClient(server.url).start_prediction("abc", {"x": 1}, webhook="http://hook/")
    method, path, body, prefer = server.seen[0]
    assert (method, path, prefer) == ("PUT", "/predictions/abc", "respond-async")
    assert json.loads(body)["webhook"] == "http://hook/" and json.loads(body)["id"] == "abc"


def test_unreachable_server_is_named(tmp_path):
    from builder.cog.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CogError, match=f"cannot reach the trainer's Cog server at {url}"):
        CogClient(url, what="trainer's Cog server").request("GET", "/health-check", attempts=2, retry_delay=0.01)


def test_readiness_waits_for_ready_and_reports_failed_setup(scripted):
    ready = scripted((200, {"status": "STARTING"}), (200, {"status": "READY", "setup": {"status": "succeeded"}}))
    assert wait_ready(CogClient(ready.url), alive=lambda: True, logs=str, timeout=10, interval=0.01) == {"status": "succeeded"}
    failed = scripted((503, {"status": "SETUP_FAILED", "setup": {"logs": "no weights"}}))
    with pytest.raises(CogError, match="setup failed: no weights"):
        wait_ready(CogClient(failed.url), alive=lambda: True, logs=str, timeout=10, interval=0.01)
    # A server that died: the last error of its log (coglet's JSON lines), not the raw lines.
    died = "\n".join(
        [
            '{"level":"INFO","fields":{"message":"Traceback (most recent call last):","source":"Stderr"},"target":"coglet::setup"}',
            '{"level":"INFO","fields":{"message":"torch.OutOfMemoryError: CUDA out of memory","source":"Stderr"},"target":"coglet::setup"}',
            '{"level":"INFO","fields":{"message":"Shutting down"},"target":"coglet"}',
        ]
    )
    with pytest.raises(CogError, match=r"^the Cog server exited during setup: torch.OutOfMemoryError: CUDA out of memory$"):
        wait_ready(CogClient(ready.url), alive=lambda: False, logs=lambda: died, timeout=10)
    with pytest.raises(CogError, match="exited during setup: no error in its log$"):
        wait_ready(CogClient(ready.url), alive=lambda: False, logs=lambda: "last words", timeout=10)


def test_cog_failures_read_as_one_line_without_the_hosts_paths():
    """coglet's framing said once; a log's last error; every path of the host as the file's name."""
    framed = (
        "worker setup failed: worker setup failed (slot 50fb30c7-c852): Setup failed: setup failed: "
        "FileNotFoundError: [Errno 2] No such file or directory: '/srv/dreambuild/cache/weights.bin'"
    )
    assert prediction_error(framed) == ("FileNotFoundError: [Errno 2] No such file or directory: '/srv/dreambuild/cache/weights.bin'")
    assert prediction_error("Prediction failed: Prediction failed: CUDA out of memory") == "CUDA out of memory"
    coglet = '{"level":"ERROR","fields":{"message":"Worker initialization failed","error":"%s"},"target":"coglet"}' % framed
    assert log_error("starting\n" + coglet + "\nshutting down") == prediction_error(framed)
    assert log_error('Traceback (most recent call last):\n  File "/x.py", line 1\nValueError: bad\nexiting') == "ValueError: bad"
    assert log_error("nothing went wrong") is None
    assert without_host_paths("cannot identify image file '/tmp/coglet/predictions/ab/inputs/in.png'") == "cannot identify image file 'in.png'"
    # A path in an unpacked image (the layer cache) is the image's own; /src/ and URLs stay.
    assert without_host_paths("no model_index.json in /var/lib/db/cache/images/sha256-ab/root/src/weights.") == "no model_index.json in /src/weights."
    kept = "see /src/predict.py and https://example.com/a/b?c=/d, or ./relative/path"
    assert without_host_paths(kept) == kept


def test_validation_detail_formatter():
    assert describe_validation([{"loc": ("body",), "msg": "Field required"}]) == "body: Field required"
    assert describe_validation("plain text") == "plain text"
