"""Who holds work: the owner an engine leases under, whether the process behind another owner is
known to be gone, and the service that takes over the work of owners that are.

An owner is `host:pid:tag:start.space`. `tag` tells apart the engines of one process; `start`
is the process's start time (clock ticks since boot) and `space` names the PID namespace and the
boot it lives in, both read from /proc, so that a PID taken by another process since, or the
same PID in another container, is not mistaken for the owner. (Without /proc the owner is
`host:pid:tag`, and such an owner is never known to be gone.)

An owner is gone only when that is certain: it is on this host, in this PID space, and its PID
is free, or is another process (started at another time), or a zombie; or it is an engine of
this process that has stopped. Anything else (another host, another container, a store shared
with a platform without /proc) keeps its work until its lease lapses.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass

import trio

from ..backend import Backend, TakenOver
from ..errors import StorageError
from ..logs import work_item

log = logging.getLogger("dtrio.engine")

# How often an engine whose store other processes may share looks for work held by owners that
# are gone (a store only this process uses is looked at once, when the engine starts).
INTERVAL = 2.0

# The owners of the engines running in this process.
_running: set[str] = set()


@dataclass(frozen=True, slots=True)
class _Owner:
    host: str
    pid: int
    start: int | None  # None: not known (no /proc)
    space: str | None


def _stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and start time (clock ticks after boot), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # The command name, in parentheses, may hold anything: count fields after its end.
        fields = data[data.rindex(b")") + 2:].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _space() -> str | None:
    """This process's PID namespace and boot, as 8 hex digits; None without /proc."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return hashlib.blake2s(f"{boot} {namespace}".encode(), digest_size=4).hexdigest()


def new_owner() -> str:
    """A new owner for an engine of this process."""
    pid = os.getpid()
    owner = f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}"
    stat, space = _stat(pid), _space()
    if stat is None or space is None:
        return owner
    return f"{owner}:{stat[1]}.{space}"


def _parse(owner: str) -> _Owner | None:
    parts = owner.split(":")
    if len(parts) == 3:
        parts.append("")
    if len(parts) != 4 or not parts[1].isascii() or not parts[1].isdigit():
        return None
    host, pid, _, process = parts
    start, _, space = process.partition(".")
    if not (start.isascii() and start.isdigit() and len(space) == 8):
        return _Owner(host, int(pid), None, None)
    return _Owner(host, int(pid), int(start), space)


def is_gone(owner: str, own: str) -> bool:
    """Whether the process (or engine) behind `owner` is certainly gone, as seen by the engine
    that is `own`. False whenever that cannot be known."""
    them, us = _parse(owner), _parse(own)
    if (them is None or us is None or them.start is None or us.start is None
            or them.host != us.host or them.space != us.space):
        return False
    if them.pid == us.pid:
        # This process, or one that had its PID before it.
        return them.start != us.start or owner not in _running
    stat = _stat(them.pid)
    if stat is None:
        try:
            os.kill(them.pid, 0)  # /proc may hide other users' processes; signals do not
        except ProcessLookupError:
            return True
        except OSError:
            pass
        return False
    state, start = stat
    return start != them.start or state in ("Z", "X")


def started(owner: str) -> None:
    """`owner` is an engine running in this process (until `stopped`)."""
    _running.add(owner)


def stopped(owner: str) -> None:
    _running.discard(owner)


def describe(item: TakenOver) -> str:
    if item.kind == "activity":
        return f"activity {item.name!r} (#{item.task_id}) of {item.instance_id!r}"
    if item.kind == "entity":
        return f"entity {item.instance_id}"
    return f"orchestration {item.instance_id!r}"


async def take_over(backend: Backend, own: str) -> int:
    """End the leases of every owner that is gone, so that its work is leased again at once;
    returns how many work items that freed."""
    freed = 0
    for owner in sorted(await backend.lease_owners()):
        if owner == own or not is_gone(owner, own):
            continue
        for item in await backend.release_owner(owner):
            freed += 1
            extra = ({"task_id": item.task_id} if item.task_id is not None else {})
            log.info("%s taken over from %s, which is gone", describe(item), owner,
                     extra=work_item(item.kind, item.instance_id, **extra))
    return freed


async def serve_takeover(
    backend: Backend, own: str, interval: float | None, *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Take over the work of owners that are gone: now, then every `interval` seconds (None:
    only now). Work held by a process that died is run again within seconds, not when its
    leases lapse."""
    task_status.started()
    while True:
        try:
            await take_over(backend, own)
        except StorageError as exc:
            log.warning("could not look for work held by processes that are gone: %s", exc)
        if interval is None:
            return
        await trio.sleep(interval)
