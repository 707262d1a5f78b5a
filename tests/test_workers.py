"""Many machines: `dreambuild serve` (the API only) and two `dreambuild worker` processes, sharing
nothing but PostgreSQL (state and queue) — each with its own data directory — against the real
Cog server trainer, the real registry and a real webhook receiver."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from builder.cog.server import free_port
from builder.service.config import local_trainer_version
from tests.helpers import photos_zip
from tests.test_service import ALICE, CLI, Service, hooks_for, seed_request, upload
from tests.webhook_receiver import start_receiver


class WorkerProcess:
    def __init__(self, root: Path, config: Path, name: str, roles: str = "train,build,webhooks") -> None:
        self.root, self.config, self.name, self.roles = root, config, name, roles
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        log = open(self.root / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen([CLI, "worker", "--config", str(self.config), "--name", self.name, "--roles", self.roles,
                                      "--data-dir", str(self.root / self.name)],
                                     stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
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
        "data_dir": str(root / "api"), "port": free_port(), "registry": registry.host, "database_url": database,
        "workers": "external",
        "trainers": {local_trainer_version(): {"name": "dreambooth", "runner": "local", "env": {"DREAMBUILD_BASE_MODEL": str(tiny_base)}}},
        "templates": {template_digest.removeprefix("sha256:"): {"name": "vanilla", "repository": template_repo}},
        "tokens": [{"token": "tok-alice", "owners": ["alice"]}, {"token": "tok-bob", "owners": ["bob"]}],
        "webhook_backoff": 0.2, "webhook_backoff_max": 1.0, "egress_allow": ["127.0.0.1"],
    }
    api = Service(root, config).start()
    workers = [WorkerProcess(root, root / "service.yaml", f"w{n}").start() for n in (1, 2)]
    yield api, workers
    for worker in workers:
        worker.stop()
    api.stop()


def live_workers(api) -> list[dict]:
    listed = subprocess.run([CLI, "workers", "--config", str(api.root / "service.yaml"), "--json"], capture_output=True, text=True,
                            timeout=60)
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
    from builder.service.database import Database

    db = Database(api.config["database_url"])
    try:
        return db.get_training(training_id)
    finally:
        db.close()


def test_trainings_spread_over_both_workers(tmp_path, cluster, receiver):
    api, workers = cluster
    listed = wait_for(lambda: len(live_workers(api)) == 2 and live_workers(api), 120, "two live workers")
    assert {w["name"] for w in listed} == {"w1", "w2"}
    assert all(w["trainer_versions"] == [local_trainer_version()] and w["roles"] == ["build", "train", "webhooks"] for w in listed)
    url = upload(api, photos_zip(tmp_path / "photos.zip"))
    created = [httpx.post(f"{api.url}/v1/trainings", json=seed_request(api, receiver, url, model=f"alice/spread-{n}"),
                          headers=ALICE).json() for n in range(2)]
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
