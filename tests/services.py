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


def start_registry(root: Path, *, user: str | None = None, password: str | None = None,
                   token: "TokenServer | None" = None) -> Registry:
    """The distribution registry on a free loopback port; htpasswd (Basic) auth when ``user`` is
    given, bearer-token auth through ``token`` when that is."""
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
    if token:
        config["auth"] = {"token": {"realm": token.realm, "service": "dreambuild-registry", "issuer": "dreambuild-test-issuer",
                                    "rootcertbundle": str(token.cert_path)}}
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
    return {**_tool_env(), "CONTAINERS_REGISTRIES_CONF": str(conf), "BUILDAH_ISOLATION": "chroot", "STORAGE_DRIVER": "vfs"}


def _tool_env() -> dict[str, str]:
    """The environment for container tools: credentials are passed explicitly, never read from a
    test's DOCKER_CONFIG (buildah refuses to start when that names a missing file)."""
    return {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE")}


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
    result = subprocess.run(cmd, env=env or _tool_env(), cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr[-3000:]}")
    return result.stdout


def buildah_template(root: Path, registry: Registry, repository: str, *, fmt: str = "oci", tag: str = "v1") -> str:
    """Build a template image with buildah from scratch: /src holds the repo's template code
    (templates/, dreambuild/) and the vanilla cog.yaml, as `cog build -f templates/vanilla/cog.yaml`
    lays it out (without Python, which the local environment provides). Push it; return its digest."""
    env = containers_env(root, [registry.host])
    store = storage_args(root)
    container = run(["buildah", *store, "from", "scratch"], env).strip()
    try:
        src = root / "template-src"
        shutil.rmtree(src, ignore_errors=True)
        (src / "templates").mkdir(parents=True)
        shutil.copy(REPO / "templates" / "predict.py", src / "templates" / "predict.py")
        shutil.copy(REPO / "templates" / "vanilla" / "cog.yaml", src / "cog.yaml")
        shutil.copytree(REPO / "dreambuild", src / "dreambuild", ignore=shutil.ignore_patterns("__pycache__"))
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


class TokenServer:
    """A Docker-style token service for the registry's `token` auth: Basic credentials in, a
    JWT (ES256, certificate in `x5c`) granting the requested repository scopes out."""

    def __init__(self, root: Path, user: str, password: str) -> None:
        import datetime
        import http.server
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.user, self.password = user, password
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dreambuild-test-token")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(1).not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = root / "token-cert.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[dict] = []
        server_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server_self._answer(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_port}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _answer(self, handler) -> None:
        import base64
        from urllib.parse import parse_qs, urlparse

        query = parse_qs(urlparse(handler.path).query)
        auth = handler.headers.get("Authorization", "")
        user = None
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if (name, password) != (self.user, self.password):
                handler.send_response(401)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            user = name
        self.requests.append({"user": user, "scope": query.get("scope", []), "service": query.get("service", [None])[0]})
        access = []
        for scope in query.get("scope", []) if user else []:
            kind, repository, actions = scope.split(":")
            access.append({"type": kind, "name": repository, "actions": actions.split(",")})
        body = json.dumps({"token": self.token(query.get("service", [""])[0], user or "", access)}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def token(self, service: str, subject: str, access: list[dict]) -> str:
        import base64
        import uuid

        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": "dreambuild-test-issuer", "sub": subject, "aud": service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CuttingProxy:
    """A TCP proxy to a registry that cuts the first ``cuts`` connections sending a PATCH after
    ``after`` bytes of it (a network failure in the middle of a blob upload), or holds each of
    the first ``cuts`` PATCHes for ``delay`` seconds (a slow link)."""

    def __init__(self, target: str, cuts: int = 1, after: int = 2**20, delay: float = 0.0) -> None:
        import socket
        import threading

        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.cuts, self.after, self.cut, self.delay = cuts, after, 0, delay
        self._lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((self.target_host, self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src, dst, watch: bool) -> None:
        sent, cutting = 0, False
        try:
            while data := src.recv(2**16):
                if watch and data.startswith(b"PATCH "):
                    with self._lock:
                        cutting = self.cut < self.cuts
                        self.cut += cutting
                    sent = 0
                    if cutting and self.delay:
                        time.sleep(self.delay)
                        cutting = False
                sent += len(data)
                if cutting and sent > self.after:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(2)
                sock.close()
            except OSError:
                pass

    def stop(self) -> None:
        self.listener.close()
