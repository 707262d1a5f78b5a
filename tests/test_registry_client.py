"""References, credentials and the registry client's auth and retry rules."""

import base64
import http.server
import json
import os
import threading

import pytest

from builder.oci.credentials import lookup_credentials
from builder.oci.references import LayoutRef, RegistryRef, normalize_digest, parse_image_ref
from builder.oci.registry import RegistryClient
from builder.oci.transport import is_plain_http
from dreambuild.errors import ImageReferenceError, RegistryUnavailableError

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ubuntu", RegistryRef("docker.io", "library/ubuntu")),
        ("r8.im/owner/model:v1", RegistryRef("r8.im", "owner/model", tag="v1")),
        (f"localhost:5000/a/b@{D}", RegistryRef("localhost:5000", "a/b", digest=D)),
        (f"ghcr.io/a/b:t@{D}", RegistryRef("ghcr.io", "a/b", tag="t", digest=D)),
        ("oci:/data/images:alice/m:v2", LayoutRef(__import__("pathlib").Path("/data/images"), name="alice/m:v2")),
        (f"oci:/data/images@{D}", LayoutRef(__import__("pathlib").Path("/data/images"), digest=D)),
    ],
)
def test_references_parse(text, expected):
    assert parse_image_ref(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("Owner/Model", "lowercase"),
        ("r8.im/a/b:bad tag!", "not a valid tag"),
        ("r8.im/a/b@sha256:xyz", "not a sha256 digest"),
        ("oci:", "names no directory"),
        ("oci:/x:Bad", "not a valid image name"),
    ],
)
def test_bad_references_are_named(text, message):
    with pytest.raises(ImageReferenceError, match=message):
        parse_image_ref(text)


def test_digest_normalization_and_plain_http_rule():
    assert normalize_digest("a" * 64) == D and normalize_digest(D) == D and normalize_digest("abc") is None
    assert is_plain_http("localhost:5000") and is_plain_http("127.0.0.1:5000") and is_plain_http("[::1]:5000")
    assert not is_plain_http("r8.im") and is_plain_http("registry.lan:5000", frozenset({"registry.lan:5000"}))


def test_credentials_from_docker_config_auth_file_and_helper(tmp_path):
    docker_dir = tmp_path / "docker"
    docker_dir.mkdir()
    (docker_dir / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "r.example:5000": {"auth": base64.b64encode(b"alice:pw").decode()},
                    "https://index.docker.io/v1/": {"username": "hub", "password": "hubpw"},
                },
                "credHelpers": {"helped.example": "dreambuildtest"},
            }
        )
    )
    helper = tmp_path / "bin" / "docker-credential-dreambuildtest"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread server\n[ "$server" = helped.example ] || exit 1\necho \'{"Username":"bot","Secret":"tok"}\'\n')
    helper.chmod(0o755)
    env = {"DOCKER_CONFIG": str(docker_dir), "PATH": f"{helper.parent}:{os.environ['PATH']}"}
    old = os.environ["PATH"]
    os.environ["PATH"] = env["PATH"]
    try:
        assert lookup_credentials("r.example:5000", env).password == "pw"
        assert lookup_credentials("docker.io", env).username == "hub"
        assert lookup_credentials("helped.example", env).password == "tok"
        assert lookup_credentials("other.example", env) is None
        auth_file = tmp_path / "auth.json"
        auth_file.write_text(json.dumps({"auths": {"other.example": {"auth": base64.b64encode(b"podman:pw2").decode()}}}))
        assert lookup_credentials("other.example", {**env, "REGISTRY_AUTH_FILE": str(auth_file)}).username == "podman"
    finally:
        os.environ["PATH"] = old


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 a number of times, then 200; or asks for a bearer token from its own realm."""

    failures = 0
    seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        cls = type(self)
        cls.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/token"):
            return self._send(200, {"token": "t0k"})
        if cls.failures > 0:
            cls.failures -= 1
            return self._send(503, {"errors": [{"code": "UNAVAILABLE", "message": "try later"}]})
        if self.headers.get("Authorization") != "Bearer t0k":
            self.send_response(401)
            host = self.headers["Host"]
            self.send_header("WWW-Authenticate", f'Bearer realm="http://{host}/token",service="flaky",scope="repository:a/b:pull"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {}, "layers": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def flaky():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Flaky.seen = []
    yield server
    server.shutdown()
    server.server_close()


def test_transient_failures_are_retried_and_bearer_tokens_fetched_with_scopes(flaky):
    _Flaky.failures = 2
    client = RegistryClient(f"127.0.0.1:{flaky.server_port}", retries=4, backoff=0.01, credentials=None)
    manifest = client.get_manifest("a/b", "latest")
    assert manifest.media_type == "application/vnd.oci.image.manifest.v1+json"
    paths = [path for path, _ in _Flaky.seen]
    assert paths[:3] == ["/v2/a/b/manifests/latest"] * 3  # two 503s, then the 401 challenge
    assert any(p.startswith("/token?") and "scope=repository%3Aa%2Fb%3Apull" in p and "service=flaky" in p for p in paths)
    assert _Flaky.seen[-1] == ("/v2/a/b/manifests/latest", "Bearer t0k")


def test_persistent_failures_end_in_one_line(flaky):
    _Flaky.failures = 10
    client = RegistryClient(f"127.0.0.1:{flaky.server_port}", retries=3, backoff=0.01, credentials=None)
    with pytest.raises(RegistryUnavailableError, match=r"answered UNAVAILABLE: try later \(after 3 attempts\)") as info:
        client.get_manifest("a/b", "latest")
    assert "\n" not in str(info.value) and _Flaky.failures == 7
