"""Webhook delivery to a real receiver, validated by the official replicate client."""

import json

import pytest
from replicate.webhook import InvalidSignatureError, Webhooks, WebhookSigningSecret

from builder.service.webhooks import deliver, new_secret
from tests.webhook_receiver import start_receiver

PAYLOAD = {"id": "t1", "status": "succeeded", "version": "sha256:" + "a" * 64, "metrics": {"predict_time": 1.5}}


@pytest.fixture
def receiver():
    server = start_receiver()
    yield server
    server.stop()


def test_signed_delivery_passes_the_replicate_clients_validation(receiver):
    secret = new_secret()
    result = deliver(f"{receiver.url}/hook?user=42&x=a%20b", PAYLOAD, secret=secret, webhook_id="t1-completed")
    assert result.ok and result.attempts == 1
    (got,) = receiver.received
    assert got.path == "/hook?user=42&x=a%20b" and json.loads(got.body) == PAYLOAD
    assert got.headers["webhook-id"] == "t1-completed"
    Webhooks.validate(headers=got.headers, body=got.body, secret=WebhookSigningSecret(key=secret))
    with pytest.raises(InvalidSignatureError):
        Webhooks.validate(headers=got.headers, body=got.body, secret=WebhookSigningSecret(key=new_secret()))


def test_failures_are_retried_with_the_same_id(receiver):
    receiver.script = [500, 503, 2.0, 200]  # two errors, one timeout, then success
    result = deliver(receiver.url, PAYLOAD, secret=new_secret(), webhook_id="t1-completed", backoff=0.01, timeout=0.5)
    assert result.ok and result.attempts == 4
    assert {r.headers["webhook-id"] for r in receiver.received} == {"t1-completed"}


def test_redirects_are_not_followed_and_failures_are_reported(receiver):
    receiver.script = [302, 302]
    result = deliver(receiver.url, PAYLOAD, secret=new_secret(), webhook_id="w", attempts=2, backoff=0.01)
    assert not result.ok and result.status == 302 and "redirects are not followed" in result.error
    assert all(r.path == "/" for r in receiver.received)
    dead = deliver("http://127.0.0.1:9/", PAYLOAD, secret=new_secret(), webhook_id="w", attempts=2, backoff=0.01)
    assert not dead.ok and dead.status is None and "ConnectError" in dead.error


def test_an_unusable_url_is_a_failed_delivery_not_an_exception():
    for url in ("http://127.0.0.1:abc/x", "gopher://example.com/"):
        result = deliver(url, PAYLOAD, secret=new_secret(), webhook_id="t1-completed", attempts=3, backoff=0)
        assert not result.ok and result.attempts == 1 and result.error


def test_the_egress_policy_holds_at_delivery(receiver):
    """A receiver on loopback is refused unless the operator allows it (checked at every attempt)."""
    from builder.egress import EgressPolicy

    refused = deliver(f"{receiver.url}/hook", PAYLOAD, secret=new_secret(), webhook_id="t1-completed", attempts=3, backoff=0,
                      policy=EgressPolicy())
    assert not refused.ok and refused.attempts == 1 and "non-public address" in refused.error and receiver.received == []
    allowed = deliver(f"{receiver.url}/hook", PAYLOAD, secret=new_secret(), webhook_id="t1-completed",
                      policy=EgressPolicy(("127.0.0.1",)))
    assert allowed.ok and len(receiver.received) == 1
