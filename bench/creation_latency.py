"""How fast the service accepts work while it trains, in one run:

    .venv/bin/python bench/creation_latency.py [--n 40]

The embedded service (``dreambuild serve``, SQLite) on the tiny random-weight pipeline: latency of
``POST /v1/trainings`` (a new training, queued behind the running one) and ``POST
/v1/predictions`` (no wait: the prediction is recorded and queued) while a long CPU training
keeps the machine's cores busy, against the baseline, the same requests on the same service
idle. Each request's time is the client's, connection included. Goal: p99 well under a second
while training (the demo's client once gave up after 60 s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.predictions import INPUT, TOKEN, trained_version  # noqa: E402
from bench.service_scale import serve  # noqa: E402
from builder.cog.server import free_port  # noqa: E402
from builder.service.config import local_trainer_version  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_creations(url: str, training: dict, version: str, n: int) -> dict[str, list[float]]:
    """``n`` trainings and ``n`` predictions created, alternately; seconds each."""
    times: dict[str, list[float]] = {"POST /v1/trainings": [], "POST /v1/predictions": []}
    with httpx.Client(base_url=url, headers=TOKEN, timeout=120) as client:
        for _ in range(n):
            started = time.perf_counter()
            client.post("/v1/trainings", json=training).raise_for_status()
            times["POST /v1/trainings"].append(time.perf_counter() - started)
            started = time.perf_counter()
            client.post("/v1/predictions", json={"version": f"bench/tiny:{version}", "input": INPUT}).raise_for_status()
            times["POST /v1/predictions"].append(time.perf_counter() - started)
    return times


def cancel_all(url: str) -> None:
    """Cancel every unfinished training and prediction, so the next phase starts idle."""
    with httpx.Client(base_url=url, headers=TOKEN, timeout=60) as client:
        for kind in ("trainings", "predictions"):
            page = client.get(f"/v1/{kind}", params={"limit": 500}).json()
            for doc in page["results"]:
                if doc["status"] not in ("succeeded", "failed", "canceled"):
                    client.post(f"/v1/{kind}/{doc['id']}/cancel")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = [t for t in client.get("/v1/trainings", params={"limit": 500}).json()["results"] if t["stage"] != "done"]
            if not busy:
                return
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="creations of each kind per phase")
    args = parser.parse_args()

    from builder.cli.template_image import make_template_image
    from fixtures.tiny_models import build_tiny_safety_checker, build_tiny_sd

    root = Path(tempfile.mkdtemp(prefix="dreambuild-bench-creation-"))
    base, checker = build_tiny_sd(root / "tiny-sd"), build_tiny_safety_checker(root / "checker")
    home = root / "embedded"
    template = make_template_image(home / "data" / "images", "vanilla", baked={"safety-checker": checker}).removeprefix("sha256:")
    trainers = {local_trainer_version(): {"name": "dreambooth", "runner": "local", "env": {"DREAMBUILD_BASE_MODEL": str(base)}}}
    config = {"data_dir": str(home / "data"), "port": free_port(), "trainers": trainers,
              "tokens": [{"token": "bench-token", "owners": ["bench"]}]}
    api, url = serve(home, config)
    try:
        version = trained_version(url, root, template)["id"]
        upload = httpx.post(f"{url}/v1/uploads/photos.zip", content=(root / "photos.zip").read_bytes(), headers=TOKEN).json()["url"]
        queued = {"input": {"instance_prompt": "a photo of a cjw toy", "class_prompt": "a photo of a toy", "instance_data": upload,
                            "max_train_steps": 4, "resolution": 64, "with_prior_preservation": False}, "model": "bench/queued"}
        idle = timed_creations(url, queued, version, args.n)
        cancel_all(url)
        # A long training (64 px, prior preservation with class images to generate: every core busy).
        long = {"input": {**queued["input"], "max_train_steps": 100000, "with_prior_preservation": True, "num_class_images": 8},
                "model": "bench/long"}
        created = httpx.post(f"{url}/v1/trainings", json=long, headers=TOKEN, timeout=120).json()
        while httpx.get(f"{url}/v1/trainings/{created['id']}", headers=TOKEN).json()["stage"] != "training":
            time.sleep(0.2)
        time.sleep(10)  # the trainer's server up and training
        busy = timed_creations(url, queued, version, args.n)
        cancel_all(url)
    finally:
        api.terminate()
        api.wait(60)
    print(f"embedded service, {args.n} creations of each kind per phase (client seconds, connection included):")
    print(f"  {'request':22} {'idle p50':>9} {'idle p99':>9} {'training p50':>13} {'training p99':>13} {'p50 ratio':>10}")
    for name in idle:
        a, b = idle[name], busy[name]
        print(f"  {name:22} {statistics.median(a) * 1000:7.1f}ms {percentile(a, 0.99) * 1000:7.1f}ms "
              f"{statistics.median(b) * 1000:11.1f}ms {percentile(b, 0.99) * 1000:11.1f}ms {statistics.median(b) / statistics.median(a):9.2f}x")


if __name__ == "__main__":
    main()
