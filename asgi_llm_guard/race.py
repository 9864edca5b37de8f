"""The moderation race: moderation hooks and the app run at once, and the app's response is held until moderation
passes (docs/reference.md#moderation-race). A rejection answers the client at once; what it cancelled (the app, the
other moderation hooks) is awaited only afterwards and for a bounded time, so a task slow to stop never delays the
answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ._types import ASGIApp, Scope
from .bodies import ReplayedReceive
from .call import CallState
from .hooks import HOOK_ERRORS
from .observe import Observer
from .pipeline import ResponsePipeline

logger = logging.getLogger("asgi_llm_guard")


async def race(
    call: CallState,
    pipeline: ResponsePipeline,
    app: ASGIApp,
    scope: Scope,
    receive: ReplayedReceive,
    observer: Observer | None,
) -> None:
    """Moderation and the app at once; the app's response is held until moderation passes
    (docs/reference.md#moderation-race)."""
    pipeline.hold()
    app_task = asyncio.ensure_future(app(scope, receive, pipeline.send))
    try:
        await call.moderate()
    except BaseException:
        pipeline.drop()
        app_task.cancel()
        # Not awaited here: the client's answer must not wait for an app that is slow to stop (or swallows
        # its cancellation). The request awaits it (await_stopped) after answering, bounded by _APP_STOP_GRACE.
        call.stopping = [*(call.stopping or ()), app_task]
        raise
    if observer is not None:
        observer.moderation_held(pipeline.held_for())
    try:
        await pipeline.release()
    except BaseException:
        app_task.cancel()
        call.stopping = [*(call.stopping or ()), app_task]
        if pipeline.done:
            return
        raise
    try:
        await app_task  # a cancelled request cancels app_task with it
    except HOOK_ERRORS as exc:
        if isinstance(exc, asyncio.CancelledError) and call.cancelled():
            raise
        await pipeline.finish_after_app(exc)
    else:
        await pipeline.finish_after_app(None)


#: Seconds a request waits, after answering, for the tasks it cancelled (the app and moderation hooks after a
#: moderation rejection) to stop.
_APP_STOP_GRACE = 5.0


async def await_stopped(tasks: list[asyncio.Future[Any]]) -> None:
    """Wait (bounded) for cancelled tasks to end, once the client has its answer. One that swallows its
    cancellation and runs on past ``_APP_STOP_GRACE`` is cancelled once more and left to end on its own, logged:
    awaiting it longer would hold the request (and, for a server, the connection) for as long as it runs."""
    for task in tasks:
        task.add_done_callback(_retrieve)  # what they raise after a rejection is of no interest to anyone
    await asyncio.wait(tasks, timeout=_APP_STOP_GRACE)
    for task in tasks:
        if not task.done():
            logger.error(
                "a task the request cancelled (the downstream app or a moderation hook) ignored its cancellation "
                "for %gs; it was cancelled again and is left to end on its own",
                _APP_STOP_GRACE,
            )
            task.cancel()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
