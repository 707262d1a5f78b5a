"""``/v1/files`` (Replicate's files API): upload, get, list and delete with the API token;
download with a signed URL. The files themselves: :mod:`builder.service.store.files`."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from builder.service.config import ALL_OWNERS
from builder.service.http.common import FILE_ANSWER, CheckedJSONRoute, fail, unstorable, user_content_headers
from builder.service.http.deps import Owners, ServiceDep
from builder.service.schema import File, Page
from builder.service.store.files import CHUNK, public_file, safe_name

router = APIRouter(tags=["files"], route_class=CheckedJSONRoute)


@router.post("/v1/files", status_code=201, summary="Upload a file for a prediction's input (multipart: content)", response_model=File)
async def create_file(service: ServiceDep, token_owners: Owners, request: Request) -> dict:
    # The JavaScript client sends metadata as a second file part (a JSON blob); Python's as a field.
    form = await request.form(max_files=2, max_fields=8)
    content = form.get("content")
    if not isinstance(content, UploadFile):
        raise fail(422, "the upload needs a multipart field named content holding the file")
    metadata = form.get("metadata")
    if isinstance(metadata, UploadFile):
        metadata = (await metadata.read(65537)).decode(errors="replace")
        if len(metadata) > 65536:
            raise fail(413, "metadata is over the limit of 65536 bytes")
    try:
        metadata = json.loads(metadata) if isinstance(metadata, str) and metadata else {}
    except ValueError:
        raise fail(422, "metadata must be a JSON object") from None
    if not isinstance(metadata, dict):
        raise fail(422, "metadata must be a JSON object")
    filename = form.get("filename") if isinstance(form.get("filename"), str) else content.filename
    content_type = form.get("type") if isinstance(form.get("type"), str) else content.content_type
    if problem := unstorable({"metadata": metadata, "filename": filename, "type": content_type}):
        raise fail(422, problem)
    limit = service.config.max_upload_bytes

    def write(handle) -> None:
        size = 0
        content.file.seek(0)
        while chunk := content.file.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise fail(413, f"upload is over the limit of {limit} bytes")
            handle.write(chunk)

    doc = service.files.add(token_owners[0], safe_name(filename), content_type or "application/octet-stream", write, metadata=metadata)
    return public_file(service.files, doc)


@router.get("/v1/files", summary="List your files, newest first", response_model=Page[File])
def list_files(service: ServiceDep, token_owners: Owners) -> dict:
    found = service.db.files.recent(None if ALL_OWNERS in token_owners else token_owners)
    return {"previous": None, "next": None, "results": [public_file(service.files, doc) for doc in found]}


@router.get("/v1/files/{file_id}", summary="Get a file's record", response_model=File)
def get_file(service: ServiceDep, token_owners: Owners, file_id: str) -> dict:
    doc = service.files.get(file_id, token_owners)
    if doc is None:
        raise fail(404, f"file {file_id} not found")
    return public_file(service.files, doc)


@router.delete("/v1/files/{file_id}", status_code=204, summary="Delete a file")
def delete_file(service: ServiceDep, token_owners: Owners, file_id: str) -> None:
    doc = service.files.get(file_id, token_owners)
    if doc is None:
        raise fail(404, f"file {file_id} not found")
    service.files.delete(doc)


@router.get("/v1/files/{file_id}/download/{name}", summary="Download a file (signed, expiring URL: no token)", **FILE_ANSWER)
def download(service: ServiceDep, file_id: str, name: str, expires: str = "", signature: str = "") -> FileResponse:
    doc = service.files.get(file_id)
    if doc is None or doc["name"] != name or not service.files.check_signature(file_id, expires, signature):
        raise fail(404, "file not found, or its download URL has expired")
    path = Path(doc["path"])
    if not path.is_file():
        raise fail(404, "file not found, or its download URL has expired")
    expiry = datetime.fromtimestamp(int(expires), timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
    kind, headers = user_content_headers(doc["content_type"], doc["name"])
    return FileResponse(path, media_type=kind, headers={**headers, "Expires": expiry, "Cache-Control": "private"})
