"""HTTP helpers shared by the service's routers: errors for the user, JSON bodies checked for
what no store keeps, request bodies streamed to disk under a limit."""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Query, Request, Response
from fastapi.routing import APIRoute

from builder.egress import EgressPolicy, EgressRefused
from builder.service.store.files import FILENAME

# A list route's paging, checked where it enters (a cursor past SQLite's integers answered 500).
Cursor = Annotated[int | None, Query(ge=1, le=2**63 - 1, description="From a previous page's next.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Results per page.")]

# A route that answers with a file's bytes, as /docs should show it (not as JSON).
FILE_ANSWER: dict = {
    "response_class": Response,
    "responses": {
        200: {"description": "The file's bytes", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    },
}


def fail(status: int, detail: str) -> HTTPException:
    """An HTTP error whose ``detail`` names the problem for the user."""
    return HTTPException(status_code=status, detail=detail)


def unstorable(value: Any, path: str = "") -> str | None:
    """The first value no store keeps and JSON does not define, named by its path: a non-finite
    number (Python's JSON reads NaN and Infinity; PostgreSQL refuses them, a Cog server too) or a
    NUL character (PostgreSQL's text and JSON cannot hold one). None when there is none."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path or 'the body'}: {value} is not a finite number (JSON has no NaN or Infinity)"
    if isinstance(value, str) and "\x00" in value:
        return f"{path or 'the body'}: contains a NUL character (\\u0000), which cannot be stored"
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return f"{path or 'the body'}: a key contains a NUL character (\\u0000), which cannot be stored"
            if problem := unstorable(item, where):
                return problem
    if isinstance(value, list):
        for index, item in enumerate(value):
            if problem := unstorable(item, f"{path}[{index}]"):
                return problem
    return None


class CheckedJSONRoute(APIRoute):
    """A public route whose JSON body is refused (422 naming the field) when it holds what
    :func:`unstorable` finds, before its handler runs: SQLite kept such values and PostgreSQL
    answered 500; a model's Cog server refused them after acceptance, which cost its warm server.
    A NUL in its path or query (a name, a filter PostgreSQL cannot compare) is refused the same way."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            for where, values in (("path", [request.url.path]), ("query", request.query_params.multi_items())):
                for value in values:
                    name, text = value if isinstance(value, tuple) else ("", value)
                    if "\x00" in name or "\x00" in text:
                        raise fail(
                            422, f"{where}{'.' + name.replace(chr(0), '') if name else ''}: contains a NUL character (%00), which cannot be stored"
                        )
            if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
                body = await request.body()  # kept by the request: the handler reads it again
                try:
                    value = json.loads(body) if body else None
                except ValueError:
                    value = None  # FastAPI answers malformed JSON itself
                if problem := unstorable(value):
                    raise fail(422, problem)
            return await handler(request)

        return checked


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


def check_reachable(value: str, field: str, egress: EgressPolicy) -> str:
    """``value`` if the egress policy lets the service reach it for a user (judged at creation,
    as the fetch will judge it), else a 422 naming ``field`` and why."""
    try:
        egress.check_static(value, field)
    except EgressRefused as exc:
        raise fail(422, str(exc)) from None
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


# --- what the service's origin serves to browsers ----------------------------------------------

# Headers of every HTML page (the dashboard, /docs): never framed (a page where users paste tokens
# must not be overlaid by another site), never sniffed, no referrer leaving with a URL.
PAGE_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
PAGE_POLICY = "frame-ancestors 'none'"


class PageHeaders:
    """ASGI middleware: :data:`PAGE_HEADERS` on every ``text/html`` response, and a
    Content-Security-Policy with ``frame-ancestors 'none'`` where the page set none of its own."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def start(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                names = {name.lower() for name, _ in headers}
                kind = next((value for name, value in headers if name.lower() == b"content-type"), b"")
                if kind.startswith(b"text/html"):
                    headers += [(k.lower().encode(), v.encode()) for k, v in PAGE_HEADERS.items() if k.lower().encode() not in names]
                    if b"content-security-policy" not in names:
                        headers.append((b"content-security-policy", PAGE_POLICY.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, start)


# User content (uploads, files, outputs, a training's images) is served from the dashboard's
# origin: only these types are shown inline (a browser renders them, never runs them); anything
# else is an attachment of no type a browser renders, and every answer is sandboxed and unsniffed,
# so no tenant's file runs script where the dashboard keeps its token.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
USER_CONTENT_POLICY = "sandbox; default-src 'none'; img-src 'self'"


def user_content_headers(content_type: str | None, name: str) -> tuple[str, dict[str, str]]:
    """The media type and headers to serve a user's file ``name`` of ``content_type`` with."""
    kind = (content_type or "").split(";")[0].strip().lower()
    inline = kind in INLINE_TYPES
    safe = name if FILENAME.fullmatch(name or "") else "file"
    return (kind if inline else "application/octet-stream"), {
        "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{safe}"',
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": USER_CONTENT_POLICY,
    }
