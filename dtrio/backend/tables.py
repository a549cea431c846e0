"""What every SQL store's tables share, whatever its dialect: the columns an instance record is
read from, the instance queries and their continuation tokens, and where each kind of work item
keeps its lease."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from .base import InstancePage, InstanceQuery, InstanceRecord

# Per leased table: the key column, the expiry column, and the kind of work item it holds.
# Orchestrations and entities keep their lease in the same three columns, keyed by instance
# ID; activities keep theirs keyed by row id, with `available_at` as the expiry.
LEASE_COLUMNS = {
    "instances": ("instance_id", "lock_expires", "orchestration"),
    "entities": ("instance_id", "lock_expires", "entity"),
    "activities": ("id", "available_at", "activity"),
}

_BASE_COLUMNS = (
    "instance_id, execution_id, name, version, status, created_at, updated_at, completed_at, "
    "scheduled_start, parent_instance_id, custom_status, failure, tags"
)


def record_columns(payloads: bool) -> str:
    """Columns for `record`: inputs and outputs only when asked for (they can be large)."""
    return _BASE_COLUMNS + (", input, output" if payloads else "")


def record(row: Any, payloads: bool) -> InstanceRecord:
    rec = InstanceRecord(*row[:10])
    rec.custom_status, rec.failure = row[10], row[11]
    rec.tags = json.loads(row[12]) if row[12] else None
    if payloads:
        rec.input, rec.output = row[13], row[14]
    return rec


def parse_token(token: str) -> tuple[int, str]:
    """A continuation token of a paged instance query: "<time>:<instance ID>"."""
    created, sep, key = token.partition(":")
    if not sep or not created.isdigit():
        raise InvalidInput(f"continuation token {token!r} is not one this engine issued")
    return int(created), key


@dataclass(frozen=True, slots=True)
class Dialect:
    param: str  # a query parameter's placeholder
    starts_with: str  # true when instance_id starts with a value; parameters: length, value


SQLITE = Dialect("?", "substr(instance_id, 1, ?) = ?")
POSTGRES = Dialect("%s", "left(instance_id, %s) = %s")


def _filters(query: InstanceQuery, d: Dialect) -> tuple[str, list[Any]]:
    """`query`'s conditions but its statuses and page, each as " AND ...", and their
    parameters."""
    where, args = "", []
    for column, op, value in (
        ("created_at", ">=", query.created_from), ("created_at", "<", query.created_to),
        ("name", "=", query.name), ("parent_instance_id", "=", query.parent_instance_id),
    ):
        if value is not None:
            where += f" AND {column} {op} {d.param}"
            args.append(value)
    if query.instance_id_prefix:
        where += f" AND {d.starts_with}"
        args += [len(query.instance_id_prefix), query.instance_id_prefix]
    return where, args


def page_sql(query: InstanceQuery, d: Dialect) -> tuple[str, list[Any]]:
    """The SELECT of one page of `query` (a row more than the page, to tell if more follow):
    keyset paging on (created_at, instance_id), so pages stay stable under inserts."""
    if query.page_size < 1:
        raise InvalidInput("page_size must be at least 1")
    where, args = _filters(query, d)
    if query.statuses:
        where += f" AND status IN ({','.join(str(int(s)) for s in sorted(query.statuses))})"
    if query.continuation_token:
        created, key = parse_token(query.continuation_token)
        after = "<" if query.newest_first else ">"
        where += f" AND (created_at, instance_id) {after} ({d.param}, {d.param})"
        args += [created, key]
    order = " DESC" if query.newest_first else ""
    sql = (f"SELECT {record_columns(query.fetch_payloads)} FROM instances WHERE 1 = 1{where} "
           f"ORDER BY created_at{order}, instance_id{order} LIMIT {d.param}")
    return sql, [*args, query.page_size + 1]


def page_of(rows: list[Any], query: InstanceQuery) -> InstancePage:
    """The page read by `page_sql`."""
    more = len(rows) > query.page_size
    records = [record(r, query.fetch_payloads) for r in rows[: query.page_size]]
    token = f"{records[-1].created_at}:{records[-1].instance_id}" if more else None
    return InstancePage(records, token)


def count_sql(query: InstanceQuery, d: Dialect) -> tuple[str, list[Any]]:
    """SELECT (status, count) of the instances `query`'s filters match."""
    where, args = _filters(query, d)
    return f"SELECT status, count(*) FROM instances WHERE 1 = 1{where} GROUP BY status", args
