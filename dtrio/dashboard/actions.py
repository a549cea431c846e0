"""The dashboard's actions on an instance: a confirmation page (GET), then the action as a POST
carrying the session's CSRF token. Refused when the dashboard is read-only."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from ..errors import DtrioError
from ..operations import BY_NAME, Action, attempt
from .pages import render
from .security import SESSION


def _refusal(request: Request) -> Response | None:
    if request.app.state.access.read_only:
        return PlainTextResponse("the dashboard is read-only", status_code=403)
    return None


async def confirm(request: Request) -> Response:
    refused = _refusal(request)
    if refused is not None:
        return refused
    action = BY_NAME.get(request.path_params["action"])
    state = await request.app.state.client.get_orchestration_state(
        request.path_params["instance_id"], fetch_payloads=False)
    if action is None or state is None:
        return render(request, "missing.html", status_code=404, what="action or instance",
                      instance_id=request.path_params["instance_id"])
    return render(request, "confirm.html", action=action, state=state, error=None, form={})


def _params(action: Action, form: Any) -> dict[str, Any]:
    """The action's parameters from its form; JSON fields are checked (InvalidJson)."""
    params: dict[str, Any] = {"recursive": form.get("recursive") == "on",
                              "new_id": form.get("new_id") == "on"}
    for field in ("reason", "event"):
        text = str(form.get(field, "")).strip()
        params[field] = text or None
    for field in ("output", "data"):
        text = str(form.get(field, "")).strip()
        if text:
            try:
                params[field] = json.loads(text)
            except ValueError as exc:
                raise _InvalidJson(f"{field} is not valid JSON: {exc}") from None
    if action.name == "raise-event" and not params["event"]:
        raise _InvalidJson("the event needs a name")
    return params


class _InvalidJson(ValueError):
    pass


async def act(request: Request) -> Response:
    refused = _refusal(request)
    if refused is not None:
        return refused
    access = request.app.state.access
    form = await request.form()
    if not access.csrf_ok(request.cookies.get(SESSION), str(form.get("csrf", ""))):
        return PlainTextResponse("the form is stale or not this dashboard's (CSRF check "
                                 "failed): reload the page and try again", status_code=403)
    client = request.app.state.client
    instance_id = request.path_params["instance_id"]
    action = BY_NAME.get(request.path_params["action"])
    state = await client.get_orchestration_state(instance_id, fetch_payloads=False)
    if action is None or state is None:
        return render(request, "missing.html", status_code=404, what="action or instance",
                      instance_id=instance_id)
    try:
        result = await attempt(client, action, state, _params(action, form))
    except (_InvalidJson, DtrioError) as exc:
        return render(request, "confirm.html", status_code=409, action=action, state=state,
                      error=str(exc), form=dict(form))
    if action.name == "purge":
        return RedirectResponse(f"/?purged={quote(instance_id, safe='')}", status_code=303)
    target = result.partition("restarted as ")[2] or instance_id  # a copy's page, if a copy
    return RedirectResponse(f"/instances/{quote(target, safe='')}?done={action.name}",
                            status_code=303)
