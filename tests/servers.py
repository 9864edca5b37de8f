"""Real servers for tests: ``async with serve(app) as base_url: ...`` runs ``app`` under uvicorn on 127.0.0.1
(``serve_hypercorn`` under hypercorn; ``SERVERS`` maps a name to each, for parametrizing).

The server runs as a task in the test's own event loop (no thread), on a port the OS picks, and is shut down
when the block ends, in-flight requests included, so no socket or task outlives the test.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig


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


@asynccontextmanager
async def serve_hypercorn(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve ``app`` with hypercorn (asyncio worker, HTTP/1.1 via h11) on a free port; yields the base URL.

    Same contract as :func:`serve`: the server runs as a task in the test's event loop and is always shut down
    (through its ``shutdown_trigger``) when the block ends. Extra keyword arguments set attributes of
    ``hypercorn.config.Config`` (e.g. ``graceful_timeout=1``).
    """
    # Bind the socket here so the port is known before hypercorn starts; hypercorn takes the descriptor over
    # (``fd://``) and closes it when it shuts down. It calls listen() itself, so until it does a connection is
    # refused: that is how readiness is detected below.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = HypercornConfig()
    settings.bind = [f"fd://{sock.detach()}"]
    settings.graceful_timeout = 2
    settings.accesslog = None
    settings.errorlog = logging.getLogger("hypercorn.error")  # a Logger is used as is: it propagates (caplog)
    for name, value in config.items():
        setattr(settings, name, value)
    stop = asyncio.Event()
    task = asyncio.create_task(hypercorn_serve(app, settings, shutdown_trigger=stop.wait))
    try:
        while True:
            if task.done():
                try:
                    task.result()
                except BaseException as exc:
                    raise RuntimeError(f"hypercorn did not start: {exc!r}") from exc
                raise RuntimeError("hypercorn stopped before it started")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.005)
                continue
            writer.close()
            await writer.wait_closed()
            break
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        if not task.done():
            await task


#: The ASGI servers the real-server tests run under, for ``@pytest.mark.parametrize("server", SERVERS)``.
SERVERS = {"uvicorn": serve, "hypercorn": serve_hypercorn}
