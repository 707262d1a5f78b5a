"""``dreambuild demo``: the whole pipeline on embedded defaults, on this machine, no configuration.

tiny local models → the vanilla template as an OCI image in the embedded layout (no Docker, no
Cog build) → the trainings service, in-process, embedded defaults → the seed's request with the
sample photos → Train (tiny DreamBooth on CPU, the trainer in a real Cog server) → Build + Push
(into the embedded layout) → Webhook (to a local receiver; signature verified) → a prediction of
the new version through the service (``POST /v1/predictions``, without Docker) →
``DIR/summary.json`` and ``DIR/output-0.png``.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import zipfile
from pathlib import Path

import httpx

from builder.checkout import REPO_ROOT, require_checkout
from builder.cog.server import free_port
from builder.service.schema import FINISHED, Stage, Status

SAMPLES = REPO_ROOT / "samples" / "subject"
CACHE = REPO_ROOT / ".dreambuild" / "cache"

# The seed request's input shape, sized for a tiny model on two CPU cores.
DEMO_INPUT = {
    "instance_prompt": "a photo of a cjw toy",
    "class_prompt": "a photo of a toy",
    "max_train_steps": 60,
    "resolution": 64,
    "num_class_images": 4,
    "learning_rate": 5e-5,
    "save_sample_prompt": "a photo of a cjw toy on a beach",
    "save_infer_steps": 20,
}


def _cached(name: str, build) -> Path:
    path = CACHE / name
    if not (path / "dreambuild-fixture.json").is_file() and not (path / "config.json").is_file():
        build(path)
    return path


def _zip_photos(dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for photo in sorted(SAMPLES.glob("*.jpg")):
            zf.write(photo, f"subject/{photo.name}")
    return dest


class _Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on loopback that keeps what it gets."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict, bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def _start_service(data_dir: Path, base: Path):
    """The service in-process on a free port, embedded defaults (plus where the tiny base is)."""
    import uvicorn

    from builder.service.app import create_app
    from builder.service.config import ensure_local_token, load_config

    # The demo's webhook receiver is on this machine: allowed explicitly (loopback is refused by default).
    config = load_config(None, data_dir=data_dir, port=free_port(), egress_allow=["127.0.0.1"])
    for entry in config.trainers.values():
        entry.env["DREAMBUILD_BASE_MODEL"] = str(base)
    token_file = ensure_local_token(config)
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return config, server, token_file.read_text().strip() if token_file else config.tokens[0].token


def run_demo(out: Path, say=print) -> dict:
    """Run the demo and return the summary written to ``out/summary.json``."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    from builder.cli.template_image import make_template_image
    from builder.service.config import TrainerEntry, local_trainer_version
    from builder.service.trainings.schemas import local_schema

    require_checkout("the demo")
    from fixtures.tiny_models import build_tiny_safety_checker, build_tiny_sd

    out = Path(out).absolute()  # ./dev demo writes demo-out/ beside the checkout: relative by default
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.monotonic()
    base = _cached("tiny-sd", build_tiny_sd)
    checker = _cached("safety-checker", build_tiny_safety_checker)
    timings["tiny_models"] = time.monotonic() - t
    data_dir = out / "service"

    t = time.monotonic()
    template_version = make_template_image(data_dir / "images", "vanilla", baked={"safety-checker": checker})
    timings["template_image"] = time.monotonic() - t
    say(f"template image: oci:{data_dir / 'images'}:dreambuild/vanilla@{template_version}")

    t = time.monotonic()
    # The trainer's Cog schema, generated once per source (then read from ~/.cache/dreambuild): on
    # a fresh, loaded machine generating it inside the first POST /v1/trainings took most of a minute.
    local_schema(TrainerEntry(name="dreambooth").predictor)
    timings["trainer_schema"] = time.monotonic() - t

    config, server, token = _start_service(data_dir, base)
    receiver = _Receiver()
    api = httpx.Client(base_url=config.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    try:
        say(f"service: {config.base_url} (docs: {config.base_url}/docs)")
        upload = api.post("/v1/uploads/photos.zip", content=_zip_photos(out / "photos.zip").read_bytes()).json()
        request = {
            "input": {**DEMO_INPUT, "instance_data": upload["url"]},
            "trainer_version": local_trainer_version(),
            "template_version": template_version,
            "model": "demo/cjw-toy",
            "notes": "dreambuild demo: tiny DreamBooth on CPU",
            "webhook_completed": f"http://127.0.0.1:{receiver.server_port}/dreambooth-webhook?demo=1",
        }
        (out / "request.json").write_text(json.dumps(request, indent=2))
        response = api.post("/v1/trainings", json=request)
        if response.status_code != 201:
            raise SystemExit(f"demo: the service refused the request: {response.json().get('detail')}")
        training = response.json()
        say(f"training {training['id']}: {DEMO_INPUT['max_train_steps']} steps of a tiny DreamBooth on CPU ...")
        seen: set[str] = set()
        started = time.monotonic()
        while training["stage"] != Stage.DONE:
            if training["stage"] not in seen:
                seen.add(training["stage"])
                say(f"  stage: {training['stage']}")
            time.sleep(0.2)
            training = api.get(f"/v1/trainings/{training['id']}").json()
        timings["service_total"] = time.monotonic() - started
        timings.update({f"stage_{stage}": seconds for stage, seconds in training["metrics"]["stage_seconds"].items()})
        if training["status"] != Status.SUCCEEDED:
            raise SystemExit(f"demo: the training {training['status']}: {training['error']}\n{training['logs'][-2000:]}")
        say(f"model version: {training['image']}")
        deadline = time.monotonic() + 30
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.1)
        secret = api.get("/v1/webhooks/default/secret", params={"owner": "demo"}).json()["key"]
        webhook = {"received": bool(receiver.received)}
        if receiver.received:
            path, headers, body = receiver.received[0]
            try:
                Webhook(secret).verify(body, headers)
                webhook["signature_valid"] = True
            except WebhookVerificationError as exc:
                webhook.update(signature_valid=False, signature_error=str(exc))
            payload = json.loads(body)
            webhook.update(path=path, id=headers.get("webhook-id"), status=payload["status"], version=payload["version"])
        signature = "valid" if webhook.get("signature_valid") else "INVALID"
        say(f"webhook: {'received, signature ' + signature if webhook['received'] else 'not received'}")

        t = time.monotonic()
        say(
            "predict: the new version through the service (POST /v1/predictions; its layers from the embedded layout, "
            "a local Cog server kept warm) ..."
        )
        # No prompt: the template defaults to the instance prompt recorded in args.json.
        prediction = api.post(
            "/v1/predictions",
            json={"version": f"demo/cjw-toy:{training['version']}", "input": {"num_inference_steps": 20, "seed": 0}},
            headers={"Prefer": "wait"},
            timeout=120,
        ).json()
        while prediction.get("status") not in FINISHED:
            if "id" not in prediction:
                raise SystemExit(f"demo: the service refused the prediction: {prediction.get('detail')}")
            time.sleep(0.2)
            prediction = api.get(f"/v1/predictions/{prediction['id']}").json()
        if prediction["status"] != Status.SUCCEEDED:
            raise SystemExit(f"demo: the prediction {prediction['status']}: {prediction['error']}")
        written = []
        for index, url in enumerate(prediction["output"]):
            target = out / f"output-{index}.png"
            target.write_bytes(httpx.get(url, timeout=60).content)  # a signed URL: no token
            written.append(target)
        timings["predict"] = time.monotonic() - t
    finally:
        api.close()
        receiver.shutdown()
        receiver.server_close()
        server.should_exit = True

    summary = {
        "training_id": training["id"],
        "status": training["status"],
        "version": training["version"],
        "image": training["image"],
        "template_version": template_version,
        "metrics": training["metrics"],
        "webhook": webhook,
        "prediction": {key: prediction[key] for key in ("id", "status", "metrics")},
        "outputs": [str(p) for p in written],
        "timings_seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    say(f"done: {out / 'summary.json'} and {', '.join(str(p) for p in written)}")
    say(
        "With real SD 1.5 weights on a GPU machine: build and push the trainer and template images with Cog "
        "(README: 'Training with Cog on a GPU machine', 'Build, push, predict'), list them in the service's catalog "
        "(README: the trainings service), and send the same request with "
        "resolution 512 and max_train_steps ~2000."
    )
    return summary
