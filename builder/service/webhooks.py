"""Webhook delivery, signed with the Standard Webhooks scheme Replicate uses.

Headers ``webhook-id`` (stable per training and event, so receivers can deduplicate retries),
``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` of
``id.timestamp.body`` with the training owner's ``whsec_`` secret), which the ``replicate`` client's
``Webhooks.validate`` accepts. Errors, timeouts and non-2xx answers are retried with exponential
backoff; redirects are not followed (a 3xx is a failure, as Replicate does).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
from standardwebhooks.webhooks import Webhook

from builder.egress import EgressPolicy, EgressRefused, pinned

log = logging.getLogger(__name__)


def secret_setting(owner: str) -> str:
    """The database setting holding ``owner``'s signing secret (one per owner, as Replicate has one
    per account: no owner can sign webhooks that another's receiver accepts)."""
    return f"webhook_secret/{owner}"


def new_secret() -> str:
    """A signing secret in the ``whsec_<base64>`` form Replicate hands out."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(secret: str, webhook_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    now = now or datetime.now(timezone.utc)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, body),
        "content-type": "application/json",
        "user-agent": "dreambuild-webhooks",
    }


@dataclass(frozen=True)
class Delivery:
    ok: bool
    attempts: int
    status: int | None
    error: str | None


def deliver(url: str, payload: dict, *, secret: str, webhook_id: str, attempts: int = 8, backoff: float = 1.0,
            timeout: float = 10.0, policy: EgressPolicy | None = None, stop: threading.Event | None = None) -> Delivery:
    """POST ``payload`` to ``url`` until a 2xx answer or ``attempts`` run out; never raises."""
    body = json.dumps(payload, separators=(",", ":"), default=str)
    status: int | None = None
    error: str | None = None
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for attempt in range(1, attempts + 1):
            try:
                # At every attempt, and sent to the address checked: the name may resolve elsewhere by now.
                target, pin, extensions = pinned(url, policy.check(url, "webhook")) if policy is not None else (url, {}, {})
                response = client.post(target, content=body.encode(), headers={**signed_headers(secret, webhook_id, body), **pin},
                                       extensions=extensions)
                status = response.status_code
                if 200 <= status < 300:
                    return Delivery(True, attempt, status, None)
                error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:  # retrying cannot help
                return Delivery(False, attempt, None, f"{type(exc).__name__}: {exc}")
            except EgressRefused as exc:
                return Delivery(False, attempt, None, str(exc))
            except httpx.HTTPError as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            if attempt < attempts:
                delay = backoff * 2 ** (attempt - 1)
                log.warning("webhook %s to %s failed (%s); retrying in %.1fs", webhook_id, url, error, delay)
                if stop is not None and stop.wait(delay):  # the service is stopping: give back, do not give up
                    return Delivery(False, attempt, status, error)
                if stop is None:
                    time.sleep(delay)
    return Delivery(False, attempts, status, error)
