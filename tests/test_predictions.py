"""Hosted predictions: versions built by trainings of the service (`dreambuild serve`, embedded
worker) run through Replicate's routes, driven by the official `replicate` Python client, with
real Cog model servers kept warm (a memory budget of one loaded model) and a real webhook receiver."""

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ModelError, ReplicateError

from builder.cog.client import CogClient
from tests.helpers import photos_zip
from tests.test_service import ALICE, BOB, Service, seed_request, service_config, upload
from tests.webhook_receiver import start_receiver

FAST = {"num_inference_steps": 2, "width": 64, "height": 64, "seed": 3, "disable_safety_check": True}


@pytest.fixture(scope="module")
def receiver():
    server = start_receiver()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_base, registry, templates):
    root = tmp_path_factory.mktemp("predictions")
    config = service_config(root, tiny_base, registry, templates, max_upload_bytes=2 * 2**20, model_memory=1, max_concurrent=2)
    server = Service(root, config).start()
    yield server
    server.stop()


def train(service, receiver, tmp_path, model: str, wait: bool = True, seed: int = 0) -> dict:
    url = upload(service, photos_zip(tmp_path / f"{model.replace('/', '-')}.zip"))
    request = seed_request(service, receiver, url, model=model)
    request["input"]["seed"] = seed  # another seed, other weights: another version
    created = httpx.post(f"{service.url}/v1/trainings", json=request, headers=ALICE)
    assert created.status_code == 201, created.text
    return service.wait(created.json()["id"]) if wait else created.json()


@pytest.fixture(scope="module")
def toy(service, receiver, tmp_path_factory) -> dict:
    """A version of alice/toy, built by a training of the service."""
    done = train(service, receiver, tmp_path_factory.mktemp("toy"), "alice/toy")
    assert done["status"] == "succeeded", done["error"]
    return done


def client(service, token: str = "tok-alice") -> replicate.Client:
    return replicate.Client(api_token=token, base_url=service.url)


def png(tmp_path, colour=(200, 30, 30)) -> Path:
    path = tmp_path / "in.png"
    Image.new("RGB", (64, 64), colour).save(path)
    return path


def prediction(service, prediction_id: str, headers=ALICE) -> dict:
    return httpx.get(f"{service.url}/v1/predictions/{prediction_id}", headers=headers).json()


def wait_done(service, prediction_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = prediction(service, prediction_id)
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        time.sleep(0.3)
    raise AssertionError(f"prediction {prediction_id} did not finish: {body}")


def record_version(config: dict, model: str, version: str, image: str) -> None:
    """A version in a service's own database, as a build records it (for services that built nothing)."""
    from builder.service.store.database import Database

    db = Database(Path(config["data_dir"]) / "dreambuild.sqlite")
    try:
        db.versions.add(*model.split("/"), {"id": version, "model": model, "image": image, "created_at": "2026-01-01T00:00:00Z"})
    finally:
        db.close()


def test_replicate_run_with_a_file_input_on_a_trained_version(tmp_path, service, toy):
    """replicate.run("alice/toy:<version>") as its README shows, an img2img input uploaded by the
    client to /v1/files; the output URLs work without the token and hold the images."""
    with open(png(tmp_path), "rb") as image:
        output = client(service).run(f"alice/toy:{toy['version']}", input={"image": image, "prompt_strength": 0.5, **FAST})
    assert isinstance(output, list) and len(output) == 1
    fetched = httpx.get(str(output[0]))  # no Authorization: a signed, expiring URL
    assert fetched.status_code == 200 and Image.open(io.BytesIO(fetched.content)).size == (64, 64)
    # An image of the allow-list, shown inline, but unsniffed and sandboxed like all user content.
    assert fetched.headers["content-type"] == "image/png" and fetched.headers["content-disposition"].startswith("inline")
    assert fetched.headers["x-content-type-options"] == "nosniff" and "sandbox" in fetched.headers["content-security-policy"]
    # The signature is checked: the same URL with another expiry or signature is refused.
    assert httpx.get(str(output[0]).replace("signature=", "signature=x")).status_code == 404
    # The version the client fetched: its Cog schema, as Replicate's clients read it.
    version = client(service).models.get("alice/toy").latest_version
    assert version.id == toy["version"] and "image" in version.openapi_schema["components"]["schemas"]["Input"]["properties"]


def test_models_create_get_list_and_delete_as_replicates_client_calls_them(service, toy):
    """models.create (what Replicate's guides call before a training), get, list and delete, with
    the official client; a model made by a training is listed beside it; another owner's is 404."""
    api = client(service)
    created = api.models.create(owner="alice", name="made-first", visibility="public", hardware="gpu-t4", description="cjw, later")
    assert (created.owner, created.name, created.visibility, created.latest_version) == ("alice", "made-first", "public", None)
    assert api.models.get("alice/made-first").description == "cjw, later"
    listed = {f"{m.owner}/{m.name}": m for m in api.models.list().results}  # every result a full model, as the client parses it
    assert listed["alice/toy"].latest_version.id == toy["version"] and listed["alice/made-first"].run_count == 0
    with pytest.raises(ReplicateError, match="already exists"):
        api.models.create(owner="alice", name="toy", visibility="private", hardware="cpu")  # a training made it
    with pytest.raises(ReplicateError, match="may not create models of owner 'bob'"):
        api.models.create(owner="bob", name="x", visibility="private", hardware="cpu")
    body = {"owner": "alice", "name": "y", "visibility": "private", "hardware": "cpu"}
    bad = httpx.post(f"{service.url}/v1/models", headers=ALICE, json={**body, "name": "Bad Name"})
    assert bad.status_code == 422 and "lowercase" in bad.text
    script = httpx.post(f"{service.url}/v1/models", headers=ALICE, json={**body, "cover_image_url": "javascript:alert(1)"})
    assert script.status_code == 422 and "cover_image_url" in script.text
    assert httpx.get(f"{service.url}/v1/models/alice/y", headers=ALICE).status_code == 404  # neither refusal made a model
    assert httpx.get(f"{service.url}/v1/models/alice/made-first", headers=BOB).status_code == 404
    assert "alice/made-first" not in {f"{m['owner']}/{m['name']}" for m in httpx.get(f"{service.url}/v1/models", headers=BOB).json()["results"]}
    with pytest.raises(ReplicateError, match="has versions"):
        api.models.delete("alice/toy")
    assert httpx.delete(f"{service.url}/v1/models/alice/made-first", headers=BOB).status_code == 404
    api.models.delete("alice/made-first")
    assert httpx.get(f"{service.url}/v1/models/alice/made-first", headers=ALICE).status_code == 404


def test_the_javascript_client_runs_a_version_with_a_file_input(tmp_path, service, toy):
    """The npm `replicate` package (tests/js, installed by ./dev test) with the machine's node."""
    script = Path(__file__).parent / "js" / "run_model.mjs"
    done = subprocess.run(
        ["node", str(script), service.url, "tok-alice", f"alice/toy:{toy['version']}", str(png(tmp_path))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (output,) = json.loads(done.stdout.strip().splitlines()[-1])["outputs"]
    assert output["status"] == 200 and output["png"] and output["url"].startswith(f"{service.url}/v1/files/")
    # The file input it uploaded is Alice's, with the metadata part the JS client sends.
    files = httpx.get(f"{service.url}/v1/files", headers=ALICE).json()["results"]
    assert any(f["name"].startswith("buffer_") for f in files)


def test_predictions_create_get_list_and_warm_reuse(service, toy):
    api = client(service)
    first = api.predictions.create(version=toy["version"], input={"prompt": "a photo of a cjw toy", **FAST}, wait=True)
    assert first.status == "succeeded", first.error
    second = api.predictions.create(version=f"alice/toy:{toy['version']}", input={"prompt": "a photo of a cjw toy", **FAST})
    second.wait()
    assert second.status == "succeeded", second.error
    # Same inputs, same seed: the same image; the second ran on the warm server (no setup).
    images = [httpx.get(p.output[0]).content for p in (first, second)]
    assert images[0] == images[1]
    assert "setup_time" not in second.metrics and second.metrics["predict_time"] > 0
    assert second.metrics["queue_time"] >= 0 and second.metrics["peak_host_memory_bytes"] > 0
    assert 0 < second.metrics["inference_time"] < second.metrics["predict_time"]  # the template's own, through Cog
    got = api.predictions.get(second.id)
    assert got.status == "succeeded" and got.version == toy["version"]
    listed = [p.id for p in api.predictions.list().results]
    assert listed.index(second.id) < listed.index(first.id)  # newest first
    by_status = httpx.get(f"{service.url}/v1/predictions", params={"status": "succeeded", "model": "alice/toy"}, headers=ALICE).json()
    assert {second.id, first.id} <= {p["id"] for p in by_status["results"]}
    # The model route runs the latest version.
    latest = httpx.post(f"{service.url}/v1/models/alice/toy/predictions", json={"input": FAST}, headers={**ALICE, "Prefer": "wait"}, timeout=90)
    assert latest.status_code == 201 and latest.json()["status"] == "succeeded" and latest.json()["version"] == toy["version"]


def test_bad_predictions_are_refused_clearly(service, toy):
    def create(body, headers=ALICE):
        return httpx.post(f"{service.url}/v1/predictions", json=body, headers=headers)

    cases = [
        ({"version": "alice/toy:" + "0" * 64, "input": {}}, "not found"),
        ({"version": "alice/nope", "input": {}}, "not found"),
        ({"version": toy["version"], "input": {"colour": "red"}}, "input.colour: unknown input"),
        ({"version": toy["version"], "input": {"num_outputs": 99}}, "input.num_outputs"),
        ({"version": toy["version"], "input": {"image": "file:///etc/passwd"}}, "input.image must be a file"),
        ({"version": toy["version"], "input": {"image": "http://10.1.2.3/x.png"}}, "input.image"),
        ({"version": toy["version"], "input": {"image": f"{service.url}/v1/files/{'a' * 32}"}}, "not found"),
        ({"training": "nope", "input": {}}, "training 'nope' not found"),
    ]
    for body, message in cases:
        response = create(body)
        assert response.status_code == 422 and message in response.json()["detail"], (body, response.text)
    # Bob may not run Alice's model, nor see her predictions and files.
    assert create({"version": toy["version"], "input": {}}, headers=BOB).status_code == 422
    assert create({"version": f"alice/toy:{toy['version']}", "input": {}}, headers=BOB).status_code == 422
    mine = create({"version": toy["version"], "input": FAST}).json()
    assert httpx.get(f"{service.url}/v1/predictions/{mine['id']}", headers=BOB).status_code == 404
    assert httpx.post(f"{service.url}/v1/predictions/{mine['id']}/cancel", headers=BOB).status_code == 404
    assert mine["id"] not in [p["id"] for p in httpx.get(f"{service.url}/v1/predictions", headers=BOB).json()["results"]]
    uploaded = httpx.post(f"{service.url}/v1/files", files={"content": ("a.png", b"\x89PNG", "image/png")}, headers=ALICE).json()
    assert httpx.get(f"{service.url}/v1/files/{uploaded['id']}", headers=BOB).status_code == 404
    assert create({"version": toy["version"], "input": {"image": uploaded["urls"]["get"]}}, headers=BOB).status_code == 422
    # A file over the limit is refused on the bytes read, and nothing is kept.
    big = httpx.post(f"{service.url}/v1/files", files={"content": ("big.bin", b"x" * (3 * 2**20), "application/octet-stream")}, headers=ALICE)
    assert big.status_code == 413
    with pytest.raises(ReplicateError):
        client(service, "tok-bob").run(f"alice/toy:{toy['version']}", input=FAST)
    assert wait_done(service, mine["id"])["status"] == "succeeded"


def test_cancel_and_cancel_after(service, toy):
    slow = {**FAST, "num_inference_steps": 400, "width": 256, "height": 256}
    created = httpx.post(f"{service.url}/v1/predictions", json={"version": toy["version"], "input": slow}, headers=ALICE).json()
    deadline = time.monotonic() + 120
    while prediction(service, created["id"])["status"] != "processing" and time.monotonic() < deadline:
        time.sleep(0.2)
    canceled = httpx.post(created["urls"]["cancel"], headers=ALICE).json()
    assert canceled["id"] == created["id"]
    assert wait_done(service, created["id"], 60)["status"] == "canceled"
    timed = httpx.post(
        f"{service.url}/v1/predictions", json={"version": toy["version"], "input": slow}, headers={**ALICE, "Cancel-After": "5s"}
    ).json()
    assert wait_done(service, timed["id"], 120)["status"] == "canceled"
    # The server is still good for the next prediction.
    after = httpx.post(
        f"{service.url}/v1/predictions", json={"version": toy["version"], "input": FAST}, headers={**ALICE, "Prefer": "wait=60"}, timeout=90
    ).json()
    assert after["status"] == "succeeded", after["error"]
    bad = httpx.post(f"{service.url}/v1/predictions", json={"version": toy["version"], "input": FAST}, headers={**ALICE, "Cancel-After": "soon"})
    assert bad.status_code == 422 and "Cancel-After" in bad.json()["detail"]


def test_queued_on_a_training_then_two_versions_alternate_with_one_loaded(tmp_path, service, receiver, toy):
    """ChaosPixel's "predict before training ends", then eviction: a budget of one loaded model,
    two versions in turn, each answer still right."""
    training = train(service, receiver, tmp_path, "alice/second", wait=False, seed=1)
    # A client that reads exactly as long as the wait it asked for (the Python client adds 0.5 s)
    # still gets the answer: the wait ends before it, counted from the request's arrival.
    queued = httpx.post(
        f"{service.url}/v1/predictions",
        json={"training": training["id"], "input": FAST},
        headers={**ALICE, "Prefer": "wait=6"},
        timeout=httpx.Timeout(60, read=6.0),
    ).json()
    assert queued["status"] == "starting" and queued["version"] == ""
    done = wait_done(service, queued["id"])
    built = service.wait(training["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["version"] == built["version"] and done["model"] == "alice/second" and "setup_time" in done["metrics"]
    outputs = {"alice/second": [httpx.get(done["output"][0]).content]}
    for model in ("alice/toy", "alice/second", "alice/toy"):  # each start evicts the other
        body = httpx.post(
            f"{service.url}/v1/models/{model}/predictions", json={"input": FAST}, headers={**ALICE, "Prefer": "wait"}, timeout=90
        ).json()
        assert body["status"] == "succeeded", body["error"]
        assert "setup_time" in body["metrics"]  # the other version was loaded: this one started again
        outputs.setdefault(model, []).append(httpx.get(body["output"][0]).content)
    assert outputs["alice/toy"][0] == outputs["alice/toy"][1] and outputs["alice/second"][0] == outputs["alice/second"][1]
    assert outputs["alice/toy"][0] != outputs["alice/second"][0]  # two fine-tunes: two different images
    # A prediction queued on a training that then ends without a version fails, saying why; one
    # asked for after that is refused.
    url = upload(service, photos_zip(tmp_path / "long.zip"))
    request = seed_request(service, receiver, url, model="alice/long")
    request["input"]["max_train_steps"] = 5000
    long = httpx.post(f"{service.url}/v1/trainings", json=request, headers=ALICE).json()
    queued = httpx.post(f"{service.url}/v1/predictions", json={"training": long["id"], "input": FAST}, headers=ALICE).json()
    httpx.post(long["urls"]["cancel"], headers=ALICE)
    failed = wait_done(service, queued["id"])
    assert failed["status"] == "failed" and f"training {long['id']} canceled" in failed["error"]
    late = httpx.post(f"{service.url}/v1/predictions", json={"training": long["id"], "input": FAST}, headers=ALICE)
    assert late.status_code == 422 and f"training {long['id']} canceled" in late.json()["detail"]


def test_prediction_webhooks_are_signed_and_complete(service, receiver, toy):
    body = {
        "version": toy["version"],
        "input": FAST,
        "webhook": f"{receiver.url}/predictions?who=alice",
        "webhook_events_filter": ["start", "logs", "completed"],
    }
    created = httpx.post(f"{service.url}/v1/predictions", json=body, headers=ALICE).json()
    wait_done(service, created["id"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        hooks = [r for r in receiver.received if json.loads(r.body)["id"] == created["id"]]
        if any(json.loads(h.body)["status"] == "succeeded" for h in hooks):
            break
        time.sleep(0.1)
    ids = [h.headers["webhook-id"] for h in hooks]
    assert {f"{created['id']}-start", f"{created['id']}-completed"} <= set(ids) and len(ids) == len(set(ids))
    assert all(i.startswith(f"{created['id']}-logs-") for i in set(ids) - {f"{created['id']}-start", f"{created['id']}-completed"})
    final = json.loads(next(h.body for h in hooks if h.headers["webhook-id"].endswith("-completed")))
    assert final["status"] == "succeeded" and final["output"][0].startswith(service.url)
    secret = httpx.get(f"{service.url}/v1/webhooks/default/secret", headers=ALICE).json()["key"]
    from replicate.webhook import Webhooks, WebhookSigningSecret

    for hook in hooks:
        Webhooks.validate(headers=hook.headers, body=hook.body, secret=WebhookSigningSecret(key=secret))


def test_a_model_failure_fails_its_prediction_and_the_worker_goes_on(service, toy):
    bad = client(service)
    with pytest.raises(ModelError):
        bad.run(f"alice/toy:{toy['version']}", input={**FAST, "width": 100})  # not a multiple of 8: the model refuses
    good = httpx.post(
        f"{service.url}/v1/predictions", json={"version": toy["version"], "input": FAST}, headers={**ALICE, "Prefer": "wait"}, timeout=90
    ).json()
    assert good["status"] == "succeeded", good["error"]


def test_the_cli_runs_lists_gets_and_cancels(tmp_path, service, toy):
    import os
    import sys

    cli_path = str(Path(sys.executable).parent / "dreambuild")

    def cli(*args):
        env = {**os.environ, "DREAMBUILD_URL": service.url, "DREAMBUILD_TOKEN": "tok-alice"}
        return subprocess.run([cli_path, *args], capture_output=True, text=True, env=env, timeout=600)

    args = [a for k, v in FAST.items() for a in ("-i", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]
    done = cli(
        "run",
        f"alice/toy:{toy['version']}",
        *args,
        "-i",
        f"image=@{png(tmp_path)}",
        "-i",
        "prompt_strength=0.5",
        "-o",
        str(tmp_path / "out"),
        "--wait",
    )
    assert done.returncode == 0, done.stderr
    (written,) = [Path(line) for line in done.stdout.split()]
    assert written.parent == tmp_path / "out" and Image.open(written).size == (64, 64)
    listed = cli("predictions", "list", "--model", "alice/toy", "--status", "succeeded")
    assert listed.returncode == 0 and toy["version"] in listed.stdout
    prediction_id = listed.stdout.split()[0]
    assert json.loads(cli("predictions", "get", prediction_id).stdout)["status"] == "succeeded"
    assert "cancel requested (succeeded)" in cli("predictions", "cancel", prediction_id).stdout
    queued = cli("run", "alice/toy", *args)
    assert queued.returncode == 0 and len(queued.stdout.strip()) == 26
    failed = cli("run", "alice/none", "--wait")
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert failed.returncode == 1 and len(errors) == 1 and "not found" in errors[0], failed.stderr


def test_versions_that_cannot_run_fail_their_predictions_clearly(service, registry, templates, toy):
    """An image gone from the registry; a model that fails in predict (the weight-less template
    recorded as a version): each prediction fails saying so, and the worker goes on."""
    gone = "sha256:" + "e" * 64
    record_version(service.config, "alice/gone", gone, f"{registry.host}/alice/gone@{gone}")
    record_version(service.config, "alice/hollow", templates["docker"].split("@")[1], templates["docker"])
    for model, message in (("alice/gone", "could not start"), ("alice/hollow", "has no Stable Diffusion weights")):
        body = httpx.post(
            f"{service.url}/v1/models/{model}/predictions", json={"input": FAST}, headers={**ALICE, "Prefer": "wait"}, timeout=90
        ).json()
        body = wait_done(service, body["id"])
        assert body["status"] == "failed" and message in body["error"] and "Traceback (most recent" not in body["error"], body
        # No path of this machine: the weights the template looked for are named by their path in the image.
        assert str(service.root) not in body["error"] and "/tmp/" not in body["error"], body
    assert "(no model_index.json in /src/weights)" in body["error"], body
    assert (
        "not found"
        in wait_done(service, httpx.post(f"{service.url}/v1/models/alice/gone/predictions", json={"input": {}}, headers=ALICE).json()["id"])["error"]
    )
    good = httpx.post(
        f"{service.url}/v1/predictions", json={"version": toy["version"], "input": FAST}, headers={**ALICE, "Prefer": "wait"}, timeout=90
    ).json()
    assert good["status"] == "succeeded", good["error"]


def test_the_docker_model_runner_fails_clearly_where_containers_cannot_run(tmp_path, tiny_base, registry, templates, podman, toy):
    """model_runner: docker asks the engine (podman here, which cannot start containers on these
    machines) for the image itself: the prediction fails with the engine's reason, and no
    container is left behind."""
    import docker

    config = service_config(tmp_path, tiny_base, registry, templates, model_runner="docker")
    other = Service(tmp_path, config)
    other.env = {"DOCKER_HOST": podman.docker_host}
    other.start()
    try:
        record_version(config, "alice/toy", toy["version"], toy["image"])
        body = httpx.post(
            f"{other.url}/v1/predictions", json={"version": toy["version"], "input": FAST}, headers={**ALICE, "Prefer": "wait"}, timeout=90
        ).json()
        failed = wait_done(other, body["id"])
        assert failed["status"] == "failed" and "could not start" in failed["error"] and "model image" in failed["error"], failed
        left = docker.DockerClient(base_url=podman.docker_host).containers.list(all=True, filters={"name": "dreambuild-model-"})
        assert left == []
    finally:
        other.stop()


def test_a_pool_of_running_model_servers_serves_its_version(tmp_path, tiny_base, registry, templates, builder_settings, service, toy):
    """model_urls: Cog servers already running a version (other GPU boxes); each is leased by one
    prediction at a time, nothing is started or stopped, so no setup."""
    from builder.service.predictions.memory import Memory
    from builder.service.predictions.model_servers import ModelServers

    outside = ModelServers(builder_settings, Memory(1))  # a Cog server of the version, started by someone else
    # ... with the schema known for the version (a cold start generates none): the server serves it.
    known = httpx.get(f"{service.url}/v1/models/alice/toy/versions/{toy['version']}", headers=ALICE).json()["openapi_schema"]
    known["components"]["schemas"]["Input"]["properties"]["prompt"]["description"] = "the version's stored schema"
    model, _ = outside.acquire(toy["version"], toy["image"], schema=known)
    assert (
        CogClient(model.server.url).openapi()["components"]["schemas"]["Input"]["properties"]["prompt"]["description"]
        == "the version's stored schema"
    )
    config = service_config(tmp_path, tiny_base, registry, templates, model_urls={toy["version"]: [model.server.url]})
    other = Service(tmp_path, config).start()
    try:
        record_version(config, "alice/toy", toy["version"], toy["image"])
        for _ in range(2):
            body = httpx.post(
                f"{other.url}/v1/predictions", json={"version": toy["version"], "input": FAST}, headers={**ALICE, "Prefer": "wait"}, timeout=90
            ).json()
            done = wait_done(other, body["id"])
            assert done["status"] == "succeeded" and "setup_time" not in done["metrics"], done
        # The service started no model server of its own, and left the pool's running.
        assert model.server.alive() and "loaded in" not in (tmp_path / "service.log").read_text()
    finally:
        other.stop()
        outside.release(model)
        outside.stop_all()


def test_sigterm_lets_a_running_prediction_end_then_hands_the_next_back(tmp_path, tiny_base, registry, templates, toy):
    """A graceful stop loses no prediction: one running at SIGTERM ends within
    shutdown_grace_seconds although the service's listener is closed by then (its end comes back
    on the Cog request itself), and with no grace left one is handed back and runs again after
    the restart."""
    # A grace no loaded machine runs out of (CI's two busy cores made 60 steps take over 30 s).
    config = service_config(tmp_path, tiny_base, registry, templates, shutdown_grace_seconds=300)
    other = Service(tmp_path, config).start()
    slow = {**FAST, "num_inference_steps": 60, "width": 128, "height": 128}

    def running() -> str:
        created = httpx.post(f"{other.url}/v1/predictions", json={"version": toy["version"], "input": slow}, headers=ALICE).json()
        deadline = time.monotonic() + 120
        while prediction(other, created["id"])["status"] != "processing":
            assert time.monotonic() < deadline, prediction(other, created["id"])
            time.sleep(0.1)
        return created["id"]

    try:
        record_version(config, "alice/toy", toy["version"], toy["image"])
        ended = running()
        other.stop(timeout=300)  # the stop waits for the running prediction
        log = (tmp_path / "service.log").read_text()
        assert "1 running prediction(s) may end within 300s" in log and "handed back" not in log
        other.config["shutdown_grace_seconds"] = 0
        other.start()
        done = prediction(other, ended)
        assert done["status"] == "succeeded" and done["completed_at"], done
        assert httpx.get(done["output"][0]).status_code == 200
        handed = running()
        other.stop()
        assert f"prediction {handed} handed back by the shutdown" in (tmp_path / "service.log").read_text()
        other.start()  # resumed: it runs again from its inputs
        again = wait_done(other, handed, 120)
        assert again["status"] == "succeeded" and httpx.get(again["output"][0]).status_code == 200, again
        # A model server killed during a prediction: the prediction fails saying so in one line
        # (no coglet JSON line, no path of this machine), and the next one gets a fresh server.
        crashed = running()
        (server,) = [pid for pid in _children(other.proc.pid) if b"cog.server.http" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        os.killpg(server, signal.SIGKILL)
        failed = wait_done(other, crashed, 60)
        assert failed["status"] == "failed" and failed["error"].startswith("the model's Cog server stopped: "), failed
        assert "{" not in failed["error"] and str(tmp_path) not in failed["error"] and "/tmp" not in failed["error"], failed
        after = httpx.post(
            f"{other.url}/v1/predictions", json={"version": toy["version"], "input": FAST}, headers={**ALICE, "Prefer": "wait"}, timeout=90
        ).json()
        assert wait_done(other, after["id"])["status"] == "succeeded"
    finally:
        other.stop()


def _children(pid: int) -> list[int]:
    """The process's descendants (Linux /proc)."""
    found, pending = [], [pid]
    while pending:
        for task in Path(f"/proc/{pending.pop()}/task").iterdir():
            kids = [int(k) for k in (task / "children").read_text().split()]
            found += kids
            pending += kids
    return found


def test_a_server_started_ahead_takes_the_next_cold_start_of_its_template(service, toy):
    """servers_ahead=1: once a full fine-tune's server has started, one more of its template waits
    with no weights (in a free slot); the next cold start of a version of that template takes it,
    and its first prediction loads only the weights — the same image a normal start gives."""
    import uuid

    from builder.service.config import ServiceConfig
    from builder.service.predictions.memory import budget
    from builder.service.predictions.model_servers import ModelServers

    settings = ServiceConfig(**service.config).builder_settings()
    servers = ModelServers(settings, budget(None, None, None), ahead=1)  # half the machine: room for one ahead
    inputs = {**FAST, "prompt": "a photo of a cjw toy"}
    try:
        model, cold = servers.acquire(toy["version"], toy["image"])
        assert cold and model.context == {} and model.boot == "cold"
        normal = model.client.run_prediction(uuid.uuid4().hex, inputs)
        assert normal["status"] == "succeeded", normal.get("error")
        servers.release(model, broken=True)  # gone: the version's next prediction needs a server again
        deadline = time.monotonic() + 300
        while servers.waiting() < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert servers.waiting() == 1, "no server was started ahead for the template"
        model, cold = servers.acquire(toy["version"], toy["image"])
        assert cold and model.boot == "pre-started" and servers.waiting() == 0
        assert set(model.context) == {"dreambuild_weights"}
        ahead = model.client.run_prediction(uuid.uuid4().hex, inputs, context=model.context)
        assert ahead["status"] == "succeeded", ahead.get("error")
        assert ahead["metrics"]["weights_load_time"] > 0 and ahead["output"] == normal["output"]
        servers.release(model)
    finally:
        servers.stop_all()


def test_the_memory_budget_is_bytes_measured_from_the_servers(service, toy, caplog):
    """model_memory: each server's resident memory is measured; two servers load side by side
    while they fit, and the least recently used idle one is stopped (logged, with its bytes) when
    the next would not fit. Two version ids of one image: two servers."""
    import logging
    import uuid

    from builder.service.config import ServiceConfig
    from builder.service.predictions.memory import Memory
    from builder.service.predictions.model_servers import ModelServers

    settings = ServiceConfig(**service.config).builder_settings()
    servers = ModelServers(settings, Memory(2**50))
    inputs = {**FAST, "prompt": "a photo of a cjw toy"}
    try:
        first, cold = servers.acquire("sha256:" + "a" * 64, toy["image"])
        assert cold and first.client.run_prediction(uuid.uuid4().hex, inputs)["status"] == "succeeded"
        servers.release(first)
        size = first.memory
        assert size.host > 100 * 2**20 and size.device == 0  # a Python process with torch and the pipeline, on the CPU
        servers.budget = Memory(int(size.host * 2.5))  # room for two
        second, cold = servers.acquire("sha256:" + "b" * 64, toy["image"])
        servers.release(second)
        assert cold and servers.evictions == 0 and len(servers.loaded()) == 2
        assert servers.used().host == first.memory.host + second.memory.host
        servers.budget = Memory(int(size.host * 1.5))  # room for one: the next start stops the least recently used
        second, _ = servers.acquire("sha256:" + "b" * 64, toy["image"])
        servers.release(second, broken=True)  # gone: its next prediction starts it again
        with caplog.at_level(logging.INFO, logger="builder.service.predictions.model_servers"):
            second, cold = servers.acquire("sha256:" + "b" * 64, toy["image"])
        servers.release(second)
        assert cold and servers.evictions == 1 and servers.loaded() == ["sha256:" + "b" * 64]
        assert not first.server.alive()
        assert any("unloading model version sha256:aaaa" in r.message and "GiB" in r.message for r in caplog.records)
    finally:
        servers.stop_all()


def test_the_old_count_budget_is_refused_with_its_replacement(service):
    from pydantic import ValidationError

    from builder.service.config import ServiceConfig, config_errors

    with pytest.raises(ValidationError) as caught:
        ServiceConfig(**{**service.config, "max_loaded_models": 2})
    assert "max_loaded_models: replaced by model_memory: a budget in bytes" in config_errors(caught.value)
    assert ServiceConfig(**{**service.config, "model_memory": "12GiB"}).model_memory == 12 * 2**30
