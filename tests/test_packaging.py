"""The wheel, as an operator installs the API server: the builder extra alone (no torch, no
checkout). `dreambuild` answers, `serve` starts with no configuration and says what is missing,
and the demo, which needs a checkout and the ML stack, fails with one line."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from builder.cog.server import free_port
from tests.helpers import REPO


def _uv() -> str:
    found = shutil.which("uv") or str(REPO / ".dev-tools" / "bin" / "uv")
    if not Path(found).exists():
        pytest.skip("uv is not installed (./dev installs it)")
    return found


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    uv = _uv()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    subprocess.run([uv, "build", "-q", "--out-dir", str(root / "dist"), str(REPO)], check=True, env=env, timeout=600)
    (wheel,) = (root / "dist").glob("dreambuild-*.whl")
    # The builder extra's locked versions, as a deployment would pin them.
    subprocess.run(
        [uv, "export", "-q", "--frozen", "--extra", "builder", "--no-emit-project", "--no-hashes", "-o", str(root / "requirements.txt")],
        check=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    subprocess.run([uv, "venv", "-q", "--python", "3.11", str(root / "venv")], check=True, env=env, timeout=120)
    python = str(root / "venv" / "bin" / "python")
    # With bytecode, as the service image's pip installs it (deploy/service.Dockerfile).
    subprocess.run(
        [uv, "pip", "install", "-q", "--compile-bytecode", "--python", python, "-r", str(root / "requirements.txt"), f"{wheel}[builder]"],
        check=True,
        env=env,
        timeout=900,
    )
    return root


def _cli(root: Path, *args, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(
        [str(root / "venv" / "bin" / "dreambuild"), *args],
        capture_output=True,
        text=True,
        cwd=root,
        env={**env, "DREAMBUILD_HOME": str(root / "home")},
        timeout=120,
        **kwargs,
    )


def test_the_wheel_installs_the_api_server_without_torch_or_a_checkout(wheel_venv):
    python = str(wheel_venv / "venv" / "bin" / "python")
    found = subprocess.run(
        [
            python,
            "-c",
            "import builder, dreambuild, importlib.util as u; print(builder.__file__); "
            "print([m for m in ('torch', 'trainer', 'templates', 'fixtures') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        cwd=wheel_venv,
        timeout=60,
    )
    assert "site-packages" in found.stdout and found.stdout.strip().endswith("[]"), found.stdout + found.stderr
    site = Path(found.stdout.splitlines()[0]).parent.parent
    assert list((site / "builder" / "service" / "__pycache__").glob("app.*.pyc")) and list((site / "fastapi" / "__pycache__").glob("*.pyc"))
    assert _cli(wheel_venv, "--version").stdout.startswith("dreambuild ")


def test_serve_from_the_wheel_starts_and_says_what_is_missing(wheel_venv):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    log = wheel_venv / "serve.log"
    proc = subprocess.Popen(
        [str(wheel_venv / "venv" / "bin" / "dreambuild"), "serve", "--port", str(port)],
        cwd=wheel_venv,
        env={**env, "DREAMBUILD_HOME": str(wheel_venv / "home")},
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/docs", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        token = (wheel_venv / "home" / "token").read_text().strip()  # DREAMBUILD_HOME honoured
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/trainings", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200 and "no trainer in the catalog" in log.read_text()
        # The dashboard's and Swagger UI's files are in the wheel (package data, not a checkout).
        for path, marker in (
            ("/", "/ui/app.js"),
            ("/ui/app.js", "streamEvents"),
            ("/ui/zip.js", "storedZip"),
            ("/docs/assets/swagger-ui-bundle.js", "SwaggerUIBundle"),
        ):
            page = httpx.get(f"http://127.0.0.1:{port}{path}")
            assert page.status_code == 200 and marker in page.text, path
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_demo_outside_a_checkout_is_one_line(wheel_venv):
    done = _cli(wheel_venv, "demo", "--out", str(wheel_venv / "demo-out"))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 1 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "checkout" in errors[0]


def test_the_worker_entry_points_run_from_the_wheel(wheel_venv):
    """The service image's other commands (deploy/service.Dockerfile installs the same wheel)."""
    for command in (["worker", "--help"], ["workers", "--help"]):
        done = _cli(wheel_venv, *command)
        assert done.returncode == 0 and "--config" in done.stdout, done.stderr
    config = wheel_venv / "embedded.yaml"
    config.write_text("data_dir: home\n")
    refused = _cli(wheel_venv, "worker", "--config", str(config))
    assert refused.returncode == 1 and "workers: external" in refused.stderr and "Traceback" not in refused.stderr
