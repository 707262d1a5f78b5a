"""Webhook delivery, signed with the Standard Webhooks scheme Replicate uses.

One attempt at a time (:func:`attempt`); :mod:`builder.service.webhooks.deliveries` records each and
schedules the next. Headers ``webhook-id`` (stable per training and event, so receivers can deduplicate retries),
``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` of
``id.timestamp.body`` with the training owner's ``whsec_`` secret), which the ``replicate`` client's
``Webhooks.validate`` accepts. Errors, timeouts and non-2xx answers are failed attempts (retried
with capped exponential :func:`backoff`); redirects are not followed (a 3xx is a failure, as
Replicate does).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
from standardwebhooks.webhooks import Webhook

from builder.egress import EgressPolicy, EgressRefused, pinned
from builder.tls import tls_context

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
class Attempt:
    """One POST of a webhook: ``final`` when retrying cannot help (a bad URL, an address refused)."""

    ok: bool
    status: int | None
    error: str | None
    final: bool = False


def attempt(url: str, payload: dict, *, secret: str, webhook_id: str, timeout: float = 10.0, policy: EgressPolicy | None = None) -> Attempt:
    """POST ``payload`` to ``url`` once; never raises. Retrying is the caller's (a delivery job's)."""
    body = json.dumps(payload, separators=(",", ":"), default=str)
    try:
        # Sent to the address checked now: the name may resolve elsewhere than at the last attempt.
        target, pin, extensions = pinned(url, policy.check(url, "webhook")) if policy is not None else (url, {}, {})
        with httpx.Client(timeout=timeout, follow_redirects=False, verify=tls_context()) as client:
            response = client.post(target, content=body.encode(), headers={**signed_headers(secret, webhook_id, body), **pin}, extensions=extensions)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        return Attempt(False, None, f"{type(exc).__name__}: {exc}", final=True)
    except EgressRefused as exc:
        return Attempt(False, None, str(exc), final=True)
    except httpx.HTTPError as exc:
        return Attempt(False, None, f"{type(exc).__name__}: {exc}")
    status = response.status_code
    if 200 <= status < 300:
        return Attempt(True, status, None)
    return Attempt(False, status, f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else ""))


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after ``attempts`` failed attempts: exponential from ``base``, at most ``cap``."""
    return min(cap, base * 2 ** max(0, attempts - 1))
