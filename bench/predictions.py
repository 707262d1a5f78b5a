"""Hosted predictions: every way a version's prediction starts, and the warm path's overhead, in one run:

    .venv/bin/python bench/predictions.py [--n 20] [--batch 16] [--skip-workers]

One embedded service (the vanilla-sd15 template baking the tiny random-weight base, in the
embedded layout; ``servers_ahead: 1``) trains two full fine-tunes and two LoRA fine-tunes (4
steps, 64 px). Inputs of 2 steps at 64x64, through ``POST /v1/predictions`` with ``Prefer: wait``
from one client kept open (as Replicate's clients keep theirs):

- Boot paths, each a version's first prediction: cold (the baseline: full fine-tune A, a Cog
  server started for it: layer cache, Python, torch, the pipeline — what every version paid
  before fast boot); pre-started (full fine-tune B on the server started ahead for its template,
  against its weights' read time: diffusers loading its folder in this process; goal ≤ read +
  2 s); a new LoRA version (LoRA B on the base server LoRA A started, against LoRA A's warm p50;
  goal ≤ 1.5x); the adapter switch (LoRA A and B alternating, against A repeated).
- Overhead: the warm p50 of full fine-tune A through the service against the baseline, its Cog
  server on the same machine called directly (``PUT /predictions/{id}``), the two in turns.
  Goal: ≤ 50 ms.
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
# One client for every timed request, as an application keeps one (a new httpx client per request
# costs ~30 ms here, mostly its TLS context: the client's cost, not the service's).
CLIENT = httpx.Client(timeout=300)


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
    """One prediction with ``Prefer: wait`` on the benchmark's open client: (seconds, answer)."""
    started = time.perf_counter()
    body = CLIENT.post(f"{url}/v1/predictions", json={"version": version, "input": INPUT}, headers={**TOKEN, "Prefer": "wait"}).json()
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
    ids = [CLIENT.post(f"{url}/v1/predictions", json={"version": version, "input": INPUT}, headers=TOKEN).json()["id"] for _ in range(batch)]
    pending = set(ids)
    while pending:
        for prediction_id in list(pending):
            status = CLIENT.get(f"{url}/v1/predictions/{prediction_id}", headers=TOKEN).json()["status"]
            if status in ("succeeded", "failed", "canceled"):
                if status != "succeeded":
                    raise RuntimeError(f"prediction {prediction_id} {status}")
                pending.discard(prediction_id)
        time.sleep(0.1)
    return batch / (time.perf_counter() - started)


def embedded_config(root: Path, home: Path) -> tuple[str, dict]:
    """The tiny pipeline and safety checker under ``root``, the vanilla-sd15 template baking them
    in ``home``'s embedded layout, and an embedded service's configuration on them: (template
    version, config)."""
    from builder.cli.template_image import make_template_image
    from dreambuild.layout import pipeline_digest
    from fixtures.tiny_models import build_tiny_safety_checker, build_tiny_sd

    base, checker = build_tiny_sd(root / "tiny-sd"), build_tiny_safety_checker(root / "checker")
    template = make_template_image(home / "data" / "images", "vanilla-sd15", baked={"base": base, "safety-checker": checker})
    trainer = {"name": "dreambooth", "runner": "local", "base_digest": pipeline_digest(base), "env": {"DREAMBUILD_BASE_MODEL": str(base)}}
    return template.removeprefix("sha256:"), {
        "data_dir": str(home / "data"),
        "port": free_port(),
        "trainers": {local_trainer_version(): trainer},
        "tokens": [{"token": "bench-token", "owners": ["bench"]}],
        "servers_ahead": 1,
    }


def wait_for_log(path: Path, text: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{text!r} not in {path} after {timeout} s")
        time.sleep(0.2)


def weights_read_time(image: str, home: Path) -> float:
    """Seconds diffusers takes to load the version's weights folder in this process (after one
    load of it: imports done, files in the page cache, as in a server started ahead)."""
    from diffusers import StableDiffusionPipeline

    from builder.cog.unpack import unpack_src
    from builder.settings import BuilderSettings

    folder = unpack_src(image, BuilderSettings(home=home)).src / "weights"
    StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    started = time.perf_counter()
    StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    return time.perf_counter() - started


def boot_paths(url: str, root: Path, home: Path, template: str, n: int) -> tuple[dict, dict]:
    """The boot paths' rows, and full fine-tune A (the overhead's and the throughput's version)."""
    lora = {"lora_rank": 4, "lora_lr": 5e-2}
    full_a = trained_version(url, root, template, model="bench/full-a")
    full_b = trained_version(url, root, template, model="bench/full-b", extra={"seed": 7})
    lora_a = trained_version(url, root, template, model="bench/lora-a", extra=lora)
    lora_b = trained_version(url, root, template, model="bench/lora-b", extra={**lora, "seed": 7})
    cold, cold_body = through_service(url, full_a["id"])
    wait_for_log(home / "service.log", "model version ahead:")  # the server started ahead for the template is up
    ahead, ahead_body = through_service(url, full_b["id"])
    read = weights_read_time(full_b["image"], home / "data")
    base_cold, _ = through_service(url, lora_a["id"])
    warm = p50([through_service(url, lora_a["id"])[0] for _ in range(n)])
    fresh, fresh_body = through_service(url, lora_b["id"])
    switching = p50([through_service(url, version["id"])[0] for _ in range(n) for version in (lora_a, lora_b)])
    for body, boot in ((cold_body, "cold"), (ahead_body, "pre-started"), (fresh_body, "adapter load")):
        if body["metrics"]["boot"] != boot:
            raise RuntimeError(f"expected a {boot} prediction: {body['metrics']}")
    return {
        "cold": (cold, cold_body["metrics"]["setup_time"]),
        "pre-started": (ahead, ahead_body["metrics"]["weights_load_time"], read),
        "lora base cold": base_cold,
        "new lora": (fresh, warm, fresh_body["metrics"]["adapter_load_time"]),
        "switch": (switching, warm),
    }, full_a


def print_boot_paths(rows: dict) -> None:
    cold, setup = rows["cold"]
    ahead, loaded, read = rows["pre-started"]
    fresh, warm, adapters = rows["new lora"]
    switching, _ = rows["switch"]
    print("boot paths, each a version's first prediction (seconds, through the service):")
    print(f"  cold: a server started for it (baseline)      {cold:7.3f}   ×1.00   (setup {setup} s)")
    print(
        f"  full fine-tune on a server started ahead      {ahead:7.3f}   ×{ahead / cold:.3f}   "
        f"(weights_load_time {loaded} s; its weights read in-process {read:.3f} s: goal ≤ read + 2 s = {read + 2:.3f})"
    )
    print(f"  LoRA base server, cold (the template's first) {rows['lora base cold']:7.3f}")
    print(
        f"  new LoRA version on the warm base             {fresh:7.3f}   ×{fresh / cold:.3f}   "
        f"({fresh / warm:.2f}x a warm LoRA prediction's {warm:.3f} s p50, goal ≤ 1.5x; adapter_load_time {adapters} s)"
    )
    print(f"  adapter switch: two LoRA versions alternating {switching:7.3f} p50   (+{(switching - warm) * 1000:.1f} ms against one repeated)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="warm predictions per path")
    parser.add_argument("--batch", type=int, default=16, help="predictions submitted at once for the throughput")
    parser.add_argument("--skip-workers", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dreambuild-bench-predictions-"))
    home = root / "embedded"
    template, config = embedded_config(root, home)
    api, url = serve(home, config)
    try:
        boots, version = boot_paths(url, root, home, template, args.n)
        direct_times, service_times = alternating(url, version, home / "data", args.n)
    finally:
        api.terminate()
        api.wait(60)
    print(f"tiny SD pipeline, 2 steps at 64x64, {args.n} warm predictions per path")
    print_boot_paths(boots)
    rows = {
        "direct Cog server (baseline)": p50(direct_times),
        "through the service": p50(service_times),
    }
    print("warm path (p50):")
    for name, value in rows.items():
        print(f"  {name:32} {value * 1000:8.1f} ms   ×{value / rows['direct Cog server (baseline)']:.2f}")
    overhead = rows["through the service"] - rows["direct Cog server (baseline)"]
    print(f"  service overhead per prediction: {overhead * 1000:.1f} ms p50 (goal ≤ 50 ms)")
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
        db.versions.add("bench", "full-a", version)
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
