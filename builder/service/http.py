"""HTTP helpers shared by the service's routers: errors for the user, request bodies streamed
to disk under a limit."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from fastapi import HTTPException, Request

FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # an uploaded file's name, as it is stored


def fail(status: int, detail: str) -> HTTPException:
    """An HTTP error whose ``detail`` names the problem for the user."""
    return HTTPException(status_code=status, detail=detail)


async def stream_to(request: Request, target: Path, limit: int, cleanup: Path | None) -> int:
    """Stream the request body to ``target`` (never whole in memory), enforcing ``limit``;
    on failure remove what was written (and ``cleanup``)."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    size = 0
    try:
        with open(tmp, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise fail(413, f"upload is over the limit of {limit} bytes")
                out.write(chunk)
        tmp.replace(target)
        return size
    except BaseException:
        tmp.unlink(missing_ok=True)
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise
