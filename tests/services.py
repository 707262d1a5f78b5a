"""Real container tooling for tests and benches: the CNCF registry (Debian ``docker-registry``),
``podman system service`` as a Docker engine, and buildah/skopeo/umoci, all on loopback and in
temporary directories (vfs storage, chroot isolation: no containers run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dreambuild.cog_server import free_port

REPO = Path(__file__).resolve().parent.parent


def _stop(proc: subprocess.Popen, grace: float = 15) -> None:
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait(url: str, *, transport: httpx.HTTPTransport | None = None, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited: {log.read_text()[-2000:]}")
        try:
            with httpx.Client(transport=transport, timeout=2) as client:
                if client.get(url).status_code in (200, 401):
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.args[0]} did not answer at {url}: {log.read_text()[-2000:]}")


@dataclass
class Registry:
    host: str
    root: Path
    proc: subprocess.Popen
    user: str | None = None
    password: str | None = None

    def stop(self) -> None:
        _stop(self.proc)


def start_registry(root: Path, *, user: str | None = None, password: str | None = None) -> Registry:
    """The distribution registry on a free loopback port; htpasswd (Basic) auth when ``user`` is given."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    if user:
        import bcrypt

        (root / "htpasswd").write_bytes(user.encode() + b":" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)) + b"\n")
        config["auth"] = {"htpasswd": {"realm": "dreambuild-tests", "path": str(root / "htpasswd")}}
    (root / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    log = root / "registry.log"
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    _wait(f"http://127.0.0.1:{port}/v2/", proc=proc, log=log)
    return Registry(host=f"127.0.0.1:{port}", root=root, proc=proc, user=user, password=password)


def storage_args(root: Path) -> list[str]:
    return ["--root", str(root / "storage"), "--runroot", str(root / "run"), "--storage-driver", "vfs"]


def containers_env(root: Path, insecure: list[str]) -> dict[str, str]:
    """Environment for podman/buildah/skopeo: a registries.conf marking test registries insecure."""
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "registries.conf"
    conf.write_text('unqualified-search-registries = []\n' + "".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n' for h in insecure))
    return {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf), "BUILDAH_ISOLATION": "chroot", "STORAGE_DRIVER": "vfs"}


@dataclass
class Podman:
    """``podman system service``: a Docker-compatible engine API on a unix socket."""

    root: Path
    socket: Path
    proc: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def stop(self) -> None:
        _stop(self.proc)


def start_podman(root: Path, insecure: list[str]) -> Podman:
    env = containers_env(root, insecure)
    socket = root / "podman.sock"
    log = root / "podman.log"
    proc = subprocess.Popen(["podman", *storage_args(root), "system", "service", "--time=0", f"unix://{socket}"],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not socket.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    _wait("http://d/_ping", transport=httpx.HTTPTransport(uds=str(socket)), proc=proc, log=log)
    return Podman(root=root, socket=socket, proc=proc, env=env)


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr[-3000:]}")
    return result.stdout


def buildah_template(root: Path, registry: Registry, repository: str, *, fmt: str = "oci", tag: str = "v1") -> str:
    """Build a template image with buildah from scratch: /src holds the repo's template code and a
    cog.yaml, as `cog build -f templates/vanilla/cog.yaml` lays it out. Push it; return its digest."""
    env = containers_env(root, [registry.host])
    store = storage_args(root)
    container = run(["buildah", *store, "from", "scratch"], env).strip()
    try:
        src = root / "template-src"
        shutil.rmtree(src, ignore_errors=True)
        (src / "templates").mkdir(parents=True)
        shutil.copy(REPO / "templates" / "predict.py", src / "templates" / "predict.py")
        shutil.copy(REPO / "templates" / "vanilla" / "cog.yaml", src / "cog.yaml")
        run(["buildah", *store, "copy", container, str(src), "/src"], env)
        run(["buildah", *store, "config", "--workingdir", "/src", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--env", "DREAMBUILD_WEIGHTS=/src/weights",
             "--label", "run.cog.version=0.23.1", "--os", "linux", "--arch", "amd64", container], env)
        image = f"dreambuild-test/{repository}:{tag}"
        run(["buildah", *store, "commit", "--format", fmt, container, image], env)
    finally:
        run(["buildah", *store, "rm", container], env)
    digest_file = root / "pushed.digest"
    auth = ["--creds", f"{registry.user}:{registry.password}"] if registry.user else []
    run(["buildah", *store, "push", "--tls-verify=false", *auth, "--digestfile", str(digest_file), image,
         f"docker://{registry.host}/{repository}:{tag}"], env)
    return digest_file.read_text().strip()


def skopeo(*args: str, env: dict[str, str] | None = None) -> str:
    return run(["skopeo", *args], env)


def unpack_rootfs(layout: Path, name: str, bundle: Path) -> Path:
    """``umoci unpack`` an image of an OCI layout; return its root file system."""
    run(["umoci", "unpack", "--rootless", "--image", f"{layout}:{name}", str(bundle)])
    return bundle / "rootfs"
