"""The owner's webhook signing secret (Replicate's ``/v1/webhooks/default/secret``), and its
rotation: the old secret stops working at once."""

from __future__ import annotations

from fastapi import APIRouter

from builder.service.config import ALL_OWNERS
from builder.service.http.common import CheckedJSONRoute, fail
from builder.service.http.deps import Owners, ServiceDep
from builder.service.schema import WebhookSecret
from builder.service.state import Service
from builder.service.webhooks.attempt import new_secret, secret_setting

router = APIRouter(tags=["webhooks"], route_class=CheckedJSONRoute)


def _secret_owner(service: Service, token_owners: list[str], owner: str | None) -> str:
    if owner is None:
        if len(token_owners) != 1 or token_owners[0] == ALL_OWNERS:
            raise fail(422, "this token acts for several owners: name the one whose secret you want with ?owner=")
        return token_owners[0]
    if not service.may_use(token_owners, owner) or owner == ALL_OWNERS:
        raise fail(404, f"owner {owner!r} not found")
    return owner


@router.get("/v1/webhooks/default/secret", summary="The owner's webhook signing secret", response_model=WebhookSecret)
def webhook_secret(service: ServiceDep, token_owners: Owners, owner: str | None = None) -> dict:
    return {"key": service.db.settings.get(secret_setting(_secret_owner(service, token_owners, owner)), new_secret)}


@router.post("/v1/webhooks/default/secret/rotate", summary="Replace the owner's webhook signing secret", response_model=WebhookSecret)
def rotate_webhook_secret(service: ServiceDep, token_owners: Owners, owner: str | None = None) -> dict:
    key = new_secret()
    service.db.settings.set(secret_setting(_secret_owner(service, token_owners, owner)), key)
    return {"key": key}
