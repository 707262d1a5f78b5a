"""HTTP helpers shared by the service's routers: errors for the user, request bodies streamed
to disk under a limit."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # an uploaded file's name, as stored (use fullmatch)


def fail(status: int, detail: str) -> HTTPException:
    """An HTTP error whose ``detail`` names the problem for the user."""
    return HTTPException(status_code=status, detail=detail)


def check_http_url(value: object, field: str) -> str:
    """``value`` if it is an absolute http(s) URL with a host (and a valid port), else a 422
    naming ``field``."""
    problem = f"{field} {value!r} is not an http(s) URL"
    if not isinstance(value, str) or len(value) > 4096 or any(c.isspace() or ord(c) < 32 for c in value):
        raise fail(422, problem)
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        raise fail(422, problem + " (its port is not a number from 1 to 65535)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port == 0:
        raise fail(422, problem)
    return value


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
