"""Webhook delivery to a real receiver, validated by the official replicate client: one attempt
(`attempt`), and deliveries as their own records and jobs (`Notifier` + the embedded scheduler):
retried with the same id under a capped exponential backoff, given up after their time, shown on
the training, re-sent on request."""

import json
import time

import pytest
from replicate.webhook import InvalidSignatureError, Webhooks, WebhookSigningSecret

from builder.egress import EgressPolicy
from builder.service.config import ServiceConfig
from builder.service.store.database import Database
from builder.service.trainings.record import new_training
from builder.service.webhooks.attempt import attempt, backoff, new_secret
from builder.service.webhooks.deliveries import LocalScheduler, Notifier
from tests.webhook_receiver import start_receiver

PAYLOAD = {"id": "t1", "status": "succeeded", "version": "sha256:" + "a" * 64, "metrics": {"predict_time": 1.5}}


@pytest.fixture
def receiver():
    server = start_receiver()
    yield server
    server.stop()


def test_signed_delivery_passes_the_replicate_clients_validation(receiver):
    secret = new_secret()
    result = attempt(f"{receiver.url}/hook?user=42&x=a%20b", PAYLOAD, secret=secret, webhook_id="t1-completed")
    assert result.ok and result.status == 200
    (got,) = receiver.received
    assert got.path == "/hook?user=42&x=a%20b" and json.loads(got.body) == PAYLOAD
    assert got.headers["webhook-id"] == "t1-completed"
    Webhooks.validate(headers=got.headers, body=got.body, secret=WebhookSigningSecret(key=secret))
    with pytest.raises(InvalidSignatureError):
        Webhooks.validate(headers=got.headers, body=got.body, secret=WebhookSigningSecret(key=new_secret()))


def test_failed_attempts_say_why(receiver):
    receiver.script = [302, 500, 0.8]
    redirected = attempt(receiver.url, PAYLOAD, secret=new_secret(), webhook_id="w")
    assert not redirected.ok and redirected.status == 302 and "redirects are not followed" in redirected.error
    assert not redirected.final and receiver.received[0].path == "/"
    assert attempt(receiver.url, PAYLOAD, secret=new_secret(), webhook_id="w").status == 500
    slow = attempt(receiver.url, PAYLOAD, secret=new_secret(), webhook_id="w", timeout=0.3)
    assert not slow.ok and "Timeout" in slow.error
    dead = attempt("http://127.0.0.1:9/", PAYLOAD, secret=new_secret(), webhook_id="w")
    assert not dead.ok and dead.status is None and "ConnectError" in dead.error and not dead.final


def test_an_unusable_url_or_refused_address_is_final_not_an_exception(receiver):
    for url in ("http://127.0.0.1:abc/x", "gopher://example.com/"):
        result = attempt(url, PAYLOAD, secret=new_secret(), webhook_id="t1-completed")
        assert not result.ok and result.final and result.error
    # A receiver on loopback is refused unless the operator allows it (checked at every attempt).
    refused = attempt(f"{receiver.url}/hook", PAYLOAD, secret=new_secret(), webhook_id="t1", policy=EgressPolicy())
    assert refused.final and "non-public address" in refused.error and receiver.received == []
    allowed = attempt(f"{receiver.url}/hook", PAYLOAD, secret=new_secret(), webhook_id="t1", policy=EgressPolicy(("127.0.0.1",)))
    assert allowed.ok and len(receiver.received) == 1


def test_attempts_load_the_ca_bundle_once_per_process(receiver, monkeypatch):
    """Each attempt used to build its own TLS context (~40 ms of CPU loading the CA bundle): now
    every attempt, and every outbound client, shares one per CA setting (builder.tls)."""
    import ssl

    from builder.tls import _context_for

    loads = []
    real = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", lambda self, *a, **k: loads.append(a or k) or real(self, *a, **k))
    _context_for.cache_clear()
    for i in range(3):
        assert attempt(f"{receiver.url}/hook", PAYLOAD, secret=new_secret(), webhook_id=f"w{i}").ok
    assert len(loads) == 1 and len(receiver.received) == 3


def test_backoff_is_exponential_and_capped():
    assert [backoff(n, 2, 600) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert backoff(30, 2, 600) == 600


def _notifier(tmp_path, receiver, **config):
    settings = ServiceConfig(data_dir=tmp_path, egress_allow=["127.0.0.1"], **config)
    db = Database(tmp_path / "db.sqlite")
    scheduler = LocalScheduler()
    notifier = Notifier(settings, db, scheduler)
    scheduler.start(notifier.attempt)
    doc = new_training(
        model="alice/m",
        input={},
        trainer_version="a" * 64,
        template_version="b" * 64,
        notes=None,
        webhook=f"{receiver.url}/hook",
        events=["start", "completed"],
    )
    db.trainings.create(doc)
    return notifier, scheduler, db, doc


def _wait_state(db, training_id, state, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = db.trainings.get(training_id).get("webhook_delivery")
        if shown and shown["state"] == state:
            return shown
        time.sleep(0.05)
    raise AssertionError(f"delivery never {state}: {db.trainings.get(training_id).get('webhook_delivery')}")


def test_a_delivery_is_retried_with_the_same_id_until_delivered_and_shown(tmp_path, receiver):
    notifier, scheduler, db, doc = _notifier(tmp_path, receiver, webhook_backoff=0.05, webhook_backoff_max=0.2)
    try:
        receiver.script = [500, 503, 502, 500, 200]  # four failures, then success
        notifier.event(doc, "completed")
        assert notifier.event(doc, "output") is None  # not asked for: no delivery
        shown = _wait_state(db, doc["id"], "delivered")
        assert shown["attempts"] == 5 and shown["ok"] and shown["webhook_id"] == f"{doc['id']}-completed"
        assert {r.headers["webhook-id"] for r in receiver.received} == {f"{doc['id']}-completed"}
        # The same event again (a re-run stage) is the same delivery: not sent twice.
        notifier.event(doc, "completed")
        time.sleep(0.3)
        assert len(receiver.received) == 5
        # Re-sent on request: a fresh series of attempts, the same id.
        notifier.resend(db.trainings.get(doc["id"]))
        _wait_state(db, doc["id"], "delivered")
        receiver.wait(6)
        assert len(receiver.received) == 6 and receiver.received[-1].headers["webhook-id"] == f"{doc['id']}-completed"
    finally:
        scheduler.stop()


def test_a_dead_receiver_is_given_up_after_its_time_and_holds_nothing(tmp_path, receiver):
    notifier, scheduler, db, doc = _notifier(
        tmp_path, receiver, webhook_backoff=0.05, webhook_backoff_max=0.1, webhook_retry_hours=1.0 / 3600
    )  # one second
    try:
        receiver.script = [500] * 1000
        started = time.monotonic()
        notifier.event(doc, "start")
        notifier.event(doc, "completed")
        assert time.monotonic() - started < 0.5  # recording an event never waits for the receiver
        shown = _wait_state(db, doc["id"], "failed")
        assert shown["status"] == 500 and shown["error"] == "HTTP 500" and 5 <= shown["attempts"] <= 40
        deadline = time.monotonic() + 10
        while notifier.deliveries.get(f"{doc['id']}-start")["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
        start = notifier.deliveries.get(f"{doc['id']}-start")
        assert start["status"] == "failed" and start["attempts"] >= 5
    finally:
        scheduler.stop()


def test_pending_deliveries_survive_a_restart(tmp_path, receiver):
    notifier, scheduler, db, doc = _notifier(tmp_path, receiver, webhook_backoff=3600)  # the next attempt: in an hour
    receiver.script = [500]
    notifier.event(doc, "completed")
    _wait_state(db, doc["id"], "pending")
    receiver.wait(1)
    scheduler.stop()
    assert notifier.pending()[0][0] == f"{doc['id']}-completed"
    # Restarted (as the service's start does): pending deliveries are scheduled again, at their time.
    again = LocalScheduler()
    restarted = Notifier(notifier.config.model_copy(update={"webhook_backoff": 0.05}), db, again)
    again.start(restarted.attempt)
    try:
        for delivery_id, _ in restarted.pending():
            again(delivery_id, time.time())
        _wait_state(db, doc["id"], "delivered")
        assert len(receiver.received) == 2
    finally:
        again.stop()
