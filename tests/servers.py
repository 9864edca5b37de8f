"""Real servers for tests: ``async with serve(app) as base_url: ...`` runs ``app`` under uvicorn on 127.0.0.1.

The server runs as a task in the test's own event loop (no thread), on a port the OS picks, and is shut down
when the block ends, in-flight requests included, so no socket or task outlives the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn


@asynccontextmanager
async def serve(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free port; yields the base URL (``"http://127.0.0.1:<port>"``).

    Extra keyword arguments go to ``uvicorn.Config`` (e.g. ``http="h11"``, ``lifespan="on"``)::

        async with serve(app) as base_url:
            async with httpx.AsyncClient(base_url=base_url) as client:
                response = await client.get("/")
    """
    # A handler still running at shutdown (its client gave up) gets timeout_graceful_shutdown seconds, then is
    # cancelled by uvicorn, so the server task always ends.
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "log_level": "warning",
        "ws": "none",
        "timeout_graceful_shutdown": 2,
    }
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                # uvicorn raises SystemExit when it cannot bind or the lifespan startup fails.
                try:
                    task.result()
                except BaseException as exc:
                    raise RuntimeError(f"uvicorn did not start: {exc!r}") from exc
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{options['host']}:{port}"
    finally:
        server.should_exit = True
        if not task.done():
            await task
