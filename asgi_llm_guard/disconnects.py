"""Watching guarded requests for a client that leaves, at the cost of a dict insert for most of them."""

from __future__ import annotations

import asyncio
from typing import Protocol

#: Seconds a guarded request runs before a task starts watching for its client's disconnect.
_WATCH_AFTER = 0.02


class Watched(Protocol):
    """A guarded request (``middleware.GuardedCall``) that can start watching its client."""

    def start_watch(self) -> None: ...


class DisconnectWatch:
    """Starts a disconnect watcher for each guarded request still running ``_WATCH_AFTER`` seconds after its
    body was read (docs/reference.md#disconnects: a client that leaves cancels the app and any running hook).

    Watching costs a task per request, and most guarded requests are over long before a client could leave,
    so requests only register here (a dict insert) and one timer per middleware, armed while any is pending,
    starts watchers for those that outlive the delay. A timer is not a task: no task outlives its request.
    """

    __slots__ = ("_due", "_timer", "_loop")

    def __init__(self) -> None:
        self._due: dict[Watched, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, call: Watched) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a middleware can outlive an event loop (tests, reloads)
            self._due, self._timer, self._loop = {}, None, loop
        self._due[call] = loop.time() + _WATCH_AFTER
        if self._timer is None:
            self._timer = loop.call_later(_WATCH_AFTER, self._fire)

    def discard(self, call: Watched) -> None:
        self._due.pop(call, None)

    def _fire(self) -> None:
        loop = self._loop
        if loop is None or asyncio.get_running_loop() is not loop:
            return  # armed on an event loop this middleware has since left
        self._timer = None
        now = loop.time()
        due = self._due
        while due:  # insertion order is deadline order: every request waits the same delay
            call, when = next(iter(due.items()))
            if when > now:
                self._timer = loop.call_at(when, self._fire)
                return
            del due[call]
            call.start_watch()
