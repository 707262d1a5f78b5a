"""Models and their versions (a version is a built image: its digest), and the catalog of
trainers and templates a training may name. Another owner's model is 404."""

from __future__ import annotations

from fastapi import APIRouter

from builder.oci.references import normalize_digest
from builder.service.config import ALL_OWNERS, catalog_listing
from builder.service.http.common import CheckedJSONRoute, fail
from builder.service.http.deps import Owners, ServiceDep
from builder.service.schema import Catalog, Model, ModelSummary, Page, Version


def public_version(doc: dict) -> dict:
    """A version as Replicate's clients read it (``openapi_schema`` and ``cog_version`` required)."""
    known = ("model", "image", "notes", "training_id", "trainer_version", "template_version", "created_at")
    return (
        {"id": doc["id"]}
        | {key: doc.get(key) for key in known}
        | {"openapi_schema": doc.get("openapi_schema") or {}, "cog_version": doc.get("cog_version") or ""}
    )


router = APIRouter(tags=["models"], route_class=CheckedJSONRoute)


@router.get("/v1/models", summary="List your models (those with a built version), the most recently built first", response_model=Page[ModelSummary])
def list_models(service: ServiceDep, token_owners: Owners) -> dict:
    owners_filter = None if ALL_OWNERS in token_owners else token_owners
    results = []
    for owner, name in service.db.versions.models(owners_filter):
        latest = service.db.versions.latest(owner, name)
        results.append({"owner": owner, "name": name, "latest_version": public_version(latest) if latest else None})
    return {"previous": None, "next": None, "results": results}


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


@router.get("/v1/models/{owner}/{name}", summary="Get a model (with its latest version)", response_model=Model)
def get_model(service: ServiceDep, token_owners: Owners, owner: str, name: str) -> dict:
    latest = service.db.versions.latest(owner, name) if service.may_use(token_owners, owner) else None
    if latest is None:
        raise fail(404, f"model {owner}/{name} not found")
    return {
        "url": f"{service.config.base_url}/v1/models/{owner}/{name}",
        "owner": owner,
        "name": name,
        "description": None,
        "visibility": "private",
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "cover_image_url": None,
        "default_example": None,
        "run_count": sum(service.db.predictions.count(f"{owner}/{name}").values()),
        "latest_version": public_version(latest),
    }
