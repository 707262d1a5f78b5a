"""The trainings service, run as `dreambuild serve` in a subprocess, against the real Cog server
running the repo's trainer, the real registry and a real webhook receiver."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from replicate.webhook import InvalidSignatureError, Webhooks, WebhookSigningSecret

from builder.cog.server import free_port
from builder.service.config import local_trainer_version
from fixtures.services import skopeo
from tests.helpers import photos_zip
from tests.webhook_receiver import start_receiver

CLI = str(Path(sys.executable).parent / "dreambuild")
ALICE, BOB = {"Authorization": "Bearer tok-alice"}, {"Authorization": "Bearer tok-bob"}
TRAIN_INPUT = {
    "instance_prompt": "a photo of a cjw toy",
    "class_prompt": "a photo of a toy",
    "max_train_steps": 4,
    "resolution": 64,
    "with_prior_preservation": False,
    "seed": 0,
}


class Service:
    def __init__(self, root: Path, config: dict) -> None:
        self.root, self.config = root, config
        self.url = f"http://127.0.0.1:{config['port']}"
        self.proc = None
        self.env: dict[str, str] = {}
        self.args: list[str] = []

    def start(self) -> "Service":
        self.start_without_schemas()
        # It reads its trainers' schemas in the background; the first request would wait for them.
        deadline = time.monotonic() + 180
        schemas = [Path(self.config["data_dir"]) / "schemas" / f"{v}.json" for v in self.config["trainers"]]
        while not all(p.is_file() for p in schemas) and time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "service.log").read_text()
            time.sleep(0.2)
        return self

    def start_without_schemas(self) -> "Service":
        (self.root / "service.yaml").write_text(yaml.safe_dump(self.config))
        log = open(self.root / "service.log", "ab")
        self.proc = subprocess.Popen(
            [CLI, "serve", "--config", str(self.root / "service.yaml"), *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **self.env},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "service.log").read_text()
            try:
                if httpx.get(f"{self.url}/docs", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError("service did not start")
        return self

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, as systemd stops it; a service still running ``timeout`` s later fails the test (and is killed)."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def wait(self, training_id: str, headers=ALICE, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = httpx.get(f"{self.url}/v1/trainings/{training_id}", headers=headers).json()
            if body["stage"] == "done":
                return body
            time.sleep(0.5)
        raise AssertionError(f"training {training_id} did not finish: {body}")


@pytest.fixture(scope="module")
def receiver():
    server = start_receiver()
    yield server
    server.stop()


def service_config(root: Path, tiny_base, registry, templates, **extra) -> dict:
    """An embedded service with the local trainer on the tiny base model, the vanilla template,
    tokens for alice and bob, and fast webhook retries."""
    template_repo, template_digest = templates["docker"].split("@")
    return {
        "data_dir": str(root / "data"),
        "port": free_port(),
        "registry": registry.host,
        "trainers": {local_trainer_version(): {"name": "dreambooth", "runner": "local", "env": {"DREAMBUILD_BASE_MODEL": str(tiny_base)}}},
        "templates": {template_digest.removeprefix("sha256:"): {"name": "vanilla", "repository": template_repo}},
        "tokens": [{"token": "tok-alice", "owners": ["alice"]}, {"token": "tok-bob", "owners": ["bob"]}],
        "webhook_backoff": 0.05,
        "webhook_attempts": 3,
        "max_body_bytes": 65536,
        "max_upload_bytes": 20 * 2**20,
        "egress_allow": ["127.0.0.1"],  # the webhook receiver and the file servers of these tests
        **extra,
    }


def seed_request(service, receiver, instance_data: str, **extra) -> dict:
    return {
        "input": {**TRAIN_INPUT, "instance_data": instance_data},
        "trainer_version": local_trainer_version(),
        "template_version": next(iter(service.config["templates"])),
        "model": "alice/toy",
        "notes": "notes about this dreambooth training",
        "webhook_completed": f"{receiver.url}/dreambooth-webhook?user=alice&run=1",
        **extra,
    }


def hooks_for(receiver, training_id: str, timeout: float = 30) -> list:
    """The webhooks received for one training (waits for the first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in receiver.received if json.loads(r.body)["id"] == training_id]
        if found:
            return found
        time.sleep(0.1)
    return []


def upload(service, path: Path, headers=ALICE) -> str:
    response = httpx.post(f"{service.url}/v1/uploads/{path.name}", content=path.read_bytes(), headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["url"]


def test_the_seed_request_trains_builds_pushes_and_calls_the_webhook(tmp_path, service, receiver):
    url = upload(service, photos_zip(tmp_path / "photos.zip"))
    response = httpx.post(f"{service.url}/v1/trainings", json=seed_request(service, receiver, url), headers=ALICE)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "starting" and created["urls"]["get"].endswith(created["id"])
    done = service.wait(created["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["version"].startswith("sha256:") and done["metrics"]["predict_time"] > 0 and "Wrote output.zip" in done["logs"]
    # The webhook: the seed's fields, query string kept, signed so the replicate client accepts it.
    (hook,) = hooks_for(receiver, created["id"])
    assert hook.path == "/dreambooth-webhook?user=alice&run=1"
    payload = json.loads(hook.body)
    for key in ("created_at", "error", "id", "input", "logs", "metrics", "model", "notes", "status", "webhook_completed", "version"):
        assert key in payload
    assert payload["status"] == "succeeded" and payload["version"] == done["version"] and payload["model"] == "alice/toy"
    secret = httpx.get(f"{service.url}/v1/webhooks/default/secret", headers=ALICE).json()["key"]
    Webhooks.validate(headers=hook.headers, body=hook.body, secret=WebhookSigningSecret(key=secret))
    # One secret per owner: Bob's cannot sign what Alice's receiver accepts.
    bobs = httpx.get(f"{service.url}/v1/webhooks/default/secret", headers=BOB).json()["key"]
    assert bobs != secret
    with pytest.raises(InvalidSignatureError):
        Webhooks.validate(headers=hook.headers, body=hook.body, secret=WebhookSigningSecret(key=bobs))
    # The image is in the registry: the template plus the weights.
    image = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{done['image']}"))
    assert image["Digest"] == done["version"] and image["Labels"]["io.dreambuild.notes"] == "notes about this dreambooth training"
    versions = httpx.get(f"{service.url}/v1/models/alice/toy/versions", headers=ALICE).json()["results"]
    assert [v["id"] for v in versions] == [done["version"]] and versions[0]["training_id"] == created["id"]
    assert httpx.get(f"{service.url}/v1/models/alice/toy/versions/{done['version']}", headers=ALICE).json()["image"] == done["image"]
    weights = httpx.get(done["output"]["weights"], headers=ALICE)
    assert weights.status_code == 200 and weights.content[:2] == b"PK"
    # The trainer's own copy of output.zip and the build context are gone; the output is kept once.
    assert not (Path(service.config["data_dir"]) / "work" / created["id"]).exists()


def test_a_training_s_likeness_is_in_its_answer_its_webhook_and_the_cli(tmp_path, service, receiver):
    """measure_likeness: the scores of metrics.json (output.zip) in the training's metrics.likeness,
    the same in the completed webhook and in `dreambuild trainings get`."""
    import io
    import zipfile

    url = upload(service, photos_zip(tmp_path / "photos.zip"))
    request = seed_request(service, receiver, url, model="alice/likeness")
    request["input"].update(measure_likeness=True, validation_steps=2, save_infer_steps=2)
    created = httpx.post(f"{service.url}/v1/trainings", json=request, headers=ALICE)
    assert created.status_code == 201, created.text
    done = service.wait(created.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    likeness = done["metrics"]["likeness"]
    archive = zipfile.ZipFile(io.BytesIO(httpx.get(done["output"]["weights"], headers=ALICE).content))
    written = json.loads(archive.read("metrics.json"))["likeness"]
    assert likeness["steps"] == written["steps"] and [e["step"] for e in likeness["steps"]] == [0, 2, 4]
    assert likeness["final"] == written["final"] and likeness["models"] == written["models"] and likeness["evaluation_seconds"] > 0
    hook = json.loads(hooks_for(receiver, done["id"])[0].body)
    assert hook["metrics"]["likeness"] == likeness
    shown = subprocess.run(
        [CLI, "trainings", "get", done["id"]],
        capture_output=True,
        text=True,
        env={**os.environ, "DREAMBUILD_URL": service.url, "DREAMBUILD_TOKEN": "tok-alice"},
        timeout=60,
    )
    assert shown.returncode == 0 and json.loads(shown.stdout)["metrics"]["likeness"] == likeness, shown.stderr


def test_tokens_see_only_their_owners(service, receiver):
    listed = httpx.get(f"{service.url}/v1/trainings", headers=ALICE).json()["results"]
    assert listed, "the seed test ran first"
    some = listed[0]["id"]
    assert httpx.get(f"{service.url}/v1/trainings/{some}", headers=BOB).status_code == 404
    assert httpx.post(f"{service.url}/v1/trainings/{some}/cancel", headers=BOB).status_code == 404
    assert httpx.get(f"{service.url}/v1/trainings", headers=BOB).json()["results"] == []
    assert httpx.get(f"{service.url}/v1/models/alice/toy/versions", headers=BOB).status_code == 404
    assert httpx.get(f"{service.url}/v1/trainings").status_code == 401
    assert httpx.get(f"{service.url}/v1/trainings", headers={"Authorization": "Bearer nope"}).status_code == 401
    response = httpx.post(f"{service.url}/v1/trainings", json=seed_request(service, receiver, "https://example.com/x.zip"), headers=BOB)
    assert response.status_code == 403 and "owner 'alice'" in response.json()["detail"]


VALID = {**TRAIN_INPUT, "instance_data": "https://example.com/p.zip"}


@pytest.mark.parametrize(
    "change, status, message",
    [
        ({"input": None}, 422, "input"),
        ({"extra": 1}, 422, "extra: unknown field"),
        ({"trainer_version": "f" * 64}, 422, "unknown trainer_version"),
        ({"template_version": "e" * 64}, 422, "unknown template_version"),
        ({"model": "Alice/Toy"}, 422, "must be owner/name"),
        ({"model": "alice"}, 422, "must be owner/name"),
        ({"model": "alice/x."}, 422, "must be owner/name"),  # the registry's grammar: no trailing separator
        ({"model": "alice/crlf\n"}, 422, "must be owner/name"),  # `$` alone let a trailing newline through
        ({"model": "alice/" + "x" * 250}, 422, "must be owner/name"),
        ({"webhook_completed": "ftp://example.com/hook"}, 422, "not an http(s) URL"),
        ({"webhook_completed": "http://127.0.0.1:abc/x"}, 422, "its port is not a number"),
        ({"webhook_completed": "http:///no-host"}, 422, "not an http(s) URL"),
        # The egress policy: the allow-list names 127.0.0.1 only.
        ({"webhook_completed": "http://169.254.169.254/latest/meta-data"}, 422, "non-public address"),
        ({"webhook_completed": "http://localhost:8000/shutdown"}, 422, "non-public address"),
        ({"input": {**VALID, "instance_data": "http://10.0.0.8/photos.zip"}}, 422, "input.instance_data 'http://10.0.0.8/photos.zip' points to"),
        ({"input": {**TRAIN_INPUT, "instance_data": "/etc/passwd"}}, 422, "instance_data must be an http(s) URL"),
        # Every file input, found in the trainer's schema: never a path on the service's disk.
        ({"input": {**VALID, "ckpt_base": "/srv/files/x/output.zip"}}, 422, "input.ckpt_base must be an http(s) URL"),
        ({"input": {**VALID, "class_data": "file:///etc/passwd"}}, 422, "input.class_data must be an http(s) URL"),
        # The input against the trainer version's Cog schema, at creation.
        ({"input": {**VALID, "max_train_steps": "abc"}}, 422, "input.max_train_steps: 'abc' is not of type 'integer'"),
        ({"input": {**VALID, "resolution": 7}}, 422, "input.resolution: 7 is less than"),
        # A LoRA training whose output no template could build: refused before any work.
        ({"input": {**VALID, "lora_rank": 8}}, 422, "input.lora_rank=8 trains LoRA adapters, and template 'vanilla' has no base"),
        ({"input": {**VALID, "learning_rat": 1}}, 422, "input.learning_rat: unknown input"),
        ({"input": {**VALID, "lr_scheduler": "fast"}}, 422, "input.lr_scheduler: 'fast' is not one of"),
        ({"input": {**VALID, "seed": "x"}}, 422, "input.seed: 'x' is not of type 'integer'"),
        ({"input": TRAIN_INPUT}, 422, "input.instance_data: required (or input_images)"),
        ({"notes": "x" * 70000}, 413, "over the limit"),
    ],
)
def test_bad_requests_are_refused_and_store_nothing(service, receiver, change, status, message):
    before = httpx.get(f"{service.url}/v1/trainings", headers=ALICE).json()["results"]
    body = {**seed_request(service, receiver, "https://example.com/photos.zip"), **change}
    if change.get("input") is TRAIN_INPUT:
        body["input"] = {k: v for k, v in TRAIN_INPUT.items() if k != "instance_data"}
    if change.get("input", 0) is None:
        del body["input"]
    response = httpx.post(f"{service.url}/v1/trainings", json=body, headers=ALICE)
    assert response.status_code == status and message in response.json()["detail"], response.text
    assert httpx.get(f"{service.url}/v1/trainings", headers=ALICE).json()["results"] == before


def test_webhook_secrets_are_per_owner_and_rotate(service):
    url = f"{service.url}/v1/webhooks/default/secret"
    first = httpx.get(url, headers=ALICE).json()["key"]
    assert httpx.get(url, headers=ALICE).json()["key"] == first and first.startswith("whsec_")
    assert httpx.get(url, params={"owner": "bob"}, headers=ALICE).status_code == 404  # not Alice's to read
    rotated = httpx.post(f"{url}/rotate", headers=ALICE).json()["key"]
    assert rotated != first and httpx.get(url, headers=ALICE).json()["key"] == rotated
    assert httpx.get(url, headers=BOB).json()["key"] not in (first, rotated)


def test_body_limits_hold_on_the_bytes_read(service, receiver):
    """A chunked body carries no Content-Length: the limit is judged on what arrives."""
    before = httpx.get(f"{service.url}/v1/trainings", headers=ALICE).json()["results"]
    body = json.dumps({**seed_request(service, receiver, "https://example.com/photos.zip"), "notes": "x" * 200_000}).encode()

    def chunks():
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    response = httpx.post(f"{service.url}/v1/trainings", content=chunks(), headers={**ALICE, "Content-Type": "application/json"})
    assert response.status_code == 413 and "over the limit of 65536" in response.json()["detail"], response.text
    assert httpx.get(f"{service.url}/v1/trainings", headers=ALICE).json()["results"] == before
    for name in ("photos.zip%0A", "..", ".hidden.zip", "a" * 200 + ".zip"):  # one grammar, whole names only
        assert httpx.post(f"{service.url}/v1/uploads/{name}", content=b"PK", headers=ALICE).status_code in (404, 422), name
    big = (b"x" * 2**20 for _ in range(21))  # 21 MiB against the 20 MiB upload limit, chunked
    response = httpx.post(f"{service.url}/v1/uploads/big.zip", content=big, headers=ALICE)
    assert response.status_code == 413
    assert not any(p.name == "big.zip" for p in (Path(service.config["data_dir"]) / "uploads").rglob("*"))


def test_another_owners_upload_is_refused_at_creation(tmp_path, service, receiver):
    bobs = upload(service, photos_zip(tmp_path / "photos.zip"), headers=BOB)
    before = httpx.get(f"{service.url}/v1/trainings", headers=ALICE).json()["results"]
    response = httpx.post(f"{service.url}/v1/trainings", json=seed_request(service, receiver, bobs), headers=ALICE)
    assert response.status_code == 422 and "is not an upload of this token's owners" in response.json()["detail"]
    extra = {"input": {**TRAIN_INPUT, "instance_data": upload(service, photos_zip(tmp_path / "mine.zip")), "class_data": bobs}}
    response = httpx.post(f"{service.url}/v1/trainings", json=seed_request(service, receiver, "", **extra), headers=ALICE)
    assert response.status_code == 422 and "input.class_data" in response.json()["detail"]
    # A file of /v1/files (where Replicate's clients put a file handle): the owner's own only.
    bobs_file = httpx.post(f"{service.url}/v1/files", files={"content": ("p.zip", b"PK\x05\x06" + b"\0" * 18)}, headers=BOB).json()
    response = httpx.post(f"{service.url}/v1/trainings", json=seed_request(service, receiver, bobs_file["urls"]["get"]), headers=ALICE)
    assert response.status_code == 422 and "is not a file of this token's owners" in response.json()["detail"]
    assert httpx.get(f"{service.url}/v1/trainings", headers=ALICE).json()["results"] == before
    # The trainer's schema was read once, for its version, and kept.
    assert (Path(service.config["data_dir"]) / "schemas" / f"{local_trainer_version()}.json").is_file()


def test_a_failing_training_ends_failed_with_a_webhook(service, receiver):
    bad = seed_request(service, receiver, f"{service.url}/v1/uploads/nope/photos.zip")
    assert httpx.post(f"{service.url}/v1/trainings", json=bad, headers=ALICE).status_code == 422  # not an upload of ours
    missing = seed_request(service, receiver, f"{receiver.url}/missing.zip")  # the receiver answers POST only: GET fails
    created = httpx.post(f"{service.url}/v1/trainings", json=missing, headers=ALICE).json()
    done = service.wait(created["id"])
    assert done["status"] == "failed" and "missing.zip" in done["error"] and done["model_version"] is None
    (hook,) = hooks_for(receiver, created["id"])
    assert json.loads(hook.body)["status"] == "failed" and json.loads(hook.body)["error"] == done["error"]


def test_file_inputs_are_fetched_by_the_service_under_the_egress_policy(tmp_path, service, receiver):
    """A photos URL on an allowed host: the service fetches it once and its trainer trains from the
    service's copy, deleted when the trainer stops. A URL there that redirects to a refused host:
    the service stops at the redirect, and the trainer never starts."""
    import http.server
    import threading

    photos, requests = photos_zip(tmp_path / "photos.zip").read_bytes(), []

    class Files(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            if self.path == "/photos.zip":
                self.send_response(200)
                self.send_header("Content-Length", str(len(photos)))
                self.end_headers()
                self.wfile.write(photos)
                return
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{service.config['port']}/v1/trainings")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fetched = seed_request(service, receiver, f"http://127.0.0.1:{server.server_port}/photos.zip", model="alice/fetched")
        created = httpx.post(f"{service.url}/v1/trainings", json=fetched, headers=ALICE)
        assert created.status_code == 201, created.text
        done = service.wait(created.json()["id"])
        assert done["status"] == "succeeded", done["error"]
        assert requests == ["/photos.zip"]  # fetched once, by the service; the trainer asked the service
        assert not (Path(service.config["data_dir"]) / "files" / done["id"] / "inputs").exists()
        redirected = seed_request(service, receiver, f"http://127.0.0.1:{server.server_port}/elsewhere.zip")
        created = httpx.post(f"{service.url}/v1/trainings", json=redirected, headers=ALICE)
        assert created.status_code == 201, created.text
        done = service.wait(created.json()["id"])
    finally:
        server.shutdown()
    assert done["status"] == "failed" and "input.instance_data" in done["error"] and "non-public address" in done["error"]
    assert "Cog" not in done["logs"]


def test_cancel_stops_the_trainer(tmp_path, service, receiver):
    url = upload(service, photos_zip(tmp_path / "photos.zip"))
    request = seed_request(service, receiver, url)
    request["input"]["max_train_steps"] = 5000
    created = httpx.post(f"{service.url}/v1/trainings", json=request, headers=ALICE).json()
    deadline = time.monotonic() + 300
    while not httpx.get(created["urls"]["get"], headers=ALICE).json()["logs"] and time.monotonic() < deadline:  # the trainer runs
        time.sleep(0.5)
    assert httpx.post(created["urls"]["cancel"], headers=ALICE).status_code == 200
    done = service.wait(created["id"], timeout=120)
    assert done["status"] == "canceled" and done["completed_at"]
    (hook,) = hooks_for(receiver, created["id"])
    assert json.loads(hook.body)["status"] == "canceled"


def test_sigterm_stops_the_trainer_and_the_training_resumes(tmp_path, service, receiver):
    url = upload(service, photos_zip(tmp_path / "photos.zip"))
    request = seed_request(service, receiver, url, model="alice/sigterm")
    request["input"]["max_train_steps"] = 5000
    created = httpx.post(f"{service.url}/v1/trainings", json=request, headers=ALICE).json()
    deadline = time.monotonic() + 300
    while not httpx.get(created["urls"]["get"], headers=ALICE).json()["logs"] and time.monotonic() < deadline:  # the trainer runs
        time.sleep(0.5)
    work = (Path(service.config["data_dir"]) / "work" / created["id"]).resolve()

    def trainer_processes() -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/cwd").startswith(str(work)):
                    found.append(int(pid))
            except OSError:
                continue
        return found

    assert trainer_processes()
    started = time.monotonic()
    service.proc.terminate()
    service.proc.wait(90)
    assert time.monotonic() - started < 60 and trainer_processes() == []
    log = (service.root / "service.log").read_text()
    assert "stopping 1 training(s)" in log and "resumes there at the next start" in log
    service.start()
    resumed = _wait_stage(service, created["id"], ("training",))
    assert resumed["status"] == "processing"
    httpx.post(created["urls"]["cancel"], headers=ALICE)
    assert service.wait(created["id"])["status"] == "canceled"


def _create(service, receiver, url: str, model: str) -> dict:
    """A training of ``model`` on the uploaded photos at ``url``, created by alice."""
    return httpx.post(f"{service.url}/v1/trainings", json=seed_request(service, receiver, url, model=model), headers=ALICE).json()


def _wait_stage(service, training_id: str, stages: tuple[str, ...], timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{service.url}/v1/trainings/{training_id}", headers=ALICE).json()
        if body["stage"] in stages:
            return body
        time.sleep(0.1)
    raise AssertionError(f"training {training_id} never reached {stages}")


@pytest.mark.parametrize("stage", ["queued", "training", "building", "webhook"])
def test_sigkill_in_a_stage_then_restart_completes_once(tmp_path, service, receiver, registry, stage):
    from fixtures.services import CuttingProxy

    url = upload(service, photos_zip(tmp_path / "photos.zip"))
    request = seed_request(service, receiver, url, model=f"alice/restart-{stage}")
    proxy = None
    if stage == "webhook":
        receiver.script = [5.0]  # the first delivery hangs: the service dies while delivering
    if stage == "building":  # push through a link that holds the weights upload (its PUT): the service dies mid-push
        proxy = CuttingProxy(registry.host, cuts=1, delay=8.0, method="PUT")
        service.config["registry"] = proxy.host
        service.stop()
        service.start()
    if stage == "queued":  # a long training ahead keeps ours queued
        ahead = seed_request(service, receiver, url)
        ahead["input"]["max_train_steps"] = 5000
        ahead = httpx.post(f"{service.url}/v1/trainings", json=ahead, headers=ALICE).json()
    created = httpx.post(f"{service.url}/v1/trainings", json=request, headers=ALICE).json()
    try:
        if stage == "queued":
            _wait_stage(service, ahead["id"], ("training",))
        # The webhook stage only records the delivery: the service dies while its own job sends it.
        _wait_stage(service, created["id"], ("webhook", "done") if stage == "webhook" else (stage,))
        if stage == "webhook":
            hooks_for(receiver, created["id"])  # the delivery is in flight
        if stage == "building":
            deadline = time.monotonic() + 60
            while not proxy.cut and time.monotonic() < deadline:  # the weights upload has begun
                time.sleep(0.05)
        service.proc.kill()
        service.proc.wait()
        service.start()
        if stage == "queued":
            httpx.post(ahead["urls"]["cancel"], headers=ALICE)
        done = service.wait(created["id"])
    finally:
        if proxy:
            service.config["registry"] = registry.host
            service.stop()
            service.start()
            proxy.stop()
    assert done["status"] == "succeeded", done["error"]
    if stage == "webhook":  # sent again after the restart, and shown
        deadline = time.monotonic() + 30
        while (done.get("webhook_delivery") or {}).get("state") != "delivered" and time.monotonic() < deadline:
            time.sleep(0.2)
            done = httpx.get(done["urls"]["get"], headers=ALICE).json()
        assert done["webhook_delivery"]["state"] == "delivered" and len(hooks_for(receiver, created["id"])) == 2
    versions = httpx.get(f"{service.url}/v1/models/alice/restart-{stage}/versions", headers=ALICE).json()["results"]
    assert [v["id"] for v in versions] == [done["version"]]
    hooks = hooks_for(receiver, created["id"])
    assert hooks and {h.headers["webhook-id"] for h in hooks} == {f"{created['id']}-completed"}
    assert all(json.loads(h.body)["status"] == "succeeded" for h in hooks)


def test_cancel_during_the_build_is_honoured(tmp_path, service, receiver, registry):
    from fixtures.services import CuttingProxy

    url = upload(service, photos_zip(tmp_path / "photos.zip"))
    # Holds the weights upload (the tiny model's layer goes whole in the upload's first PUT): the build is slow.
    proxy = CuttingProxy(registry.host, cuts=1, delay=6.0, method="PUT")
    service.config["registry"] = proxy.host
    try:
        service.stop()
        service.start()
        created = _create(service, receiver, url, "alice/cancel-build")
        _wait_stage(service, created["id"], ("building",))
        deadline = time.monotonic() + 60
        while not proxy.cut and time.monotonic() < deadline:  # the weights upload has begun
            time.sleep(0.05)
        httpx.post(created["urls"]["cancel"], headers=ALICE)
        done = service.wait(created["id"])
    finally:
        service.config["registry"] = registry.host
        service.stop()
        service.start()
        proxy.stop()
    assert done["status"] == "canceled" and done["model_version"] is None
    assert httpx.get(f"{service.url}/v1/models/alice/cancel-build/versions", headers=ALICE).json()["results"] == []


def test_a_cancel_or_a_shutdown_during_the_trainers_setup_does_not_wait_for_it(tmp_path, service, receiver):
    """A trainer whose setup never ends: a cancel ends the training, and the service stops
    within its fixture's 20 s (both waited for the setup before: up to the runner's timeout)."""
    url = upload(service, photos_zip(tmp_path / "photos.zip"))
    entry = service.config["trainers"][local_trainer_version()]
    entry["predictor"] = "tests/slow_setup_trainer.py:Predictor"
    try:
        service.stop()
        service.start()
        canceled = _create(service, receiver, url, "alice/slow-cancel")
        _wait_stage(service, canceled["id"], ("training",))
        time.sleep(2)  # the trainer's server is in its setup
        httpx.post(canceled["urls"]["cancel"], headers=ALICE)
        assert service.wait(canceled["id"], timeout=60)["status"] == "canceled"
        stopped = _create(service, receiver, url, "alice/slow-stop")
        _wait_stage(service, stopped["id"], ("training",))
        time.sleep(2)
        service.stop()  # terminate, then wait 20 s: subprocess.TimeoutExpired when the shutdown waits for the setup
    finally:
        del entry["predictor"]
        if service.proc.poll() is None:
            service.stop()
        service.start()
    httpx.post(stopped["urls"]["cancel"], headers=ALICE)  # it resumed with the real trainer
    assert service.wait(stopped["id"], timeout=300)["status"] == "canceled"


def test_cog_http_runner_uses_a_running_cog_server(tmp_path, service, receiver, tiny_base):
    from builder.cog.server import start_cog_server

    upload_url = (Path(service.config["data_dir"]) / "cog-upload-url").read_text().strip()
    cog = start_cog_server(
        "trainer/cog_model.py:Predictor",
        tmp_path / "gpu-box",
        upload_url=upload_url,
        env={"DREAMBUILD_BASE_MODEL": str(tiny_base), "DREAMBUILD_WORKDIR": str(tmp_path / "work")},
    )
    version = "c" * 64
    service.config["trainers"][version] = {"name": "remote", "runner": "cog-http", "url": cog.url}
    try:
        service.stop()
        service.start()
        url = upload(service, photos_zip(tmp_path / "photos.zip"))
        request = seed_request(service, receiver, url, trainer_version=version, model="alice/remote")
        created = httpx.post(f"{service.url}/v1/trainings", json=request, headers=ALICE).json()
        done = service.wait(created["id"])
        assert done["status"] == "succeeded", done["error"]
        assert done["trainer_version"] == version and "Wrote output.zip" in done["logs"]
        # The shared upload URL takes only outputs of trainings a cog-http trainer is running now.
        for training_id in (created["id"], httpx.get(f"{service.url}/v1/trainings", headers=ALICE).json()["results"][-1]["id"]):
            response = httpx.put(f"{upload_url}output.zip", content=b"PK forged", headers={"X-Prediction-Id": training_id})
            assert response.status_code == 404
        assert httpx.get(done["output"]["weights"], headers=ALICE).content[:2] == b"PK"
        assert b"forged" not in httpx.get(done["output"]["weights"], headers=ALICE).content
    finally:
        cog.stop()


def test_the_replicate_client_drives_the_service(tmp_path, service, receiver):
    import replicate

    client = replicate.Client(api_token="tok-alice", base_url=service.url)
    url = upload(service, photos_zip(tmp_path / "photos.zip"))
    training = client.trainings.create(
        model="dreambuild/dreambooth",
        version=local_trainer_version(),
        input={**TRAIN_INPUT, "instance_data": url},
        destination="alice/from-client",
        webhook=f"{receiver.url}/replicate",
        webhook_events_filter=["start", "output", "logs", "completed"],
    )
    assert training.status == "starting" and training.destination == "alice/from-client"
    assert training.model == "dreambuild/dreambooth" and training.version == local_trainer_version()
    deadline = time.monotonic() + 300
    while training.status not in ("succeeded", "failed", "canceled") and time.monotonic() < deadline:
        time.sleep(0.5)
        training.reload()
    assert training.status == "succeeded", training.error
    assert training.output["version"].startswith("alice/from-client:sha256:") and training.output["weights"]
    assert training.id in [t.id for t in client.trainings.list()]
    # Each event is its own delivery (one retried after a slow attempt may land after the next
    # event's): wait for all of them, not for the last one sent.
    expected = {f"{training.id}-start", f"{training.id}-output", f"{training.id}-completed"}
    events = {h.headers["webhook-id"] for h in hooks_for(receiver, training.id)}
    deadline = time.monotonic() + 60
    while not expected <= events and time.monotonic() < deadline:
        time.sleep(0.2)
        events = {h.headers["webhook-id"] for h in hooks_for(receiver, training.id)}
    assert expected <= events
    assert any(e.startswith(f"{training.id}-logs-") for e in events)
    secret = client.webhooks.default.secret()
    for hook in hooks_for(receiver, training.id):
        replicate.webhook.Webhooks.validate(headers=hook.headers, body=hook.body, secret=secret)
    # Cancel through the client.
    slow = client.trainings.create(
        model="dreambuild/dreambooth",
        version=local_trainer_version(),
        input={**TRAIN_INPUT, "instance_data": url, "max_train_steps": 5000},
        destination="alice/from-client",
    )
    client.trainings.cancel(slow.id)
    deadline = time.monotonic() + 120
    while slow.status != "canceled" and time.monotonic() < deadline:
        time.sleep(0.5)
        slow.reload()
    assert slow.status == "canceled"
    with pytest.raises(replicate.exceptions.ReplicateError):
        client.trainings.create(model="dreambuild/dreambooth", version="f" * 64, input={}, destination="alice/x")


def trainer_image(root: Path, registry, schema: str) -> str:
    """A trainer image as `cog build` labels it (no Python inside: it fails when run), pushed."""
    from fixtures.services import buildah_template

    digest = buildah_template(root / "trainer-image", registry, "dreambuild-test/trainer", fmt="docker", labels={"run.cog.openapi_schema": schema})
    return f"{registry.host}/dreambuild-test/trainer@{digest}"


@pytest.mark.parametrize("engine", ["none", "podman"])
def test_docker_runner_failures_end_the_training_clearly(tmp_path, service, receiver, registry, request, engine):
    # An image that Cog would have built: its schema in a label, read at creation from the registry.
    schema = (Path(service.config["data_dir"]) / "schemas" / f"{local_trainer_version()}.json").read_text()
    image = trainer_image(tmp_path, registry, schema)
    version = "d" * 64
    service.config["trainers"][version] = {"name": "in-docker", "runner": "docker", "image": image, "gpus": False}
    service.env = {"DOCKER_HOST": request.getfixturevalue("podman").docker_host if engine == "podman" else f"unix://{tmp_path}/none.sock"}
    try:
        service.stop()
        service.start()
        photos = upload(service, photos_zip(tmp_path / "photos.zip"))  # an upload: nothing to fetch before the trainer starts
        created = httpx.post(f"{service.url}/v1/trainings", json=seed_request(service, receiver, photos, trainer_version=version), headers=ALICE)
        assert created.status_code == 201, created.text
        done = service.wait(created.json()["id"], timeout=300)
    finally:
        del service.config["trainers"][version]
        service.env = {}
    assert done["status"] == "failed"
    expected = "cannot reach a Docker engine" if engine == "none" else "trainer (image|container)"
    assert __import__("re").search(expected, done["error"]), done["error"]


def test_trainings_queue_beyond_max_concurrent(tmp_path, service, receiver):
    assert service.config.get("max_concurrent", 1) == 1
    url = upload(service, photos_zip(tmp_path / "photos.zip"))
    long = seed_request(service, receiver, url)
    long["input"]["max_train_steps"] = 5000
    first = httpx.post(f"{service.url}/v1/trainings", json=long, headers=ALICE).json()
    second = httpx.post(f"{service.url}/v1/trainings", json=long, headers=ALICE).json()
    third = httpx.post(f"{service.url}/v1/trainings", json=long, headers=ALICE).json()
    _wait_stage(service, first["id"], ("training",))
    # While the first trains, the second waits its turn and the API answers.
    assert httpx.get(second["urls"]["get"], headers=ALICE).json()["stage"] == "queued"
    assert httpx.get(f"{service.url}/v1/trainings", headers=ALICE).status_code == 200
    # A queued training canceled is canceled at once, not `starting` until its turn.
    canceled = httpx.post(third["urls"]["cancel"], headers=ALICE).json()
    assert canceled["status"] == "canceled" and canceled["completed_at"]
    httpx.post(first["urls"]["cancel"], headers=ALICE)
    _wait_stage(service, second["id"], ("training",))
    httpx.post(second["urls"]["cancel"], headers=ALICE)
    assert service.wait(first["id"])["status"] == "canceled" and service.wait(second["id"])["status"] == "canceled"
    assert service.wait(third["id"])["status"] == "canceled"


def test_embedded_defaults_need_no_configuration(tmp_path, registry, templates):
    """`dreambuild serve` with no config: a local token (mode 0600, path printed), this checkout's
    trainer and the embedded layout's templates in the catalog."""
    from fixtures.services import containers_env

    (tmp_path / "data").mkdir()
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{templates['oci']}",
        f"oci:{tmp_path}/data/images:dreambuild/vanilla",
        env=containers_env(tmp_path / "sk", [registry.host]),
    )
    template_version = json.loads((tmp_path / "data" / "images" / "index.json").read_text())["manifests"][0]["digest"]
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [CLI, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/docs", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        token_file = tmp_path / "data" / "token"
        assert (token_file.stat().st_mode & 0o777) == 0o600 and str(token_file) in log.read_text()
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        assert httpx.get(f"{url}/v1/trainings", headers=headers).json()["results"] == []
        body = {"input": {}, "trainer_version": local_trainer_version(), "template_version": "a" * 64, "model": "anyone/model"}
        response = httpx.post(f"{url}/v1/trainings", json=body, headers=headers)
        assert response.status_code == 422 and "unknown template_version" in response.json()["detail"]  # the trainer is known
        response = httpx.post(
            f"{url}/v1/trainings", json={**body, "template_version": template_version}, headers=headers, timeout=300
        )  # the first request waits while the trainer's schema is read
        assert response.status_code == 422 and "input.instance_prompt: required (or trigger_word" in response.json()["detail"]  # its schema too
        body["input"] = {**TRAIN_INPUT, "instance_data": "https://example.com/photos.zip"}
        response = httpx.post(f"{url}/v1/trainings", json={**body, "template_version": template_version}, headers=headers)
        assert response.status_code == 201, response.text
        httpx.post(response.json()["urls"]["cancel"], headers=headers)
    finally:
        proc.terminate()
        proc.wait(20)


def test_users_get_public_urls_while_trainers_and_model_servers_use_the_internal_one(tmp_path, tiny_base, registry, templates, receiver):
    """public_url names a host nothing here can reach, internal_url the service: the trainer's
    upload, its file inputs, the model server's logs go to internal_url (else the training or the
    prediction would fail), while every URL a user gets, in answers and webhooks, is public. Then,
    internal_url pointing nowhere: the training fails saying the trainer may not reach it."""
    public = "http://dreambuild.invalid:8000"
    config = service_config(tmp_path, tiny_base, registry, templates)
    config.update(public_url=public, internal_url=f"http://127.0.0.1:{config['port']}")
    server = Service(tmp_path, config).start()
    try:
        url = upload(server, photos_zip(tmp_path / "photos.zip"))
        created = httpx.post(f"{server.url}/v1/trainings", json=seed_request(server, receiver, url, model="alice/inside"), headers=ALICE)
        assert created.status_code == 201, created.text
        done = server.wait(created.json()["id"])
        assert done["status"] == "succeeded", done["error"]
        hook = json.loads(hooks_for(receiver, done["id"])[0].body)
        assert all(u.startswith(public + "/") for u in (url, done["urls"]["get"], done["output"]["weights"], hook["urls"]["get"]))
        inputs = {"num_inference_steps": 2, "width": 64, "height": 64, "seed": 1, "disable_safety_check": True}
        answer = httpx.post(f"{server.url}/v1/predictions", headers=ALICE, json={"version": done["version"], "input": inputs}).json()
        assert answer["urls"]["get"].startswith(public + "/")
        deadline = time.monotonic() + 300
        while answer["status"] not in ("succeeded", "failed", "canceled") and time.monotonic() < deadline:
            time.sleep(0.5)
            answer = httpx.get(answer["urls"]["get"].replace(public, server.url), headers=ALICE).json()
        assert answer["status"] == "succeeded", answer
        (output,) = answer["output"]
        assert output.startswith(public + "/") and httpx.get(output.replace(public, server.url)).content[:4] == b"\x89PNG"
    finally:
        server.stop()
    nowhere = f"http://127.0.0.1:{free_port()}"
    config["trainers"][local_trainer_version()]["health_seconds"] = 1
    server = Service(tmp_path, {**config, "internal_url": nowhere}).start()
    try:
        request = seed_request(server, receiver, upload(server, photos_zip(tmp_path / "photos.zip")), model="alice/lost")
        failed = server.wait(httpx.post(f"{server.url}/v1/trainings", json=request, headers=ALICE).json()["id"])
        assert failed["status"] == "failed" and f"cannot reach this service at {nowhere} (internal_url)" in failed["error"], failed["error"]
    finally:
        server.stop()


def test_registry_down_fails_the_build_with_a_webhook(tmp_path, service, receiver, registry):
    service.config["registry"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    try:
        service.stop()
        service.start()
        url = upload(service, photos_zip(tmp_path / "photos.zip"))
        created = httpx.post(f"{service.url}/v1/trainings", json=seed_request(service, receiver, url), headers=ALICE).json()
        done = service.wait(created["id"])
    finally:
        service.config["registry"] = registry.host
        service.stop()
        service.start()
    assert done["status"] == "failed" and "cannot reach registry" in done["error"] and done["metrics"]["predict_time"] > 0
    (hook,) = hooks_for(receiver, created["id"])
    assert json.loads(hook.body)["error"] == done["error"]


def test_retention_routes_delete_uploads_trainings_and_versions(tmp_path, service, receiver):
    url = upload(service, photos_zip(tmp_path / "photos.zip"))
    upload_id = url.split("/v1/uploads/")[1].split("/")[0]
    assert httpx.delete(f"{service.url}/v1/uploads/{upload_id}", headers=BOB).status_code == 404  # not Bob's
    assert httpx.delete(f"{service.url}/v1/uploads/{upload_id}", headers=ALICE).status_code == 204
    assert httpx.get(url).status_code == 404
    assert not (Path(service.config["data_dir"]) / "uploads" / upload_id).exists()
    trainings = httpx.get(f"{service.url}/v1/trainings", params={"limit": 100}, headers=ALICE).json()["results"]
    done = next(t for t in trainings if t["status"] == "succeeded" and t["destination"] == "alice/toy")
    assert httpx.delete(f"{service.url}/v1/trainings/{done['id']}", headers=BOB).status_code == 404
    assert httpx.delete(f"{service.url}/v1/trainings/{done['id']}", headers=ALICE).status_code == 204
    assert httpx.get(done["urls"]["get"], headers=ALICE).status_code == 404
    assert not (Path(service.config["data_dir"]) / "files" / done["id"]).exists()
    version = done["model_version"]
    assert httpx.delete(f"{service.url}/v1/models/alice/toy/versions/{version}", headers=BOB).status_code == 404
    assert httpx.delete(f"{service.url}/v1/models/alice/toy/versions/{version}", headers=ALICE).status_code == 204
    assert version not in [v["id"] for v in httpx.get(f"{service.url}/v1/models/alice/toy/versions", headers=ALICE).json()["results"]]


def test_a_lora_training_builds_on_a_template_with_its_base_and_runs(tmp_path_factory, tmp_path, tiny_base, registry, templates, receiver):
    """lora_rank > 0 on a template whose catalog entry names the trainer's base: the adapters are
    the model's one small layer, and the version runs through the predictions route — fast
    booting: the first LoRA version starts the template's base server, and the next version of
    that template (another model) runs on it at once, with no cold start, each its own images.
    Then 20 LoRA versions in turn on a memory budget of one server: no cold start after the
    first; and (the service restarted with servers_ahead: 1) a full fine-tune's first
    prediction on a server started ahead, loading only its weights."""
    from dreambuild.layout import pipeline_digest
    from fixtures.services import buildah_template

    digest = buildah_template(tmp_path_factory.mktemp("buildah-base"), registry, "dreambuild/vanilla-sd-tiny", baked={"base": tiny_base})
    root = tmp_path_factory.mktemp("service-lora")
    config = service_config(root, tiny_base, registry, templates, model_memory=1)  # one server at a time
    config["templates"][digest.removeprefix("sha256:")] = {
        "name": "vanilla-sd-tiny",
        "repository": f"{registry.host}/dreambuild/vanilla-sd-tiny",
        "base_digest": pipeline_digest(tiny_base),
    }
    config["trainers"][local_trainer_version()]["base_digest"] = pipeline_digest(tiny_base)
    server = Service(root, config).start()
    try:
        url = upload(server, photos_zip(tmp_path / "photos.zip"))
        request = seed_request(server, receiver, url, template_version=digest.removeprefix("sha256:"), model="alice/lora-toy")
        request["input"].update(lora_rank=4, lora_lr=5e-2)
        response = httpx.post(f"{server.url}/v1/trainings", json=request, headers=ALICE)
        assert response.status_code == 201, response.text
        done = server.wait(response.json()["id"])
        assert done["status"] == "succeeded", done["error"]
        raw = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{done['image']}"))
        assert raw["layers"][-1]["size"] < 300_000  # the adapters, not a pipeline

        def predict(version: str) -> tuple[dict, bytes]:
            prediction = httpx.post(
                f"{server.url}/v1/predictions",
                headers={**ALICE, "Prefer": "wait=60"},
                timeout=90,
                json={"version": version, "input": {"num_inference_steps": 2, "seed": 1, "disable_safety_check": True}},
            )
            body = prediction.json()
            assert prediction.status_code == 201 and body["status"] == "succeeded", body
            return body["metrics"], httpx.get(body["output"][0], headers=ALICE).content

        metrics, first = predict(done["version"])
        assert first[:8] == b"\x89PNG\r\n\x1a\n" and "setup_time" in metrics and metrics["boot"] == "cold"  # the base server's start
        request.update(model="alice/lora-two")
        request["input"]["seed"] = 7
        two = server.wait(httpx.post(f"{server.url}/v1/trainings", json=request, headers=ALICE).json()["id"])
        assert two["status"] == "succeeded", two["error"]
        metrics, second = predict(two["version"])
        assert "setup_time" not in metrics and second != first  # on the warm base, with its own adapters
        assert metrics["boot"] == "adapter load" and metrics["adapter_load_time"] > 0
        metrics, again = predict(done["version"])
        assert "setup_time" not in metrics and again == first and metrics["boot"] == "warm"  # its adapters still loaded
        # The base server killed while idle: the next prediction gets a new one (not an error).
        from tests.test_predictions import _children

        (base,) = [pid for pid in _children(server.proc.pid) if b"cog.server.http" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        os.killpg(base, signal.SIGKILL)
        metrics, after = predict(two["version"])
        assert after == second and metrics["boot"] == "cold"

        def model_servers() -> list[int]:
            return [pid for pid in _children(server.proc.pid) if b"cog.server.http" in Path(f"/proc/{pid}/cmdline").read_bytes()]

        # 20 LoRA versions in turn, twice, on a budget of one server: one base runs them all.
        template = f"{registry.host}/dreambuild/vanilla-sd-tiny@{digest}"
        weights = unzipped(httpx.get(done["output"]["weights"], headers=ALICE).content, tmp_path / "lora")
        versions = [done["version"], two["version"]]
        versions += [
            built_version(server, template, scaled_lora(weights, tmp_path / f"lora-{i}", 1 + (i + 1) / 10), f"alice/lora-{i}") for i in range(18)
        ]
        before, images = model_servers(), set()
        for version in versions * 2:
            metrics, image = predict(version)
            assert metrics["boot"] in ("adapter load", "warm") and "setup_time" not in metrics, metrics
            images.add(image)
        assert model_servers() == before and len(images) == 20  # no process started; each version its own image
        # Both official clients, each on a LoRA version never run: on the warm base, its adapters loaded.
        from PIL import Image
        from replicate import Client

        scaled = [scaled_lora(weights, tmp_path / f"lora-client-{i}", 3.0 + i) for i in range(2)]
        py, js = (built_version(server, template, folder, f"alice/lora-{name}") for folder, name in zip(scaled, ("py", "js")))
        output = Client(api_token="tok-alice", base_url=server.url).run(
            f"alice/lora-py:{py}", input={"num_inference_steps": 2, "seed": 1, "disable_safety_check": True}
        )
        assert httpx.get(str(output[0])).content[:4] == b"\x89PNG"
        Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "in.png")
        node = subprocess.run(
            ["node", str(Path(__file__).parent / "js" / "run_model.mjs"), server.url, "tok-alice", f"alice/lora-js:{js}", str(tmp_path / "in.png")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert node.returncode == 0 and json.loads(node.stdout.strip().splitlines()[-1])["outputs"][0]["png"], node.stderr
        ran = {p["version"]: p for p in httpx.get(f"{server.url}/v1/predictions", headers=ALICE).json()["results"][:2]}
        assert {ran[py]["metrics"]["boot"], ran[js]["metrics"]["boot"]} == {"adapter load"} and model_servers() == before
    finally:
        server.stop()
    # A full fine-tune's first prediction on a server started ahead (servers_ahead: 1, memory for it).
    server = Service(root, {**config, "model_memory": None, "servers_ahead": 1}).start()
    try:
        full = [
            built_version(server, template, fine_tune(tiny_base, tmp_path / name, factor), f"alice/{name}")
            for name, factor in (("full-a", 1.0), ("full-b", 1.05))
        ]
        metrics, first = predict(full[0])
        assert metrics["boot"] == "cold" and "setup_time" in metrics
        deadline = time.monotonic() + 300
        while "model version ahead:" not in (root / "service.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.5)  # until the server started ahead is up
        assert len(model_servers()) == 2
        metrics, other = predict(full[1])
        assert metrics["boot"] == "pre-started" and "setup_time" not in metrics and metrics["weights_load_time"] > 0, metrics
        assert other != first and other[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        server.stop()


def unzipped(data: bytes, dest: Path) -> Path:
    import io
    import zipfile

    zipfile.ZipFile(io.BytesIO(data)).extractall(dest)
    return dest


def scaled_lora(weights: Path, dest: Path, factor: float) -> Path:
    """Another fine-tune of the same base: a LoRA training's output with its up-projections scaled."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    from dreambuild.layout import LORA_WEIGHTS

    shutil.copytree(weights, dest)
    with safe_open(dest / LORA_WEIGHTS, "pt") as lora:
        tensors = {k: lora.get_tensor(k) * (factor if ".up." in k else 1) for k in lora.keys()}
        metadata = lora.metadata()
    assert any(".up." in k for k in tensors), sorted(tensors)[:4]
    save_file(tensors, dest / LORA_WEIGHTS, metadata=metadata)
    return dest


def fine_tune(pipeline: Path, dest: Path, factor: float) -> Path:
    """A full fine-tune's output: the pipeline with its UNet's weights scaled, and the args.json
    whose instance prompt its predictions default to."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(pipeline, dest)
    (unet,) = (dest / "unet").glob("*.safetensors")
    save_file({k: v * factor for k, v in load_file(unet).items()}, unet)
    (dest / "args.json").write_text(json.dumps({"instance_prompt": "a photo of a cjw toy"}))
    return dest


def built_version(server: "Service", template: str, weights: Path, model: str) -> str:
    """A version of ``model`` built from ``weights`` on ``template`` and recorded in the service,
    as a training's build stage does (for versions no training needs to make)."""
    from builder.image.build import build_image, model_ref
    from builder.service.config import ServiceConfig
    from tests.test_predictions import record_version

    settings = ServiceConfig(**server.config).builder_settings()
    result = build_image(weights, template, model_ref(model, settings), settings=settings)
    record_version(server.config, model, result.digest, result.image)
    return result.digest


def test_lora_trainings_need_a_template_with_the_trainers_base_and_find_it_by_default(tmp_path):
    from fastapi import HTTPException

    from builder.service.config import ServiceConfig, TemplateEntry
    from builder.service.http.trainings import _check_lora_template, default_template

    aa, bb = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    t, plain, tr = "1" * 64, "2" * 64, "3" * 64
    config = ServiceConfig(
        data_dir=tmp_path,
        trainers={tr: {"name": "dreambooth", "base_digest": bb}},
        templates={t: {"name": "vanilla-sd15", "repository": "r/sd15", "base_digest": aa}, plain: {"name": "vanilla", "repository": "r/vanilla"}},
    )
    with pytest.raises(HTTPException, match="has no base baked in"):
        _check_lora_template(config, tr, plain, {"lora_rank": 4})
    with pytest.raises(HTTPException, match=f"the trainer's base is {bb}, and template 'vanilla-sd15' bakes {aa}"):
        _check_lora_template(config, tr, t, {"lora_rank": 4})
    _check_lora_template(config, tr, t, {"lora_rank": 4, "ckpt_base": "https://example.com/base.zip"})  # its own base
    # No template named: a full fine-tune builds on vanilla; a LoRA on the template baking the
    # trainer's base, and none fits while the bases differ.
    assert default_template(config, tr, {}) == plain
    with pytest.raises(HTTPException, match="template_version is required: no single template fits"):
        default_template(config, tr, {"lora_rank": 4})
    config.trainers[tr].base_digest = aa
    _check_lora_template(config, tr, t, {"lora_rank": 4})
    assert default_template(config, tr, {"lora_rank": 4}) == t
    # A base chosen by name (base_model: flux-dev) is checked against its own digest, and finds its template.
    cc, flux = "sha256:" + "c" * 64, "4" * 64
    config.templates[flux] = TemplateEntry(name="vanilla-flux", repository="r/flux", base_digest=cc)
    config.trainers[tr].base_digests = {"flux-dev": cc}
    with pytest.raises(HTTPException, match=f"base_model 'flux-dev' is {cc}, and template 'vanilla-sd15' bakes {aa}"):
        _check_lora_template(config, tr, t, {"lora_rank": 4, "base_model": "flux-dev"})
    _check_lora_template(config, tr, flux, {"lora_rank": 4, "base_model": "flux-dev"})
    assert default_template(config, tr, {"lora_rank": 4, "base_model": "flux-dev"}) == flux
    assert default_template(config, tr, {"lora_rank": 4}) == t
    # lora_rank left empty is the trainer's default: 16 on a FLUX base (LoRA only), 0 (a full fine-tune) otherwise.
    trainer = config.trainers[tr]
    assert trainer.trains_lora({"base_model": "flux-dev"}) and default_template(config, tr, {"base_model": "flux-dev"}) == flux
    assert not trainer.trains_lora({"base_model": "flux-dev", "lora_rank": 0}) and not trainer.trains_lora({})
    assert not trainer.trains_lora({"base_model": "flux-dev", "ckpt_base": "https://example.com/base.zip"})  # its own base, unknown here
    config.default_template_version = "sha256:" + plain  # the operator's choice wins
    assert default_template(config, tr, {"lora_rank": 4}) == plain
    config.default_template_version = "9" * 64  # one the catalog lacks: a 422, not a 500 further on
    with pytest.raises(HTTPException, match="is not in the catalog"):
        default_template(config, tr, {})


def test_the_api_docs_render_offline_in_a_browser(tmp_path, service):
    """/docs loads Swagger UI from the service itself (no CDN: nothing else is reachable here),
    and a real headless Chromium renders the operations from the service's OpenAPI 3.1."""
    import re
    import shutil

    page = httpx.get(f"{service.url}/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 3 and all(a.startswith("/docs/assets/") for a in assets), assets  # script, style, icon
    for asset in assets:
        fetched = httpx.get(service.url + asset)
        assert fetched.status_code == 200 and fetched.content, asset
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is missing: ./dev test installs it"
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            f"{service.url}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'class="swagger-ui' in dom and "opblock" in dom, dom[-2000:]
    assert "/v1/trainings" in dom and "Unable to render this definition" not in dom


def test_the_api_docs_show_every_public_answer_s_shape(service):
    """Every public operation documents what it answers: a named JSON shape (Training,
    Prediction, Page of …), a file's bytes, an event stream or nothing (204) — never an empty
    schema; the shapes name their Enum values."""
    spec = httpx.get(f"{service.url}/openapi.json").json()
    untyped = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            code, answer = next((c, a) for c, a in operation["responses"].items() if c.startswith("2"))
            content = answer.get("content", {})
            if code == "204" or path.endswith("/events") or "application/octet-stream" in content:
                continue
            if "$ref" not in content.get("application/json", {}).get("schema", {}):
                untyped.append(f"{method.upper()} {path}")
    assert not untyped, untyped
    shapes = spec["components"]["schemas"]
    assert {"Training", "Prediction", "Version", "Model", "File", "Upload", "Catalog", "Page_Training_"} <= set(shapes)
    assert shapes["Status"]["enum"] == ["starting", "processing", "succeeded", "failed", "canceled"]
    assert {"status", "urls", "output", "webhook_delivery"} <= set(shapes["Training"]["required"])


def test_values_no_store_keeps_are_refused_at_entry_and_nothing_is_stored(tmp_path, service, receiver):
    """NaN, Infinity and NUL characters (PostgreSQL refuses them; a Cog server refuses non-finite
    numbers after acceptance), paging parameters out of range, a Cancel-After past any use: a 422
    naming the field, on a connection that stays usable, with nothing recorded. (test_workers runs
    the same against PostgreSQL.)"""
    refuse_what_no_store_keeps(tmp_path, service, receiver)


def refuse_what_no_store_keeps(tmp_path, service, receiver) -> None:
    url = upload(service, photos_zip(tmp_path / "photos.zip"))
    before = httpx.get(f"{service.url}/v1/trainings", headers=ALICE).json()["results"]
    with httpx.Client(base_url=service.url, headers={**ALICE, "Content-Type": "application/json"}) as client:
        for field, body in (
            ("input.learning_rate", seed_request(service, receiver, url, input={**TRAIN_INPUT, "instance_data": url, "learning_rate": float("nan")})),
            (
                "input.prior_loss_weight",
                seed_request(service, receiver, url, input={**TRAIN_INPUT, "instance_data": url, "prior_loss_weight": float("inf")}),
            ),
            ("notes", seed_request(service, receiver, url, notes="a\x00b")),
        ):
            refused = client.post("/v1/trainings", content=json.dumps(body))  # Python's JSON writes NaN and Infinity
            assert refused.status_code == 422 and refused.json()["detail"].startswith(f"{field}: "), refused.text
        for body in ({"version": "alice/toy", "input": {"guidance_scale": float("-inf")}}, {"version": "alice/toy", "input": {"prompt": "\x00"}}):
            refused = client.post("/v1/predictions", content=json.dumps(body))
            assert refused.status_code == 422 and refused.json()["detail"].startswith("input."), refused.text
        refused = client.post("/v1/predictions", content=json.dumps({"version": "alice/toy", "input": {}}), headers={"Cancel-After": "9" * 400 + "s"})
        assert refused.status_code == 422 and "longer than the maximum" in refused.json()["detail"]
        for path in (
            "/v1/predictions?cursor=99999999999999999999",
            "/v1/trainings?cursor=99999999999999999999",
            "/v1/trainings?cursor=-1",
            "/v1/predictions?limit=0",
            "/v1/trainings?limit=100000",
        ):
            answer = client.get(path)
            assert answer.status_code == 422 and ("cursor" in answer.json()["detail"] or "limit" in answer.json()["detail"]), path
        # NUL in the URL: a name, a filter (a query PostgreSQL would refuse to run).
        for path, field in (
            ("/v1/predictions?model=alice/t%00y", "query.model"),
            ("/v1/trainings?cursor=1%00", "query.cursor"),
            ("/v1/models/alice/t%00y", "path"),
            ("/v1/uploads/a%00b.zip", "path"),
        ):
            answer = client.request("POST" if "uploads" in path else "GET", path, content=b"PK")
            assert answer.status_code == 422 and answer.json()["detail"].startswith(f"{field}: contains a NUL"), (path, answer.text)
        assert client.get("/v1/trainings").status_code == 200  # the same connection, still served
    stored = Path(service.config["data_dir"]) / "prediction-files"
    files_before = sorted(stored.iterdir()) if stored.is_dir() else []
    refused = httpx.post(
        f"{service.url}/v1/files", files={"content": ("a.png", b"x" * 4096)}, data={"metadata": json.dumps({"note": "a\x00b"})}, headers=ALICE
    )
    assert refused.status_code == 422 and refused.json()["detail"].startswith("metadata.note: contains a NUL"), refused.text
    assert (sorted(stored.iterdir()) if stored.is_dir() else []) == files_before  # no file left without its record
    assert httpx.get(f"{service.url}/v1/trainings", headers=ALICE).json()["results"] == before


def test_user_content_never_runs_on_the_services_origin(service):
    """An upload named notes.html holding a script is served as an attachment of no renderable
    type, unsniffed and sandboxed; /docs and the dashboard cannot be framed."""
    page = b"<html><script>fetch('/steal?' + sessionStorage.getItem('dreambuild-token'))</script></html>"
    url = httpx.post(f"{service.url}/v1/uploads/notes.html", content=page, headers=ALICE).json()["url"]
    served = httpx.get(url)  # a capability URL: no token
    assert served.status_code == 200 and served.content == page
    assert served.headers["content-type"] == "application/octet-stream"
    assert served.headers["content-disposition"].startswith("attachment")
    assert served.headers["x-content-type-options"] == "nosniff" and "sandbox" in served.headers["content-security-policy"]
    for path in ("/docs", "/"):
        answer = httpx.get(f"{service.url}{path}")
        assert answer.headers["content-type"].startswith("text/html")
        assert answer.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in answer.headers["content-security-policy"]


def test_every_notation_of_a_private_address_is_refused_at_creation(tmp_path, service, receiver):
    """Integer, hex, octal, short and IPv4-mapped forms of a loopback address are what the resolver
    makes of them: refused at creation (422) as webhooks and file inputs, nothing stored. (This
    service allows 127.0.0.1 for its receiver: 127.0.0.2, which it does not, is written here.)"""
    url = upload(service, photos_zip(tmp_path / "photos.zip"))
    before = httpx.get(f"{service.url}/v1/trainings", headers=ALICE).json()["results"]
    port = service.url.rsplit(":", 1)[1]
    for host in ("2130706434", "0x7f000002", "0177.0.0.2", "127.2", "[::ffff:7f00:2]", "169.254.169.254", "0xa9fea9fe"):
        hostile = f"http://{host}:{port}/x"
        refused = httpx.post(f"{service.url}/v1/trainings", json=seed_request(service, receiver, url, webhook_completed=hostile), headers=ALICE)
        assert refused.status_code == 422 and "non-public address" in refused.json()["detail"], (host, refused.text)
        refused = httpx.post(f"{service.url}/v1/trainings", json=seed_request(service, receiver, hostile), headers=ALICE)
        assert refused.status_code == 422 and "non-public address" in refused.json()["detail"], (host, refused.text)
        refused = httpx.post(f"{service.url}/v1/predictions", json={"version": "alice/toy", "input": {}, "webhook": hostile}, headers=ALICE)
        assert refused.status_code == 422 and "non-public address" in refused.json()["detail"], (host, refused.text)
    assert httpx.get(f"{service.url}/v1/trainings", headers=ALICE).json()["results"] == before
