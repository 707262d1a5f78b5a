"""Uploads (instance data zips): streamed under a size limit to an unguessable capability URL,
like the peers' presigned URLs, so a trainer downloads it without a token; deleted by its owner."""

from __future__ import annotations

import mimetypes
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from builder.service.http.common import FILE_ANSWER, CheckedJSONRoute, fail, stream_to, user_content_headers
from builder.service.http.deps import Owners, ServiceDep
from builder.service.schema import Upload
from builder.service.store.files import FILENAME
from builder.service.store.retention import delete_upload
from builder.service.trainings.record import now_iso

router = APIRouter(tags=["uploads"], route_class=CheckedJSONRoute)


@router.post("/v1/uploads/{filename}", status_code=201, summary="Upload a file (instance data zip); returns its URL", response_model=Upload)
async def upload(service: ServiceDep, token_owners: Owners, filename: str, request: Request) -> dict:
    if not FILENAME.fullmatch(filename):
        raise fail(422, f"file name {filename!r} must be letters, digits, '.', '_' or '-'")
    upload_id = secrets.token_urlsafe(24)
    folder = service.config.data_dir / "uploads" / upload_id
    folder.mkdir(parents=True)
    size = await stream_to(request, folder / filename, service.config.max_upload_bytes, folder)
    service.db.uploads.add(
        {
            "id": upload_id,
            "owner": token_owners[0],
            "owners": token_owners,
            "name": filename,
            "path": str(folder / filename),
            "size": size,
            "created_at": now_iso(),
        }
    )
    return {"id": upload_id, "name": filename, "size": size, "url": f"{service.config.base_url}/v1/uploads/{upload_id}/{filename}"}


@router.delete("/v1/uploads/{upload_id}", status_code=204, summary="Delete an upload (its file and record)")
def delete_upload_route(service: ServiceDep, token_owners: Owners, upload_id: str) -> None:
    doc = service.db.uploads.get(upload_id)
    if doc is None or not all(service.may_use(token_owners, o) for o in doc.get("owners") or [doc["owner"]]):
        raise fail(404, f"upload {upload_id} not found")
    delete_upload(service.config, service.db, upload_id)


@router.get("/v1/uploads/{upload_id}/{filename}", summary="Download an upload (capability URL, no token)", **FILE_ANSWER)
def download(service: ServiceDep, upload_id: str, filename: str) -> FileResponse:
    path = service.upload_path(f"{service.config.base_url}/v1/uploads/{upload_id}/{filename}")
    if path is None:
        raise fail(404, "upload not found")
    kind, headers = user_content_headers(mimetypes.guess_type(filename)[0], filename)
    return FileResponse(path, media_type=kind, headers=headers)
