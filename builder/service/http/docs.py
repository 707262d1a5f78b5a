"""Swagger UI at ``/docs`` that works offline.

request → ``/docs`` (FastAPI's Swagger page) → its script and style from ``/docs/assets`` → the
files the ``swagger-ui-py`` package ships (Swagger UI 5, which reads FastAPI's OpenAPI 3.1).
FastAPI's own page loads them from a CDN, so on a machine without the internet it was blank.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"


def swagger_assets() -> str:
    """The directory of Swagger UI's built files in the swagger-ui-py package."""
    return str(files("swagger_ui") / "static")


def mount_docs(app: FastAPI) -> None:
    """``/docs`` and its assets on ``app`` (created with ``docs_url=None``)."""
    app.mount(ASSETS, StaticFiles(directory=swagger_assets()), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} — API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )
