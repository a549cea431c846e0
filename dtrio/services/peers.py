"""Wake-ups between processes that share a PostgreSQL store, by LISTEN/NOTIFY.

Each engine tells the others what its commits made due (work of a kind now, the earliest later
due time, the instances whose status changed), and hears theirs: a lease loop in another process
starts work at once, and a wait for an instance on one process ends when another completes it.

Own commits reach this process's services directly (`Backend.listen`); here they are sent on,
coalesced, one NOTIFY at a time, from a connection of their own. Another connection LISTENs; it
is driven by `trio.lowlevel.wait_readable`, so no thread is parked waiting. Polling stays the
safety net: a notification can be missed (while a connection is down, or when a pooler in
transaction mode sits between), and the poller then finds the work within `max_poll_interval`.
After the listening connection comes back, everything is looked at again once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial

import psycopg
import psycopg.pq
import trio
from trio_util import AsyncBool

from ..backend import Backend, Committed
from ..backend.postgres_store import NoJump
from .lifecycle import backoff

log = logging.getLogger("dtrio.engine")

CHANNEL = "dtrio_wakeups"
# PostgreSQL refuses payloads of 8000 bytes or more; past this, the instance IDs are left out
# and every waiter looks again.
_MAX_PAYLOAD = 7900
_KINDS = ("orchestration", "activity", "entity")
_CONNECT = {"autocommit": True, "connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10,
            "keepalives_interval": 5, "keepalives_count": 3}

# Told what another process committed; None: it may have committed anything (notifications
# were missed), so everything is looked at again.
Heard = Callable[[Committed | None], None]


def encode(owner: str, notes: Committed) -> str | None:
    """The payload announcing `notes` from `owner`; None when they announce nothing."""
    kinds = "".join(kind[0] for kind in _KINDS if getattr(notes, kind))
    if not kinds and notes.next_due is None and not notes.instances:
        return None
    body: dict[str, object] = {"from": owner, "kinds": kinds, "due": notes.next_due,
                               "ids": sorted(notes.instances)}
    text = json.dumps(body, separators=(",", ":"))
    if len(text.encode()) > _MAX_PAYLOAD:
        body["ids"] = None
        text = json.dumps(body, separators=(",", ":"))
    return text


def decode(text: str) -> tuple[str, Committed, bool]:
    """(sender, what it committed, whether any instance may have changed) from a payload."""
    body = json.loads(text)
    kinds = body["kinds"]
    notes = Committed(orchestration="o" in kinds, activity="a" in kinds, entity="e" in kinds,
                      next_due=body["due"], instances=set(body["ids"] or ()))
    return body["from"], notes, body["ids"] is None


class _Outbox:
    """This process's commits not yet announced, merged into one."""

    def __init__(self) -> None:
        self.notes = Committed()
        self.pending = AsyncBool()

    def add(self, notes: Committed) -> None:
        self.notes.merge(notes)
        self.pending.value = True

    def take(self) -> Committed:
        notes, self.notes = self.notes, Committed()
        self.pending.value = False
        return notes


async def _in_thread(fn: Callable[[], object]) -> object:
    with NoJump():
        return await trio.to_thread.run_sync(fn)


async def _connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    conn = await _in_thread(partial(psycopg.connect, url, **_CONNECT))
    assert isinstance(conn, psycopg.Connection)
    return conn


async def _close(conn: psycopg.Connection[tuple[object, ...]] | None) -> None:
    if conn is not None:
        with trio.CancelScope(shield=True):
            await _in_thread(conn.close)


async def _send(url: str, owner: str, outbox: _Outbox) -> None:
    conn = None
    failures = 0
    try:
        while True:
            await outbox.pending.wait_value(True)
            notes = outbox.take()
            payload = encode(owner, notes)
            if payload is None:
                continue
            try:
                if conn is None:
                    conn = await _connect(url)
                await _in_thread(partial(conn.execute, "SELECT pg_notify(%s, %s)",
                                         (CHANNEL, payload)))
                failures = 0
            except psycopg.Error as exc:
                # Sent again once the connection is back; peers poll meanwhile. The store
                # reports the lost connection itself.
                outbox.add(notes)
                await _close(conn)
                conn = None
                failures += 1
                log.debug("could not announce commits to other processes: %s", exc)
                await trio.sleep(backoff(failures, first=0.2, cap=5.0))
    finally:
        await _close(conn)


async def _receive(conn: psycopg.Connection[tuple[object, ...]], owner: str,
                   heard: Heard) -> None:
    """Hand on what other processes announce, until the connection is lost."""
    pgconn = conn.pgconn
    fd = conn.fileno()
    while True:
        await trio.lowlevel.wait_readable(fd)
        pgconn.consume_input()  # raises OperationalError once the connection is gone
        while (notify := pgconn.notifies()) is not None:
            try:
                sender, notes, anything = decode(notify.extra.decode())
            except (ValueError, KeyError, TypeError) as exc:
                # Not one of ours (someone else's NOTIFY on the channel): nothing to wake for.
                log.debug("ignored a notification on %s: %r (%s)", CHANNEL, notify.extra, exc)
                continue
            if sender != owner:
                heard(None if anything else notes)
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("the connection was closed")


async def _listen(
    url: str, owner: str, heard: Heard, *, task_status: trio.TaskStatus[None]
) -> None:
    failures = 0
    started = False
    while True:
        conn = None
        try:
            conn = await _connect(url)
            await _in_thread(partial(conn.execute, f"LISTEN {CHANNEL}"))
            if started:
                log.debug("listening for other processes' commits again")
                heard(None)  # whatever was announced while away
            else:
                started = True
                task_status.started()
            failures = 0
            await _receive(conn, owner, heard)
        except psycopg.Error as exc:
            failures += 1
            log.debug("not listening for other processes' commits: %s", exc)
        finally:
            await _close(conn)
        if not started:
            # The store opened a moment ago; the poller covers until this connects.
            started = True
            task_status.started()
        await trio.sleep(backoff(failures, first=0.2, cap=5.0))


async def serve_peer_wakeups(
    backend: Backend, url: str, owner: str, heard: Heard, *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce the commits of `backend` (opened on `url`) under `owner`, and pass on to
    `heard` what the other processes on that database announce."""
    outbox = _Outbox()
    backend.listen(outbox.add)
    async with trio.open_nursery() as nursery:
        await nursery.start(_listen, url, owner, heard)
        nursery.start_soon(_send, url, owner, outbox)
        task_status.started()
