"""Many machines: `dreambuild serve` (the API only) and two `dreambuild worker` processes, sharing
nothing but PostgreSQL (state and queue) — each with its own data directory — against the real
Cog server trainer, the real registry and a real webhook receiver."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from builder.cog.server import free_port
from builder.service.config import local_trainer_version
from tests.helpers import photos_zip
from tests.test_service import ALICE, CLI, Service, hooks_for, refuse_what_no_store_keeps, seed_request, upload
from tests.webhook_receiver import start_receiver


class WorkerProcess:
    def __init__(self, root: Path, config: Path, name: str, roles: str = "train,build,webhooks,predict") -> None:
        self.root, self.config, self.name, self.roles = root, config, name, roles
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        log = open(self.root / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            [CLI, "worker", "--config", str(self.config), "--name", self.name, "--roles", self.roles, "--data-dir", str(self.root / self.name)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        return self

    def log(self) -> str:
        return (self.root / f"{self.name}.log").read_text()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def receiver():
    server = start_receiver()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres, tiny_base, registry, templates):
    """The API and two workers on one PostgreSQL database."""
    root = tmp_path_factory.mktemp("cluster")
    template_repo, template_digest = templates["docker"].split("@")
    database = postgres.create_database("cluster")
    config = {
        "data_dir": str(root / "api"),
        "port": free_port(),
        "registry": registry.host,
        "database_url": database,
        "workers": "external",
        "trainers": {local_trainer_version(): {"name": "dreambooth", "runner": "local", "env": {"DREAMBUILD_BASE_MODEL": str(tiny_base)}}},
        "templates": {template_digest.removeprefix("sha256:"): {"name": "vanilla", "repository": template_repo}},
        "tokens": [{"token": "tok-alice", "owners": ["alice"]}, {"token": "tok-bob", "owners": ["bob"]}],
        "webhook_backoff": 0.2,
        "webhook_backoff_max": 1.0,
        "egress_allow": ["127.0.0.1"],
        "shutdown_grace_seconds": 0,  # a stopping worker hands its running prediction back at once
    }
    api = Service(root, config)
    api.args = ["--log-format", "json"]
    api.start()
    workers = [WorkerProcess(root, root / "service.yaml", f"w{n}").start() for n in (1, 2)]
    yield api, workers
    for worker in workers:
        worker.stop()
    api.stop()


def live_workers(api) -> list[dict]:
    listed = subprocess.run([CLI, "workers", "--config", str(api.root / "service.yaml"), "--json"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def record(api, training_id: str) -> dict:
    """The training as stored (what the API does not show: which worker ran it)."""
    from builder.service.store.database import Database

    db = Database(api.config["database_url"])
    try:
        return db.trainings.get(training_id)
    finally:
        db.close()


def test_trainings_spread_over_both_workers(tmp_path, cluster, receiver):
    api, workers = cluster
    listed = wait_for(lambda: len(live_workers(api)) == 2 and live_workers(api), 120, "two live workers")
    assert {w["name"] for w in listed} == {"w1", "w2"}
    assert all(w["trainer_versions"] == [local_trainer_version()] and w["roles"] == ["build", "predict", "train", "webhooks"] for w in listed)
    url = upload(api, photos_zip(tmp_path / "photos.zip"))
    created = [
        httpx.post(f"{api.url}/v1/trainings", json=seed_request(api, receiver, url, model=f"alice/spread-{n}"), headers=ALICE).json()
        for n in range(2)
    ]
    # Both train at once, one on each worker; `dreambuild workers` shows what each runs.
    busy = wait_for(lambda: (lambda ws: len(ws) == 2 and ws)([w for w in live_workers(api) if w["current"]]), 180, "both workers busy")
    assert sorted(t for w in busy for t in w["current"]) == sorted(c["id"] for c in created)
    done = [api.wait(c["id"]) for c in created]
    assert all(d["status"] == "succeeded" for d in done), [d["error"] for d in done]
    assert {record(api, d["id"])["worker"] for d in done} == {"w1", "w2"}
    for d in done:
        (hook,) = hooks_for(receiver, d["id"])
        assert json.loads(hook.body)["status"] == "succeeded"
    # The workers share no disk with the API: output.zip reached the API through its routes, and
    # each worker built from its own download.
    assert all((Path(api.config["data_dir"]) / "files" / d["id"] / "output.zip").is_file() for d in done)
    assert not any((api.root / w.name / "files").exists() for w in workers)


def test_a_worker_killed_mid_training_is_replaced_and_the_training_completes_once(tmp_path, cluster, receiver):
    api, workers = cluster
    url = upload(api, photos_zip(tmp_path / "photos.zip"))
    request = seed_request(api, receiver, url, model="alice/survivor")
    request["input"]["max_train_steps"] = 40
    created = httpx.post(f"{api.url}/v1/trainings", json=request, headers=ALICE).json()
    first = wait_for(lambda: (record(api, created["id"]) or {}).get("worker"), 180, "the training to start")
    victim = next(w for w in workers if w.name == first)
    survivor = next(w for w in workers if w is not victim)
    wait_for(lambda: record(api, created["id"]).get("runner_pid"), 180, "the trainer to run")
    victim.kill()
    killed_at = time.monotonic()
    try:
        wait_for(lambda: record(api, created["id"]).get("worker") == survivor.name, 90, "the other worker to take it over")
        assert time.monotonic() - killed_at < 60  # the goal: recovered within a minute
        done = api.wait(created["id"], timeout=600)
        assert done["status"] == "succeeded", done["error"]
        versions = httpx.get(f"{api.url}/v1/models/alice/survivor/versions", headers=ALICE).json()["results"]
        assert [v["id"] for v in versions] == [done["version"]]
        time.sleep(2)  # a second completed webhook, if there were one, would be on its way
        hooks = hooks_for(receiver, created["id"])
        assert len(hooks) == 1 and hooks[0].headers["webhook-id"] == f"{created['id']}-completed"
    finally:
        victim.start()  # back for the next tests


def test_a_long_training_is_not_taken_from_a_live_worker_and_cancel_reaches_it(tmp_path, cluster, receiver):
    """Longer than the stalled-worker timeout, a training stays with the worker that runs it (its
    heartbeats say it lives); a cancel reaches that worker within 5 s."""
    from builder.service.workers.jobs import STALLED_SECONDS

    api, _ = cluster
    url = upload(api, photos_zip(tmp_path / "photos.zip"))
    request = seed_request(api, receiver, url, model="alice/long")
    request["input"]["max_train_steps"] = 5000
    created = httpx.post(f"{api.url}/v1/trainings", json=request, headers=ALICE).json()
    wait_for(lambda: record(api, created["id"]).get("runner_pid"), 180, "the trainer to run")
    first = record(api, created["id"])
    time.sleep(STALLED_SECONDS + 12)  # past the timeout and two recovery rounds
    still = record(api, created["id"])
    assert (still["worker"], still["runner_pid"], still["stage"]) == (first["worker"], first["runner_pid"], "training")
    asked = time.monotonic()
    httpx.post(created["urls"]["cancel"], headers=ALICE)
    # As the user sees it (the API), not through a new database connection per look.
    wait_for(lambda: httpx.get(created["urls"]["get"], headers=ALICE).json()["status"] == "canceled", 30, "the cancel")
    assert time.monotonic() - asked < 5
    assert api.wait(created["id"])["status"] == "canceled"


def test_predictions_run_on_the_workers_and_go_where_their_model_is_warm(tmp_path, cluster, receiver):
    """replicate.run against the API; a worker (sharing no disk with it) runs the model, sends the
    output to the API's file store; the next prediction goes to the worker that has it loaded; a
    worker stopped during a prediction hands it back to the other."""
    import replicate
    from PIL import Image

    from builder.service.store.database import Database

    api, workers = cluster
    url = upload(api, photos_zip(tmp_path / "photos.zip"))
    created = httpx.post(f"{api.url}/v1/trainings", json=seed_request(api, receiver, url, model="alice/served"), headers=ALICE).json()
    version = api.wait(created["id"])["version"]
    fast = {"num_inference_steps": 2, "width": 64, "height": 64, "seed": 3, "disable_safety_check": True}
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(image)
    client = replicate.Client(api_token="tok-alice", base_url=api.url)
    with open(image, "rb") as handle:
        (output,) = client.run(f"alice/served:{version}", input={"image": handle, "prompt_strength": 0.5, **fast})
    assert httpx.get(str(output)).content[:4] == b"\x89PNG"  # a signed URL, served by the API
    first = client.predictions.list().results[0]
    assert "setup_time" in first.metrics
    db = Database(api.config["database_url"])
    try:
        # The worker heartbeats as soon as the first prediction ends: loaded, and idle.
        warm = wait_for(
            lambda: [w["name"] for w in db.heartbeats.live(20) if version in (w.get("loaded") or []) and not w.get("current")], 30, "the heartbeat"
        )
        (beat,) = [w for w in db.heartbeats.live(20) if w["name"] == warm[0]]
        held = beat["model_memory"]  # the model servers' memory, measured, against the budget (half the machine)
        assert 100 * 2**20 < held["host"] < held["host_budget"] and held["gpu"] == held["gpu_budget"] == 0, held
        second = client.predictions.create(version=version, input=fast, wait=True)
        assert second.status == "succeeded" and "setup_time" not in second.metrics, second.metrics
        assert db.predictions.get(second.id)["worker"] == warm[0] == db.predictions.get(first.id)["worker"]
        # SIGTERM to the worker running a prediction (no grace here): handed back to the queue, the
        # other worker runs it to its end; nothing is lost.
        slow = client.predictions.create(version=version, input={**fast, "num_inference_steps": 60, "width": 128, "height": 128})
        running = wait_for(
            lambda: (db.predictions.get(slow.id) or {}).get("worker") if db.predictions.get(slow.id)["status"] == "processing" else None,
            60,
            "the slow prediction to run",
        )
        (stopped,) = [w for w in workers if w.name == running]
        stopped.stop()
        assert f"prediction {slow.id} handed back by the shutdown" in stopped.log()
        slow.wait()
        assert slow.status == "succeeded" and db.predictions.get(slow.id)["worker"] != running, slow.error
    finally:
        db.close()
        for worker in workers:
            if worker.proc.poll() is not None:
                worker.start()  # the next tests have both
    assert httpx.get(second.output[0]).content[:4] == b"\x89PNG"


def test_a_training_recorded_by_an_api_that_died_before_queuing_it_still_runs(cluster, receiver):
    """The API commits the record, then queues its job: killed between the two, the training is in
    the database with no job. The workers' reconcile job queues it."""
    from builder.service.store.database import Database
    from builder.service.trainings.record import new_training
    from tests.test_service import TRAIN_INPUT

    api, _ = cluster
    doc = new_training(
        model="alice/orphan",
        input={**TRAIN_INPUT, "instance_data": "https://example.com/none.zip"},
        trainer_version=local_trainer_version(),
        template_version=next(iter(api.config["templates"])),
        notes=None,
        webhook=f"{receiver.url}/orphan",
    )
    doc["cancel_requested"] = True  # it need not train to show it is picked up: it ends canceled, with its webhook
    db = Database(api.config["database_url"])
    db.trainings.create(doc)
    db.close()
    done = api.wait(doc["id"], timeout=120)
    assert done["status"] == "canceled"
    assert [h.headers["webhook-id"] for h in hooks_for(receiver, doc["id"])] == [f"{doc['id']}-completed"]


def test_the_api_killed_mid_requests_loses_nothing(tmp_path, cluster, receiver):
    """Submissions in flight when the API is SIGKILLed: every one it accepted (and any it
    committed without answering) ends, each with one completed webhook."""
    import concurrent.futures

    api, _ = cluster
    url = upload(api, photos_zip(tmp_path / "photos.zip"))
    request = seed_request(api, receiver, url, model="alice/inflight")
    before = {t["id"] for t in _all_trainings(api)}

    def submit(_):
        try:
            response = httpx.post(f"{api.url}/v1/trainings", json=request, headers=ALICE, timeout=30)
            return response.json()["id"] if response.status_code == 201 else None
        except httpx.HTTPError:
            return None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(submit, n) for n in range(40)]
        # Killed once it has accepted one (however long that takes on a loaded machine), with the
        # rest in flight: a fixed 0.3 s was, under load, before it had accepted any.
        wait_for(lambda: any(f.done() and f.result() for f in futures), 60, "a first accepted submission")
        api.proc.kill()
        accepted = {f.result() for f in futures} - {None}
    api.proc.wait()
    api.start()
    recorded = {t["id"] for t in _all_trainings(api)} - before
    assert accepted <= recorded and recorded  # nothing accepted is lost
    for training_id in recorded:  # cancel them all: what matters is that every one ends
        httpx.post(f"{api.url}/v1/trainings/{training_id}/cancel", headers=ALICE)
    for training_id in recorded:
        assert api.wait(training_id, timeout=300)["status"] in ("canceled", "succeeded", "failed")
        hooks = hooks_for(receiver, training_id)
        assert [h.headers["webhook-id"] for h in hooks] == [f"{training_id}-completed"]


def _all_trainings(api) -> list[dict]:
    found, url = [], f"{api.url}/v1/trainings?limit=100"
    while url:
        page = httpx.get(url, headers=ALICE).json()
        found += page["results"]
        url = page["next"]
    return found


def test_a_hundred_concurrent_submissions_each_end_with_one_completed_webhook(tmp_path, cluster, receiver):
    import concurrent.futures

    api, _ = cluster
    url = upload(api, photos_zip(tmp_path / "photos.zip"))
    request = seed_request(api, receiver, url, model="alice/hundred")
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: httpx.post(f"{api.url}/v1/trainings", json=request, headers=ALICE, timeout=60), range(100)))
    assert [r.status_code for r in responses] == [201] * 100
    ids = [r.json()["id"] for r in responses]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:  # canceled: the point is the queue and the webhooks, not 100 trainers
        list(pool.map(lambda i: httpx.post(f"{api.url}/v1/trainings/{i}/cancel", headers=ALICE, timeout=60), ids))
    for training_id in ids:
        assert api.wait(training_id, timeout=300)["status"] in ("canceled", "succeeded")
    time.sleep(2)
    for training_id in ids:
        hooks = [r for r in receiver.received if json.loads(r.body)["id"] == training_id]
        assert [h.headers["webhook-id"] for h in hooks] == [f"{training_id}-completed"]


def test_a_receiver_that_is_down_does_not_hold_the_next_training(tmp_path, cluster):
    api, _ = cluster
    down = start_receiver()
    down.script = [503] * 10_000
    try:
        url = upload(api, photos_zip(tmp_path / "photos.zip"))
        first = httpx.post(f"{api.url}/v1/trainings", json=seed_request(api, down, url, model="alice/first"), headers=ALICE).json()
        done = api.wait(first["id"])
        # Ended (stage done) while its webhook is still being retried: the delivery is its own job.
        assert done["status"] == "succeeded" and done["stage"] == "done"
        shown = wait_for(
            lambda: (
                (httpx.get(first["urls"]["get"], headers=ALICE).json().get("webhook_delivery") or {}).get("attempts", 0) >= 3
                and httpx.get(first["urls"]["get"], headers=ALICE).json()["webhook_delivery"]
            ),
            60,
            "retries shown",
        )
        assert shown["state"] == "pending" and shown["status"] == 503
        assert {h.headers["webhook-id"] for h in down.received} == {f"{first['id']}-completed"}
        second = httpx.post(f"{api.url}/v1/trainings", json=seed_request(api, down, url, model="alice/second"), headers=ALICE).json()
        assert api.wait(second["id"])["status"] == "succeeded"
        # The receiver is back: a re-send is delivered at once.
        down.script = []
        wait_for(
            lambda: (httpx.get(first["urls"]["get"], headers=ALICE).json()["webhook_delivery"] or {}).get("state") == "delivered",
            60,
            "the retried delivery",
        )
        resent = httpx.post(f"{api.url}/v1/trainings/{first['id']}/webhook", headers=ALICE)
        assert resent.status_code == 200
        wait_for(
            lambda: (
                httpx.get(first["urls"]["get"], headers=ALICE).json()["webhook_delivery"]["attempts"] == 1
                and httpx.get(first["urls"]["get"], headers=ALICE).json()["webhook_delivery"]["state"] == "delivered"
            ),
            60,
            "re-sent",
        )
    finally:
        down.stop()


def test_values_postgresql_cannot_store_are_refused_at_entry_too(tmp_path, cluster, receiver):
    """The SQLite test's hostile inputs (NaN, Infinity, NUL in bodies, metadata, file names and
    URLs; paging out of range) against PostgreSQL, which refuses what SQLite keeps: the same 422s,
    nothing stored, nothing left on disk."""
    api, _ = cluster
    refuse_what_no_store_keeps(tmp_path, api, receiver)


def test_operations_routes(cluster):
    api, _ = cluster
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{api.url}/readyz").json() == {"status": "ready"}
    metrics = httpx.get(f"{api.url}/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert 'dreambuild_trainings{status="succeeded"}' in text and 'dreambuild_workers{role="train"} 2.0' in text
    assert 'dreambuild_webhook_deliveries_total{outcome="delivered"}' in text
    assert 'dreambuild_stage_seconds_bucket{le="+Inf",stage="training"}' in text and "dreambuild_queue_depth" in text
    # JSON logs (--log-format json), with uvicorn's access log in them.
    lines = [json.loads(line) for line in (api.root / "service.log").read_text().splitlines() if line.startswith("{")]
    assert lines and all({"time", "levelname", "name", "message"} <= set(line) for line in lines)
    assert any(line["name"] == "uvicorn.access" and "GET /healthz" in line["message"] for line in lines)


def test_postgresql_down_is_503_and_queued_work_survives_its_restart(tmp_path, cluster, receiver, postgres):
    api, workers = cluster
    wait_for(lambda: len(live_workers(api)) == 2, 120, "two live workers")
    url = upload(api, photos_zip(tmp_path / "photos.zip"))
    created = httpx.post(f"{api.url}/v1/trainings", json=seed_request(api, receiver, url, model="alice/outage"), headers=ALICE).json()
    count = len(_all_trainings(api))
    postgres.stop()
    try:
        ready = httpx.get(f"{api.url}/readyz")
        assert ready.status_code == 503 and "database" in ready.json()["problems"] and "queue" in ready.json()["problems"]
        refused = httpx.post(f"{api.url}/v1/trainings", json=seed_request(api, receiver, url, model="alice/outage"), headers=ALICE)
        assert refused.status_code == 503 and refused.json()["detail"] == "the database is unavailable; try again shortly"
        # No token needed for /readyz: it names what is down, never where (host, port) or the driver's words.
        assert ready.json()["problems"] == {"database": "the database is unavailable", "queue": "the queue is unavailable: it lives in the database"}
        assert httpx.get(created["urls"]["get"], headers=ALICE).status_code == 503
        time.sleep(5)
    finally:
        postgres.start()
    assert wait_for(lambda: httpx.get(f"{api.url}/readyz").status_code == 200, 60, "ready again")
    assert len(_all_trainings(api)) == count  # the refused request wrote nothing
    done = api.wait(created["id"], timeout=600)
    assert done["status"] == "succeeded", done["error"]
    assert all(w.proc.poll() is None for w in workers)  # the workers waited for the database
    assert [h.headers["webhook-id"] for h in hooks_for(receiver, created["id"])] == [f"{created['id']}-completed"]


def test_cog_http_trainers_a_pool_of_two_servers_then_runner_deadlines(tmp_path, tiny_base, registry, templates, receiver):
    """cog-http trainers on two trainer servers and one service. A pool: the README's old example
    (max_concurrent: 2, one cog-http server) answered every second training 409; with a pool,
    each training leases a server of its own and a third waits. Then deadlines, on the same
    servers: a trainer that never finishes fails at timeout_minutes; one whose server stops
    answering fails at the health checks — neither holds its slot (nor its server) forever."""
    from builder.cog.server import start_cog_server

    template_repo, template_digest = templates["docker"].split("@")
    pooled, slow, gone = "d" * 64, "a1" * 32, "b2" * 32
    nowhere = ["http://127.0.0.1:9"]
    config = {
        "data_dir": str(tmp_path / "data"),
        "port": free_port(),
        "registry": registry.host,
        "max_concurrent": 3,
        "trainers": {
            pooled: {"name": "remote", "runner": "cog-http", "urls": nowhere},
            slow: {"name": "slow", "runner": "cog-http", "urls": nowhere, "timeout_minutes": 0.25},
            gone: {"name": "gone", "runner": "cog-http", "urls": nowhere, "health_seconds": 1},
        },
        "templates": {template_digest.removeprefix("sha256:"): {"name": "vanilla", "repository": template_repo}},
        "tokens": [{"token": "tok-alice", "owners": ["alice"]}],
        "egress_allow": ["127.0.0.1"],
    }
    api = Service(tmp_path, config)
    servers = []
    try:
        # The servers need the service's upload URL: start it once to learn it, then with the servers.
        api.start_without_schemas()
        upload_url = (tmp_path / "data" / "cog-upload-url").read_text().strip()
        api.stop()
        env = {"DREAMBUILD_BASE_MODEL": str(tiny_base), "DREAMBUILD_WORKDIR": str(tmp_path / "work")}
        servers = [start_cog_server("trainer/cog_model.py:Predictor", tmp_path / f"gpu-{n}", upload_url=upload_url, env=env) for n in range(2)]
        api.config["trainers"][pooled]["urls"] = [s.url for s in servers]
        api.config["trainers"][slow]["urls"] = [servers[0].url]
        api.config["trainers"][gone]["urls"] = [servers[1].url]
        api.start()
        url = upload(api, photos_zip(tmp_path / "photos.zip"))
        request = seed_request(api, receiver, url, trainer_version=pooled, model="alice/pooled")
        request["input"]["max_train_steps"] = 30
        created = [httpx.post(f"{api.url}/v1/trainings", json=request, headers=ALICE).json() for _ in range(3)]
        # Two train at once, each on its own server; the third waits for one to be free.
        wait_for(
            lambda: sum("Training" in httpx.get(c["urls"]["get"], headers=ALICE).json()["logs"] for c in created) == 2,
            180,
            "two trainings on the two servers",
        )
        done = [api.wait(c["id"]) for c in created]
        assert [d["status"] for d in done] == ["succeeded"] * 3, [d["error"] for d in done]
        # The third waited for a server (metrics.trainer_wait_time) instead of being refused.
        assert sum("trainer_wait_time" in d["metrics"] for d in done) == 1
        # (An HTTP 409 as a word: the logs' digests and ids hold "409" by chance.)
        assert not any(re.search(r"\b409\b", d["logs"]) or "busy" in d["logs"] for d in done)

        deadlines = {}
        for version in (slow, gone):
            request = seed_request(api, receiver, url, trainer_version=version, model=f"alice/deadline-{version[:2]}")
            request["input"]["max_train_steps"] = 5000
            deadlines[version] = httpx.post(f"{api.url}/v1/trainings", json=request, headers=ALICE).json()
        wait_for(lambda: "Training" in httpx.get(deadlines[gone]["urls"]["get"], headers=ALICE).json()["logs"], 180, "training")
        servers[1].stop()  # the GPU box goes away mid-training
        failed = api.wait(deadlines[gone]["id"], timeout=120)
        assert failed["status"] == "failed" and "stopped answering health checks" in failed["error"], failed["error"]
        timed_out = api.wait(deadlines[slow]["id"], timeout=180)
        assert timed_out["status"] == "failed" and "did not finish within timeout_minutes=0.25" in timed_out["error"]
    finally:
        api.stop()
        for server in servers:
            server.stop()


def test_jobs_deferred_from_a_running_jobs_thread_all_arrive(pg_url, tmp_path):
    """A job's blocking work (a stage, a prediction, a delivery attempt) runs in a thread and defers
    the next jobs from there while the worker's event loop uses the same connection pool: through
    jobs.in_thread every deferral arrives and nothing fails (through asyncio.to_thread, procrastinate
    opened a second event loop on the pool: deferrals failed with "Database error", and under load a
    procrastinate worker stopped with "Lock is not acquired", leaving a training at its webhook stage)."""
    import asyncio

    from builder.service.config import ServiceConfig
    from builder.service.workers.jobs import apply_schema, create_queue_app, defer_delivery, in_thread

    config = ServiceConfig.model_validate({"database_url": pg_url, "workers": "external", "data_dir": str(tmp_path)})
    apply_schema(config)

    async def main() -> list:
        app = create_queue_app(config)
        async with app.open_async():

            async def busy() -> None:  # the worker's own queries meanwhile (fetching jobs, heartbeats)
                for _ in range(200):
                    await app.connector.execute_query_all_async("SELECT 1 AS one")

            def deferring(n: int) -> None:
                for i in range(20):
                    defer_delivery(app, f"delivery-{n}-{i}", time.time())

            results = await asyncio.gather(busy(), *[in_thread(deferring, n) for n in range(4)], return_exceptions=True)
            rows = await app.connector.execute_query_all_async("SELECT count(*) AS n FROM procrastinate_jobs")
        return [r for r in results if isinstance(r, BaseException)] + [rows[0]["n"]]

    assert asyncio.run(asyncio.wait_for(main(), 120)) == [80]


def test_a_lora_version_goes_to_an_idle_worker_with_its_templates_base_warm(tmp_path, pg_url):
    """Routing (fast boot): a LoRA version runs warm on any worker whose heartbeat names its
    template's base loaded, so it is queued there; a full fine-tune of that template is not (it
    needs its own server), nor is a LoRA version when that worker is busy."""
    from builder.service.config import ServiceConfig
    from builder.service.store.database import Database
    from builder.service.workers.jobs import PREDICT, apply_schema, prediction_queue, worker_predict_queue

    apply_schema(ServiceConfig(data_dir=tmp_path, database_url=pg_url, workers="external"))
    db = Database(pg_url)
    template = "1" * 64
    db.versions.add("alice", "lora", {"id": "sha256:" + "a" * 64, "template_version": template, "lora": True})
    db.versions.add("alice", "full", {"id": "sha256:" + "b" * 64, "template_version": template, "lora": False})
    db.heartbeats.beat("w1", {"name": "w1", "loaded": ["sha256:" + "c" * 64], "bases": [template], "current": []})
    db.heartbeats.beat("w2", {"name": "w2", "loaded": [], "bases": [], "current": []})
    lora = {"id": "p1", "model": "alice/lora", "version": "sha256:" + "a" * 64}
    assert prediction_queue(db, lora) == worker_predict_queue("w1")
    assert prediction_queue(db, {"id": "p2", "model": "alice/full", "version": "sha256:" + "b" * 64}) == PREDICT
    db.heartbeats.beat("w1", {"name": "w1", "loaded": [], "bases": [template], "current": ["a training"]})
    assert prediction_queue(db, lora) == PREDICT
    db.close()
