"""What the routes depend on (FastAPI's ``Annotated`` dependencies, as its full-stack template
writes them): the running service, and who the request's API token acts for.

request → :func:`get_service` (the app's state) → :func:`token_owners` (``Authorization: Bearer``
→ the owners it may use; 401 without a known token) → the route.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from builder.service.http.common import fail
from builder.service.state import Service


def get_service(request: Request) -> Service:
    """The service this app runs (its state, set when the app is created)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def token_owners(request: Request, service: ServiceDep) -> list[str]:
    """The owners the request's token acts for (a token may use only its owners' resources)."""
    owners = service.token_owners(request.headers.get("authorization", ""))
    if owners is None:
        raise fail(401, "missing or unknown API token: send Authorization: Bearer <token>")
    return owners


Owners = Annotated[list[str], Depends(token_owners)]
