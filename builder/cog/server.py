"""A model in the real Cog HTTP server (coglet) as a local subprocess, as a Cog image runs it.

schema (``.cog/openapi_schema.json``, so that coglet validates inputs) → ``python -m
cog.server.http`` with the model's code on ``PYTHONPATH`` → ready (:func:`builder.cog.client.wait_ready`).
Used by the service's ``local`` runner, by ``dreambuild predict`` without Docker, and by the tests.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from builder.checkout import REPO_ROOT
from builder.cog.client import CogClient, CogError, wait_ready

log = logging.getLogger(__name__)

UPLOAD_URL_VARIABLE = "DREAMBUILD_COG_UPLOAD_URL"
# `python -m cog.server.http --upload-url URL`, with the URL (which holds a per-training secret)
# taken from the environment: a process's arguments are readable by every user (`ps`), its
# environment only by its own.
LAUNCH = (
    f"import os, runpy, sys; sys.argv += ['--upload-url', os.environ.pop({UPLOAD_URL_VARIABLE!r})]; "
    "runpy.run_module('cog.server.http', run_name='__main__', alter_sys=True)"
)


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pythonpath(code_root: Path) -> str:
    return os.pathsep.join(filter(None, [str(code_root), os.environ.get("PYTHONPATH")]))


def write_schema(
    project: Path, *, predict: str | None = None, train: str | None = None, python: str = sys.executable, code_root: Path = REPO_ROOT
) -> Path:
    """Write ``project/.cog/openapi_schema.json`` for references relative to ``code_root``."""
    cmd = [python, "-m", "dreambuild.cog_schema", "--out", str(project)]
    cmd += ["--predict", predict] if predict else []
    cmd += ["--train", train] if train else []
    done = subprocess.run(cmd, cwd=code_root, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": _pythonpath(code_root)})
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CogError(f"could not build the Cog schema for {predict or train}: {last}")
    return project / ".cog" / "openapi_schema.json"


@dataclass
class CogServer:
    """A running Cog HTTP server subprocess; use as a context manager or call :meth:`stop`."""

    url: str
    process: subprocess.Popen
    log_path: Path
    setup: dict = field(default_factory=dict)

    @property
    def client(self) -> CogClient:
        return CogClient(self.url)

    def alive(self) -> bool:
        return self.process.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then after ``timeout`` SIGKILL for the server's whole session (its
        predictor worker too). The session is killed even when the server exits in time: coglet
        leaves a worker still in its ``setup()`` running (a canceled training's trainer kept its
        memory, and its GPU's, until setup ended)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # the session is the server's own (start_new_session): nothing else is in it
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.process.kill()
        self.process.wait()

    def __enter__(self) -> "CogServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child: SIGKILL when the process that started it dies (a worker killed mid-training
    must not leave its trainer running for a training that another worker takes over)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


def start_cog_server(
    ref: str,
    project: Path,
    *,
    train: bool = False,
    env: dict[str, str] | None = None,
    upload_url: str | None = None,
    python: str = sys.executable,
    timeout: float = 600.0,
    schema: bool | dict = True,
    code_root: Path = REPO_ROOT,
    abort: Callable[[], None] | None = None,
) -> CogServer:
    """Start ``python -m cog.server.http`` for ``ref`` (``path/to/file.py:Name`` under
    ``code_root``, the checkout by default, or an image's unpacked ``/src``) with ``project`` as
    its working directory, and wait until setup has finished.

    With ``schema`` the OpenAPI schema is written first, so that coglet validates inputs: generated
    (``True``), or given (a dict: a schema generated before for the same code). ``abort``: see
    :func:`~builder.cog.client.wait_ready` (the server is stopped when it raises).
    """
    project.mkdir(parents=True, exist_ok=True)
    if isinstance(schema, dict):
        (project / ".cog").mkdir(exist_ok=True)
        (project / ".cog" / "openapi_schema.json").write_text(json.dumps(schema))
    elif schema:
        write_schema(project, **({"train": ref} if train else {"predict": ref}), python=python, code_root=code_root)
    port = free_port()
    path, _, name = ref.partition(":")
    full_env = {
        **os.environ,
        **(env or {}),
        "PORT": str(port),
        "PYTHONPATH": _pythonpath(code_root),
        # coglet's worker runs `python` from PATH: make it this interpreter.
        "PATH": os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")]),
        "COG_TRAIN_TYPE_STUB" if train else "COG_PREDICT_TYPE_STUB": f"{code_root / path}:{name}",
    }
    cmd = [
        python,
        "-c",
        LAUNCH if upload_url else "import runpy; runpy.run_module('cog.server.http', run_name='__main__', alter_sys=True)",
        "--host",
        "127.0.0.1",
    ]
    cmd += ["--x-mode", "train"] if train else []
    if upload_url:
        full_env[UPLOAD_URL_VARIABLE] = upload_url
    log_path = project / f"cog-server-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            cmd, cwd=project, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent
        )
    server = CogServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        server.setup = wait_ready(server.client, alive=server.alive, logs=server.logs, timeout=timeout, abort=abort)
    except CogError:  # its message has the log's last error; the whole end is the operator's
        server.stop()
        log.warning("the Cog server of %s failed to start; the end of its log:\n%s", ref, server.logs()[-3000:])
        raise
    except BaseException:
        server.stop()
        raise
    return server
