"""Hosted predictions: the service's path against the model's Cog server called directly, in one run:

    .venv/bin/python bench/predictions.py [--n 30] [--batch 16] [--skip-workers]

A version of the tiny random-weight pipeline (built by a training of the service, template in
the embedded layout), inputs of 2 steps at 64x64:

- Overhead: p50 latency of ``POST /v1/predictions`` with ``Prefer: wait`` (record, queue, warm
  server, outputs stored, answered) against the baseline, the same version's Cog server on the
  same machine called directly (``PUT /predictions/{id}``, outputs as data URLs), the two in
  turns. Goal: ≤ 50 ms.
- Cold vs warm: the first prediction of the version (pull from the layer cache, Cog server
  start, pipeline load) against the warm p50.
- Throughput (many machines: PostgreSQL, the queue, ``dreambuild worker --roles predict``):
  --batch predictions submitted at once, completed per second, with one worker and with two.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.service_scale import CLI, REPO, serve, start  # noqa: E402
from builder.cog.server import free_port  # noqa: E402
from builder.service.config import local_trainer_version  # noqa: E402
from builder.service.store.database import Database  # noqa: E402
from fixtures.services import start_postgres  # noqa: E402

TOKEN = {"Authorization": "Bearer bench-token"}
INPUT = {"num_inference_steps": 2, "width": 64, "height": 64, "seed": 1, "disable_safety_check": True}


def p50(values: list[float]) -> float:
    return statistics.median(values)


def trained_version(url: str, root: Path, template: str, model: str = "bench/tiny", extra: dict | None = None) -> dict:
    """A version of ``model`` trained by the service on the sample photos (``extra``: more trainer inputs)."""
    photos = root / "photos.zip"
    with zipfile.ZipFile(photos, "w") as archive:
        for path in sorted((REPO / "samples" / "subject").iterdir()):
            archive.write(path, path.name)
    upload = httpx.post(f"{url}/v1/uploads/photos.zip", content=photos.read_bytes(), headers=TOKEN).json()["url"]
    body = {
        "input": {
            "instance_prompt": "a photo of a cjw toy",
            "class_prompt": "a photo of a toy",
            "instance_data": upload,
            "max_train_steps": 4,
            "resolution": 64,
            "with_prior_preservation": False,
            **(extra or {}),
        },
        "trainer_version": local_trainer_version(),
        "template_version": template,
        "model": model,
    }
    created = httpx.post(f"{url}/v1/trainings", json=body, headers=TOKEN, timeout=300)  # the first reads the trainer schema
    created.raise_for_status()
    while True:
        training = httpx.get(f"{url}/v1/trainings/{created.json()['id']}", headers=TOKEN).json()
        if training["stage"] == "done":
            break
        time.sleep(0.5)
    if training["status"] != "succeeded":
        raise RuntimeError(f"the benchmark's training failed: {training['error']}")
    return httpx.get(f"{url}/v1/models/{model}/versions/{training['version']}", headers=TOKEN).json()


def through_service(url: str, version: str) -> tuple[float, dict]:
    started = time.perf_counter()
    body = httpx.post(f"{url}/v1/predictions", json={"version": version, "input": INPUT}, headers={**TOKEN, "Prefer": "wait"}, timeout=120).json()
    elapsed = time.perf_counter() - started
    if body.get("status") != "succeeded":
        raise RuntimeError(f"prediction not done: {body}")
    return elapsed, body


def alternating(url: str, version: dict, home: Path, n: int) -> tuple[list[float], list[float]]:
    """The baseline, the version's Cog server (as a worker starts it) called directly, and the
    service, in turns: noise on a shared machine hits both alike."""
    from builder.service.predictions.memory import Memory
    from builder.service.predictions.model_servers import ModelServers
    from builder.settings import BuilderSettings

    servers = ModelServers(BuilderSettings(home=home), Memory(1))
    model, _ = servers.acquire(version["id"], version["image"])
    try:
        client = model.client
        client.run_prediction(uuid.uuid4().hex, INPUT)  # its first prediction, as the service's warm-up
        direct_times, service_times = [], []
        for _ in range(n):
            started = time.perf_counter()
            result = client.run_prediction(uuid.uuid4().hex, INPUT)
            direct_times.append(time.perf_counter() - started)
            assert result["status"] == "succeeded", result
            service_times.append(through_service(url, version["id"])[0])
        return direct_times, service_times
    finally:
        servers.release(model)
        servers.stop_all()


def throughput(url: str, version: str, batch: int) -> float:
    """Predictions completed per second, ``batch`` submitted at once."""
    started = time.perf_counter()
    ids = [httpx.post(f"{url}/v1/predictions", json={"version": version, "input": INPUT}, headers=TOKEN).json()["id"] for _ in range(batch)]
    pending = set(ids)
    while pending:
        for prediction_id in list(pending):
            status = httpx.get(f"{url}/v1/predictions/{prediction_id}", headers=TOKEN).json()["status"]
            if status in ("succeeded", "failed", "canceled"):
                if status != "succeeded":
                    raise RuntimeError(f"prediction {prediction_id} {status}")
                pending.discard(prediction_id)
        time.sleep(0.1)
    return batch / (time.perf_counter() - started)


def embedded_config(root: Path, home: Path) -> tuple[str, dict]:
    """The tiny pipeline and safety checker under ``root``, the vanilla template in ``home``'s
    embedded layout, and an embedded service's configuration on them: (template version, config)."""
    from builder.cli.template_image import make_template_image
    from fixtures.tiny_models import build_tiny_safety_checker, build_tiny_sd

    base, checker = build_tiny_sd(root / "tiny-sd"), build_tiny_safety_checker(root / "checker")
    template = make_template_image(home / "data" / "images", "vanilla", baked={"safety-checker": checker}).removeprefix("sha256:")
    trainers = {local_trainer_version(): {"name": "dreambooth", "runner": "local", "env": {"DREAMBUILD_BASE_MODEL": str(base)}}}
    return template, {
        "data_dir": str(home / "data"),
        "port": free_port(),
        "trainers": trainers,
        "tokens": [{"token": "bench-token", "owners": ["bench"]}],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30, help="warm predictions per path")
    parser.add_argument("--batch", type=int, default=16, help="predictions submitted at once for the throughput")
    parser.add_argument("--skip-workers", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dreambuild-bench-predictions-"))
    home = root / "embedded"
    template, config = embedded_config(root, home)
    api, url = serve(home, config)
    try:
        version = trained_version(url, root, template)
        cold, first = through_service(url, version["id"])
        through_service(url, version["id"])
        direct_times, service_times = alternating(url, version, home / "data", args.n)
    finally:
        api.terminate()
        api.wait(60)
    rows = {
        "direct Cog server (baseline)": p50(direct_times),
        "through the service": p50(service_times),
    }
    print(f"tiny SD pipeline, 2 steps at 64x64, {args.n} warm predictions each (p50 seconds):")
    for name, value in rows.items():
        print(f"  {name:32} {value * 1000:8.1f} ms   ×{value / rows['direct Cog server (baseline)']:.2f}")
    overhead = rows["through the service"] - rows["direct Cog server (baseline)"]
    print(f"  service overhead per prediction: {overhead * 1000:.1f} ms p50 (goal ≤ 50 ms)")
    print(
        f"cold start (first prediction of the version): {cold:.2f} s total, setup {first['metrics'].get('setup_time')} s; "
        f"warm p50 {rows['through the service']:.3f} s: ×{cold / rows['through the service']:.0f}"
    )
    if args.skip_workers:
        return
    postgres = start_postgres()
    try:
        home = root / "external"
        home.mkdir()
        config = {
            **config,
            "data_dir": str(home / "data"),
            "port": free_port(),
            "workers": "external",
            "database_url": postgres.create_database("bench"),
        }
        api, url = serve(home, config)
        db = Database(config["database_url"])
        db.versions.add("bench", "tiny", version)
        workers = []
        try:
            figures = {}
            for count in (1, 2):
                name = f"w{count}"
                workers.append(
                    start(
                        [CLI, "worker", "--config", str(home / "service.yaml"), "--roles", "predict", "--name", name, "--data-dir", str(home / name)],
                        home / f"{name}.log",
                    )
                )
                for _ in range(10):  # warm-up: until every worker has the version loaded
                    throughput(url, version["id"], 2 * count)
                    time.sleep(6)  # a heartbeat
                    if sum(version["id"] in (w.get("loaded") or []) for w in db.heartbeats.live(20)) >= count:
                        break
                figures[count] = throughput(url, version["id"], args.batch)
            print(f"throughput, {args.batch} predictions at once (many machines, `dreambuild worker --roles predict`):")
            for count, rate in figures.items():
                print(f"  {count} worker{'s' if count > 1 else ' (baseline)'}: {rate:.2f} predictions/s   ×{rate / figures[1]:.2f}")
        finally:
            for proc in (*workers, api):
                proc.terminate()
                proc.wait(60)
            db.close()
    finally:
        postgres.stop()


if __name__ == "__main__":
    main()
