"""Work-item filters: which orchestrations, activities and entities a connected worker takes."""

from __future__ import annotations

from collections.abc import Iterable

from .. import _pb as pb
from ..backend import NameFilter


def work_item_filters(
    request: pb.GetWorkItemsRequest,
) -> dict[str, NameFilter | frozenset[str] | None]:
    """Per kind of work, the names (with versions) a worker takes; None where it sent no
    filters, so takes everything. A worker that filters but lists no names of a kind takes
    none of that kind, as the SDKs' own reference backend has it."""
    filters = request.work_item_filters
    if filters is None:
        return {"orchestration": None, "activity": None, "entity": None}
    return {
        "orchestration": _names((f.name, f.versions) for f in filters.orchestrations),
        "activity": _names((f.name, f.versions) for f in filters.activities),
        # Entity names are case-insensitive; the store keeps them lowercase.
        "entity": frozenset(f.name.lower() for f in filters.entities),
    }


def _names(entries: Iterable[tuple[str, list[str]]]) -> NameFilter:
    versions: dict[str, frozenset[str] | None] = {}
    for name, listed in entries:
        # An entry without versions takes any version of its name, whatever other entries say.
        known = versions.get(name, frozenset())
        versions[name] = None if known is None or not listed else known | frozenset(listed)
    return frozenset((name, v or frozenset()) for name, v in versions.items())
