"""The dashboard as an ASGI app (Starlette, Jinja2 templates with autoescape): its routes, and the
guard every request passes (access token, session, security headers)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from urllib.parse import quote

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..client import Client
from . import actions, pages
from .security import SESSION, TOKEN, Access

HERE = Path(__file__).parent
# Nothing from elsewhere, no inline script or style: text that escaped escaping still cannot run.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined)
    # A path segment, every reserved character escaped ("/" too: IDs may hold one).
    env.filters["segment"] = lambda text: quote(str(text), safe="")
    return Jinja2Templates(env=env)


class _Guard(BaseHTTPMiddleware):
    """Admits a request with the access token (bearer header or login cookie), gives each
    browser a session for its CSRF tokens, and sets the security headers."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        access: Access = request.app.state.access
        path = request.url.path
        if not (path.startswith(("/static/", "/login")) or access.admits(_presented(request))):
            if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                response: Response = RedirectResponse("/login", status_code=303)
            else:
                response = PlainTextResponse("a dashboard token is required", status_code=401,
                                             headers={"WWW-Authenticate": "Bearer"})
        else:
            session = request.cookies.get(SESSION)
            new = session is None
            request.state.session = session or secrets.token_urlsafe(24)
            began = time.perf_counter()
            response = await call_next(request)
            # The page's own time (queries and rendering), for browsers' tools and benchmarks.
            response.headers["Server-Timing"] = (
                f"app;dur={(time.perf_counter() - began) * 1000:.1f}")
            if new:
                response.set_cookie(SESSION, request.state.session, httponly=True,
                                    samesite="strict")
        response.headers.update(_HEADERS)
        return response


def _presented(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return request.cookies.get(TOKEN)


def build_app(client: Client, access: Access) -> Starlette:
    app = Starlette(
        routes=[
            Route("/", pages.instances),
            Route("/entities", pages.entities),
            Route("/login", pages.login, methods=["GET", "POST"]),
            Route("/instances/{instance_id:path}/confirm/{action}", actions.confirm),
            Route("/instances/{instance_id:path}/actions/{action}", actions.act,
                  methods=["POST"]),
            Route("/instances/{instance_id:path}", pages.instance),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(_Guard)],
    )
    app.state.client = client
    app.state.access = access
    app.state.templates = _templates()
    return app
