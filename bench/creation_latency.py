"""How fast the service accepts work while it trains, in one run:

    .venv/bin/python bench/creation_latency.py [--n 40]

The embedded service (``dreambuild serve``, SQLite) on the tiny random-weight pipeline: latency of
``POST /v1/trainings`` and ``POST /v1/predictions`` (no wait: recorded and queued) while a CPU
training keeps the machine busy, against the baseline, the same requests on the same service with
nothing training. The trainings created name a second trainer whose Cog server is not there
(nothing is started for it) and are canceled once timed, so both phases do the same work but the
one training. Each
request's time is the client's, connection included; the CPU's busy share over each phase is
read from /proc/stat. Goal: p99 well under a second while training (the demo's client once gave
up after 60 s).
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

from bench.predictions import INPUT, TOKEN, embedded_config, trained_version  # noqa: E402
from bench.service_scale import IDLE_TRAINER, serve  # noqa: E402
from builder.service.config import local_trainer_version  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def timed_creations(url: str, training: dict, version: str, n: int) -> dict[str, list[float]]:
    """``n`` trainings and ``n`` predictions created, alternately; seconds each, and the CPU's
    busy share meanwhile."""
    times: dict[str, list[float]] = {"POST /v1/trainings": [], "POST /v1/predictions": []}
    busy0, total0 = cpu_ticks()
    with httpx.Client(base_url=url, headers=TOKEN, timeout=120) as client:
        for _ in range(n):
            started = time.perf_counter()
            created = client.post("/v1/trainings", json=training)
            times["POST /v1/trainings"].append(time.perf_counter() - started)
            created.raise_for_status()
            client.post(f"/v1/trainings/{created.json()['id']}/cancel")  # untimed: it never holds the queue
            started = time.perf_counter()
            client.post("/v1/predictions", json={"version": f"bench/tiny:{version}", "input": INPUT}).raise_for_status()
            times["POST /v1/predictions"].append(time.perf_counter() - started)
            time.sleep(0.2)  # a user's pace, not a flood: what is measured is the answer under the training's load
    busy1, total1 = cpu_ticks()
    times["cpu"] = [(busy1 - busy0) / max(1, total1 - total0)]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="creations of each kind per phase")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dreambuild-bench-creation-"))
    home = root / "embedded"
    template, config = embedded_config(root, home)
    config.update(max_concurrent=2, upload_expiry_hours=None, servers_ahead=0)
    config["trainers"][IDLE_TRAINER] = {"name": "absent", "runner": "cog-http", "urls": ["http://127.0.0.1:9"], "health_seconds": 1}
    schemas = home / "data" / "schemas"
    api, url = None, None
    try:
        api, url = serve(home, config)
        version = trained_version(url, root, template)["id"]  # also caches the local trainer's schema: the absent one's too
        (schemas / f"{IDLE_TRAINER}.json").write_text((schemas / f"{local_trainer_version()}.json").read_text())
        upload = httpx.post(f"{url}/v1/uploads/photos.zip", content=(root / "photos.zip").read_bytes(), headers=TOKEN).json()["url"]
        photos = {"instance_prompt": "a photo of a cjw toy", "class_prompt": "a photo of a toy", "instance_data": upload}
        queued = {
            "input": {**photos, "max_train_steps": 4, "resolution": 64, "with_prior_preservation": False},
            "trainer_version": IDLE_TRAINER,
            "template_version": template,
            "model": "bench/queued",
        }
        idle = timed_creations(url, queued, version, args.n)
        long = {
            "input": {**photos, "max_train_steps": 100000, "resolution": 256, "train_batch_size": 2, "with_prior_preservation": False},
            "trainer_version": local_trainer_version(),
            "template_version": template,
            "model": "bench/long",
        }
        created = httpx.post(f"{url}/v1/trainings", json=long, headers=TOKEN, timeout=120).json()
        while "step " not in httpx.get(f"{url}/v1/trainings/{created['id']}", headers=TOKEN).json()["logs"]:
            time.sleep(0.5)  # training: its first progress line is out
        busy = timed_creations(url, queued, version, args.n)
        httpx.post(f"{url}/v1/trainings/{created['id']}/cancel", headers=TOKEN)
    finally:
        if api is not None:
            api.terminate()
            api.wait(60)
    print(f"embedded service, {args.n} creations of each kind per phase (client seconds, connection included):")
    print(f"  CPU busy: {idle.pop('cpu')[0]:.0%} with nothing training (baseline), {busy.pop('cpu')[0]:.0%} while training")
    print(f"  {'request':22} {'idle p50':>9} {'idle p99':>9} {'training p50':>13} {'training p99':>13} {'p50 ratio':>10}")
    for name in idle:
        a, b = idle[name], busy[name]
        print(
            f"  {name:22} {statistics.median(a) * 1000:7.1f}ms {percentile(a, 0.99) * 1000:7.1f}ms "
            f"{statistics.median(b) * 1000:11.1f}ms {percentile(b, 0.99) * 1000:11.1f}ms {statistics.median(b) / statistics.median(a):9.2f}x"
        )


if __name__ == "__main__":
    main()
