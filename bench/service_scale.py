"""The trainings service on one machine (SQLite, embedded worker) against many (PostgreSQL, the
queue, `dreambuild worker`), in one run:

    .venv/bin/python bench/service_scale.py [--seconds 10] [--rate 200] [--skip-recovery]

- API reads: GET /v1/trainings/{id} sent open-loop at --rate requests/s for --seconds; p50/p99
  latency (ms) and the rate achieved. Baseline: the embedded service (SQLite).
- Submissions: POST /v1/trainings from 8 clients for --seconds; accepted per second.
- Scheduling: queued → trainer stage started (the training's own stage timestamps), median of
  6 trainings submitted one by one on an idle queue. Goal: ≤ 1 s.
- Recovery: a worker SIGKILLed mid-training → the other worker has taken the training over
  (seconds). Goal: ≤ 60 s. Many-machines mode only (one process has no other to take over).

The trainer for the first three is a cog-http server that is never reached (a closed port), so
trainings wait for it and cost the machine nothing; its schema is the checkout trainer's. The
recovery uses the real trainer (tiny random model) on the local runner.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import yaml  # noqa: E402

from builder.cog.server import free_port, write_schema  # noqa: E402
from builder.service.config import local_trainer_version  # noqa: E402
from builder.service.store.database import Database  # noqa: E402
from fixtures.services import start_postgres  # noqa: E402

CLI = str(Path(sys.executable).parent / "dreambuild")
REPO = Path(__file__).resolve().parent.parent
TOKEN = {"Authorization": "Bearer bench-token"}
TEMPLATE = "e" * 64
IDLE_TRAINER = "f" * 64


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def serve(root: Path, config: dict) -> tuple[subprocess.Popen, str]:
    (root / "service.yaml").write_text(yaml.safe_dump(config))
    proc = start([CLI, "serve", "--config", str(root / "service.yaml"), "--no-access-log"], root / "service.log")
    url = f"http://127.0.0.1:{config['port']}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError((root / "service.log").read_text()[-2000:])


def base_config(root: Path, schema: dict) -> dict:
    (root / "data" / "schemas").mkdir(parents=True, exist_ok=True)
    for version in (IDLE_TRAINER, local_trainer_version()):
        (root / "data" / "schemas" / f"{version}.json").write_text(json.dumps(schema))
    return {
        "data_dir": str(root / "data"),
        "port": free_port(),
        "max_concurrent": 4,
        "registry": "127.0.0.1:9",
        "trainers": {IDLE_TRAINER: {"name": "idle", "runner": "cog-http", "urls": ["http://127.0.0.1:9"]}},
        "templates": {TEMPLATE: {"name": "vanilla", "repository": "127.0.0.1:9/dreambuild/vanilla"}},
        "tokens": [{"token": "bench-token", "owners": ["bench"]}],
        "upload_expiry_hours": None,
        "egress_allow": ["127.0.0.1"],
    }


def request_body(version: str = IDLE_TRAINER, steps: int = 4) -> dict:
    return {
        "input": {
            "instance_prompt": "a photo of a cjw toy",
            "class_prompt": "a photo of a toy",
            "with_prior_preservation": False,
            "instance_data": "https://example.com/photos.zip",
            "max_train_steps": steps,
            "resolution": 64,
        },
        "trainer_version": version,
        "template_version": TEMPLATE,
        "model": "bench/model",
    }


def reads(url: str, seconds: float, rate: float) -> dict:
    created = httpx.post(f"{url}/v1/trainings", json=request_body(), headers=TOKEN)
    if created.status_code != 201:
        raise RuntimeError(f"the service refused the benchmark's training: {created.status_code} {created.text}")
    training = created.json()["id"]
    latencies: list[float] = []
    lock = threading.Lock()
    client = httpx.Client(headers=TOKEN, timeout=10, limits=httpx.Limits(max_connections=64))

    def one() -> None:
        started = time.perf_counter()
        client.get(f"{url}/v1/trainings/{training}").raise_for_status()
        with lock:
            latencies.append(time.perf_counter() - started)

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        began = time.perf_counter()
        for n in range(int(seconds * rate)):  # open loop: sent on schedule, whatever the answers do
            delay = began + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one)
    elapsed = time.perf_counter() - began
    client.close()
    ordered = sorted(latencies)
    return {"p50_ms": 1000 * ordered[len(ordered) // 2], "p99_ms": 1000 * ordered[int(len(ordered) * 0.99)], "achieved_rps": len(ordered) / elapsed}


def submissions(url: str, seconds: float) -> float:
    stop = time.monotonic() + seconds
    counts = []

    def client() -> None:
        done = 0
        with httpx.Client(headers=TOKEN, timeout=30) as http:
            while time.monotonic() < stop:
                http.post(f"{url}/v1/trainings", json=request_body()).raise_for_status()
                done += 1
        counts.append(done)

    threads = [threading.Thread(target=client) for _ in range(8)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - began)


def scheduling(url: str, db_target, count: int = 6) -> float:
    """Median seconds from queued to the trainer stage, one training at a time."""
    db = Database(db_target)
    waits = []
    for _ in range(count):
        created = httpx.post(f"{url}/v1/trainings", json=request_body(), headers=TOKEN).json()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = db.trainings.get(created["id"]).get("stage_started") or {}
            if "training" in started:
                waits.append(started["training"] - started["queued"])
                break
            time.sleep(0.01)
        httpx.post(f"{url}/v1/trainings/{created['id']}/cancel", headers=TOKEN)
        deadline = time.monotonic() + 60
        while db.trainings.get(created["id"])["stage"] != "done" and time.monotonic() < deadline:
            time.sleep(0.1)  # the next one on an idle queue, with the server's lease free
    db.close()
    return statistics.median(waits)


def recovery(root: Path, config: dict, tiny_base: Path) -> float:
    """Seconds from SIGKILLing the worker that trains to the other worker having taken it over."""
    config = {
        **config,
        "trainers": {
            **config["trainers"],
            local_trainer_version(): {"name": "dreambooth", "runner": "local", "env": {"DREAMBUILD_BASE_MODEL": str(tiny_base)}},
        },
    }
    api, url = serve(root, config)
    workers = {
        name: start([CLI, "worker", "--config", str(root / "service.yaml"), "--name", name, "--data-dir", str(root / name)], root / f"{name}.log")
        for name in ("a", "b")
    }
    db = Database(config["database_url"])
    try:
        time.sleep(10)
        photos = root / "photos.zip"
        with zipfile.ZipFile(photos, "w") as archive:
            for path in sorted((REPO / "samples" / "subject").iterdir()):
                archive.write(path, path.name)
        upload = httpx.post(f"{url}/v1/uploads/photos.zip", content=photos.read_bytes(), headers=TOKEN).json()["url"]
        body = request_body(local_trainer_version(), steps=5000)
        body["input"]["instance_data"] = upload
        created = httpx.post(f"{url}/v1/trainings", json=body, headers=TOKEN).json()
        deadline = time.monotonic() + 300
        while not db.trainings.get(created["id"]).get("runner_pid"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the training did not start: {db.trainings.get(created['id']).get('error')}")
            time.sleep(0.2)
        first = db.trainings.get(created["id"])["worker"]
        workers[first].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        while db.trainings.get(created["id"]).get("worker") == first:
            time.sleep(0.1)
        taken = time.monotonic() - killed
        httpx.post(f"{url}/v1/trainings/{created['id']}/cancel", headers=TOKEN)
        return taken
    finally:
        db.close()
        for proc in (*workers.values(), api):
            proc.terminate()
            proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--skip-recovery", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dreambuild-bench-"))
    with tempfile.TemporaryDirectory() as project:
        schema = json.loads(write_schema(Path(project), predict="trainer/cog_model.py:Predictor").read_text())
    postgres = start_postgres()
    results: dict[str, dict] = {}
    try:
        for mode in ("embedded (SQLite)", "many machines (PostgreSQL)"):
            home = root / ("embedded" if mode.startswith("embedded") else "external")
            home.mkdir()
            config = base_config(home, schema)
            extra: list[subprocess.Popen] = []
            if not mode.startswith("embedded"):
                config.update(workers="external", database_url=postgres.create_database("bench"))
            api, url = serve(home, config)
            try:
                if not mode.startswith("embedded"):
                    extra.append(
                        start(
                            [
                                CLI,
                                "worker",
                                "--config",
                                str(home / "service.yaml"),
                                "--roles",
                                "train,build,webhooks",
                                "--data-dir",
                                str(home / "worker"),
                            ],
                            home / "worker.log",
                        )
                    )
                    time.sleep(8)
                row = reads(url, args.seconds, args.rate)
                # On an idle queue first: the submissions leave thousands of trainings queued.
                row["queued_to_trainer_s"] = scheduling(url, config.get("database_url") or home / "data" / "dreambuild.sqlite")
                row["submissions_per_s"] = submissions(url, args.seconds)
                results[mode] = row
            finally:
                for proc in (*extra, api):
                    proc.terminate()
                    proc.wait(60)
        if not args.skip_recovery:
            from fixtures.tiny_models import build_tiny_sd

            home = root / "recovery"
            home.mkdir()
            config = base_config(home, schema)
            config.update(workers="external", database_url=postgres.create_database("recovery"))
            results["many machines (PostgreSQL)"]["recovery_s"] = recovery(home, config, build_tiny_sd(root / "tiny-sd"))
    finally:
        postgres.remove()
    base = results["embedded (SQLite)"]
    print(
        f"API GET at {args.rate:.0f} req/s for {args.seconds:.0f} s, submissions from 8 clients; baseline: embedded (SQLite); "
        "(Nx): times as fast as the baseline"
    )
    print("| mode | GET p50 ms | GET p99 ms | achieved req/s | submissions/s | queued → trainer s | worker SIGKILL → taken over s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for mode, row in results.items():

        def ratio(key: str, lower_is_better: bool = True) -> str:
            value = row[key]
            if mode == "embedded (SQLite)":
                return f"{value:.1f}"
            return f"{value:.1f} ({(base[key] / value if lower_is_better else value / base[key]):.2f}x)"

        recovered = f"{row['recovery_s']:.1f} (goal ≤ 60)" if "recovery_s" in row else "n/a"
        print(
            f"| {mode} | {ratio('p50_ms')} | {ratio('p99_ms')} | {row['achieved_rps']:.0f} | "
            f"{ratio('submissions_per_s', lower_is_better=False)} | {row['queued_to_trainer_s']:.2f} (goal ≤ 1) | {recovered} |"
        )


if __name__ == "__main__":
    main()
