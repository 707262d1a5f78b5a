"""``/`` (the dashboard's page) and ``/ui/*`` (its script and style), served from ``static/``."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# The page runs only its own script and talks only to this service: what a stolen page could do
# with the token in its session is limited to this origin.
POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def mount_dashboard(app: FastAPI) -> None:
    """The dashboard on ``app``: its page at ``/`` and its files under ``/ui``."""
    app.mount("/ui", StaticFiles(directory=STATIC), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(
            STATIC / "index.html", headers={"Cache-Control": "no-cache", "Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff"}
        )
