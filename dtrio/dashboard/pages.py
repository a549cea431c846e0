"""The dashboard's pages: instances (counts, filters, keyset pages), one instance (fields,
failure, payloads, history, timeline, parent and children), entities, and the login."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import _pb as pb
from .. import inspection, timeline
from ..errors import InvalidInput
from ..operations import ACTIONS
from . import gantt
from .security import TOKEN

PAGE = 50
PREVIEW = 2000  # characters of a payload shown before its expander
S = pb.OrchestrationStatus
STATUSES = [s.name for s in S]


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    access = request.app.state.access
    session = getattr(request.state, "session", "")
    return request.app.state.templates.TemplateResponse(
        request, template, {"read_only": access.read_only, "csrf": access.csrf_for(session),
                        "guarded": access.token is not None, **context},
        status_code=status_code)


def _filters(request: Request) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The query's filters: as the form shows them, as client arguments, and what was wrong."""
    params = request.query_params
    shown = {"status": [s for s in params.getlist("status") if s in STATUSES],
             "name": params.get("name", "").strip(), "prefix": params.get("prefix", "").strip(),
             "since": params.get("since", "").strip(), "until": params.get("until", "").strip()}
    errors = []
    query: dict[str, Any] = {"name": shown["name"] or None,
                             "instance_id_prefix": shown["prefix"] or None}
    for field, arg in (("since", "created_from"), ("until", "created_to")):
        try:
            query[arg] = inspection.moment(shown[field]) if shown[field] else None
        except InvalidInput as exc:
            errors.append(f"{field}: {exc}")
            query[arg] = None
    return shown, query, errors


async def instances(request: Request) -> Response:
    client = request.app.state.client
    shown, query, errors = _filters(request)
    counts = await client.count_orchestrations(**query)
    try:
        page = await client.query_orchestrations(
            **query, statuses=[S[s] for s in shown["status"]] or None, newest_first=True,
            page_size=PAGE, continuation_token=request.query_params.get("page") or None)
    except InvalidInput as exc:  # a page token not from this dashboard
        errors.append(str(exc))
        page = await client.query_orchestrations(newest_first=True, page_size=PAGE)

    def href(**changes: Any) -> str:
        """This list's URL with some parameters changed (a page is never kept)."""
        params = {**shown, **changes}
        return "/?" + urlencode([(k, v) for k, v in params.items() if v], doseq=True)

    return render(
        request, "instances.html", filters=shown, href=href, errors=errors,
        counts=[(s.name, counts.get(s, 0)) for s in S], total=sum(counts.values()),
        states=page.states, next_page=page.continuation_token,
        paged=bool(request.query_params.get("page")), statuses=STATUSES,
        purged=request.query_params.get("purged"))


def _history(rows: list[timeline.Row]) -> list[tuple[Any, ...]]:
    """The history table's cells, formatted here: a thousand rows through template calls and
    strftime would cost more than the rest of the page."""
    cells = []
    for r in rows:
        t = r.timestamp
        cells.append((
            r.index, f"{t.hour:02}:{t.minute:02}:{t.second:02}.{t.microsecond // 1000:03}",
            "+" + inspection.seconds(r.elapsed), r.kind, r.name, inspection.seconds(r.duration),
            r.data or ""))
    return cells


def _payload(data: str | None) -> dict[str, Any]:
    text = inspection.pretty(data)
    return {"text": text, "preview": text[:PREVIEW], "more": len(text) > PREVIEW,
            "size": len(text)}


async def instance(request: Request) -> Response:
    client = request.app.state.client
    instance_id = request.path_params["instance_id"]
    state = await client.get_orchestration_state(instance_id)
    if state is None:
        return render(request, "missing.html", status_code=404, what="instance",
                      instance_id=instance_id)
    events = await client.get_orchestration_history(instance_id)
    rows, spans = timeline.read(events)
    ended = state.completed_at if state.is_finished and state.completed_at else (
        datetime.now(UTC))
    begun = min((r.timestamp for r in rows), default=None)
    chart = gantt.chart(spans, begun, max([ended, *(r.timestamp for r in rows)]))
    children = await client.query_orchestrations(parent_instance_id=instance_id, page_size=100)
    failures = []
    failure = state.failure_details
    while failure is not None:
        failures.append(failure)
        failure = failure.inner
    done = request.query_params.get("done")
    template = "instance_main.html" if request.headers.get("x-dashboard-live") else (
        "instance.html")
    return render(
        request, template, state=state, rows=_history(rows), chart=chart, children=children.states,
        more_children=children.continuation_token is not None, failures=failures,
        input=_payload(state.serialized_input), output=_payload(state.serialized_output),
        custom_status=_payload(state.serialized_custom_status),
        actions=[a for a in ACTIONS if a.applies is None
                 or int(state.runtime_status) in a.applies],
        done=done if done in {a.name for a in ACTIONS} else None, live=not state.is_finished)


async def entities(request: Request) -> Response:
    client = request.app.state.client
    params = request.query_params
    name = params.get("name", "").strip()
    errors = []
    try:
        page = await client.query_entities(
            name=name or None, include_state=True, include_transient=True, page_size=PAGE,
            continuation_token=params.get("page") or None)
    except InvalidInput as exc:
        errors.append(str(exc))
        page = None
    return render(
        request, "entities.html", name=name, errors=errors,
        entities=[(e, _payload(e.serialized_state)) for e in page.entities] if page else [],
        next_page=page.continuation_token if page else None, paged=bool(params.get("page")))


async def login(request: Request) -> Response:
    access = request.app.state.access
    if access.token is None:
        return RedirectResponse("/", status_code=303)
    error = None
    if request.method == "POST":
        form = await request.form()
        token = str(form.get("token", "")).strip()
        if access.admits(token):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN, token, httponly=True, samesite="strict")
            return response
        error = "That token is not the dashboard's."
    return render(request, "login.html", status_code=401 if error else 200, error=error)
