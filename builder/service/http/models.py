"""Models and their versions (a version is a built image: its digest), and the catalog of
trainers and templates a training may name. Another owner's model is 404.

A model exists once it has a version (a training pushed one) or was created (Replicate's
``POST /v1/models``, which its guides call before the first training); a training's destination
need not be created first.
"""

from __future__ import annotations

from fastapi import APIRouter

from builder.oci.references import is_model_name, normalize_digest
from builder.service.config import ALL_OWNERS, catalog_listing
from builder.service.http.common import CheckedJSONRoute, check_http_url, fail
from builder.service.http.deps import Owners, ServiceDep
from builder.service.schema import Catalog, Model, ModelCreate, Page, Version, Visibility
from builder.service.state import Service

URL_FIELDS = ("github_url", "paper_url", "license_url", "cover_image_url")  # recorded and shown, never fetched


def public_version(doc: dict) -> dict:
    """A version as Replicate's clients read it (``openapi_schema`` and ``cog_version`` required)."""
    known = ("model", "image", "notes", "training_id", "trainer_version", "template_version", "created_at")
    return (
        {"id": doc["id"]}
        | {key: doc.get(key) for key in known}
        | {"openapi_schema": doc.get("openapi_schema") or {}, "cog_version": doc.get("cog_version") or ""}
    )


def public_model(service: Service, owner: str, name: str) -> dict | None:
    """The model ``owner/name`` as Replicate's clients read it, or None if it does not exist."""
    record = service.db.models.get(owner, name)
    latest = service.db.versions.latest(owner, name)
    if record is None and latest is None:
        return None
    record = record or {}
    return {
        "url": f"{service.config.base_url}/v1/models/{owner}/{name}",
        "owner": owner,
        "name": name,
        "description": record.get("description"),
        "visibility": record.get("visibility") or Visibility.PRIVATE,
        "hardware": record.get("hardware"),
        **{key: record.get(key) for key in URL_FIELDS},
        "default_example": None,
        "run_count": sum(service.db.predictions.count(f"{owner}/{name}").values()),
        "latest_version": public_version(latest) if latest else None,
    }


router = APIRouter(tags=["models"], route_class=CheckedJSONRoute)


@router.get(
    "/v1/models",
    summary="List your models: those with a built version (the most recently built first), then those created without one",
    response_model=Page[Model],
)
def list_models(service: ServiceDep, token_owners: Owners) -> dict:
    owners_filter = None if ALL_OWNERS in token_owners else token_owners
    names = list(dict.fromkeys(service.db.versions.models(owners_filter) + service.db.models.names(owners_filter)))
    return {"previous": None, "next": None, "results": [public_model(service, owner, name) for owner, name in names]}


@router.post("/v1/models", status_code=201, summary="Create a model (Replicate's models.create), before its first training", response_model=Model)
def create_model(service: ServiceDep, token_owners: Owners, body: ModelCreate) -> dict:
    model = f"{body.owner}/{body.name}"
    if not is_model_name(model):
        raise fail(422, f"model {model!r} must be owner/name: lowercase letters and digits, with '.', '_' or '-' between them")
    if not service.may_use(token_owners, body.owner):
        raise fail(403, f"this token may not create models of owner {body.owner!r}")
    for key in URL_FIELDS:
        if getattr(body, key) is not None:
            check_http_url(getattr(body, key), key)
    exists = service.db.versions.latest(body.owner, body.name) is not None
    if exists or not service.db.models.create(body.owner, body.name, body.model_dump(mode="json", exclude={"owner", "name"})):
        raise fail(409, f"model {model} already exists")
    return public_model(service, body.owner, body.name)


@router.get("/v1/catalog", summary="The trainers and templates a training may name (versions and names)", response_model=Catalog)
def catalog(service: ServiceDep, token_owners: Owners) -> dict:
    return catalog_listing(service.config)


@router.get("/v1/models/{owner}/{name}/versions", summary="List a model's built versions", response_model=Page[Version])
def list_versions(service: ServiceDep, token_owners: Owners, owner: str, name: str) -> dict:
    if not service.may_use(token_owners, owner):
        raise fail(404, f"model {owner}/{name} not found")
    return {"previous": None, "next": None, "results": [public_version(v) for v in service.db.versions.of_model(owner, name)]}


@router.get("/v1/models/{owner}/{name}/versions/{version_id}", summary="Get a built version", response_model=Version)
def get_version(service: ServiceDep, token_owners: Owners, owner: str, name: str, version_id: str) -> dict:
    digest = normalize_digest(version_id)
    version = service.db.versions.get(owner, name, digest) if digest else None
    if version is None or not service.may_use(token_owners, owner):
        raise fail(404, f"version {version_id} of {owner}/{name} not found")
    return public_version(version)


@router.delete(
    "/v1/models/{owner}/{name}/versions/{version_id}", status_code=204, summary="Delete a version's record (its image stays in the registry)"
)
def delete_version(service: ServiceDep, token_owners: Owners, owner: str, name: str, version_id: str) -> None:
    digest = normalize_digest(version_id)
    if not digest or not service.may_use(token_owners, owner) or service.db.versions.get(owner, name, digest) is None:
        raise fail(404, f"version {version_id} of {owner}/{name} not found")
    service.db.versions.delete(owner, name, digest)


@router.get("/v1/models/{owner}/{name}", summary="Get a model (with its latest version, if it has one)", response_model=Model)
def get_model(service: ServiceDep, token_owners: Owners, owner: str, name: str) -> dict:
    model = public_model(service, owner, name) if service.may_use(token_owners, owner) else None
    if model is None:
        raise fail(404, f"model {owner}/{name} not found")
    return model


@router.delete("/v1/models/{owner}/{name}", status_code=204, summary="Delete a model that has no versions (Replicate's rule)")
def delete_model(service: ServiceDep, token_owners: Owners, owner: str, name: str) -> None:
    mine = service.may_use(token_owners, owner)
    has_versions = mine and service.db.versions.latest(owner, name) is not None
    if not has_versions and (not mine or service.db.models.get(owner, name) is None):
        raise fail(404, f"model {owner}/{name} not found")
    if has_versions:
        raise fail(409, f"model {owner}/{name} has versions: delete them first (DELETE /v1/models/{owner}/{name}/versions/{{id}})")
    service.db.models.delete(owner, name)
