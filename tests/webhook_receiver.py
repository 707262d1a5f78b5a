"""A real HTTP webhook receiver on loopback that records what it gets and answers as scripted."""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: str


@dataclass
class Receiver:
    server: http.server.ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    script: list = field(default_factory=list)  # statuses (int) or "hang" seconds (float) for the next requests

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def wait(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_receiver() -> Receiver:
    receiver: Receiver

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            action = receiver.script.pop(0) if receiver.script else 200
            if isinstance(action, float):
                time.sleep(action)
                action = 200
            self.send_response(action)
            if 300 <= action < 400:
                self.send_header("Location", "/redirected")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver
